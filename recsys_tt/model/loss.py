"""In-batch sampled softmax (InfoNCE) for two towers.

Convention: ``logits[i, j] = <user_i, item_j> / temperature - log q_j``. The temperature *divides* the
cosine similarities (smaller = sharper); ``q_j`` is the probability that item j is among the batch's
columns, so subtracting its log removes the popularity bias of in-batch negatives (Yi et al., 2019,
"logQ correction"). A column that
holds the same item as a row's positive but is not that row's positive column is an accidental hit and is
masked out, so an item is never its own negative (this happens when an item is the target of several rows
and columns are not de-duplicated, e.g. after gathering items across DDP ranks).

Rows may carry weights: clicks from a serving log are weighted towards what the model's own policy would have
shown (``click_weights``), so that training on logs does not learn the logging policy's choices back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from recsys_tt.model.metrics import discount


def sampled_softmax_loss(user: torch.Tensor, item: torch.Tensor, positive: torch.Tensor, temperature: torch.Tensor,
                         logq: torch.Tensor | None = None, item_ids: torch.Tensor | None = None,
                         weight: torch.Tensor | None = None, excluded: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of each row against its positive column (weighted mean with ``weight``).

    Args:
        user: (B, D) user vectors.
        item: (M, D) candidate item vectors.
        positive: (B,) column of each row's positive item; rows with -1 are ignored (padding positions, kept so that
            no step has to wait for the device to count the real ones).
        temperature: scalar that divides the similarities.
        logq: (M,) log sampling probability of each column's item; subtracted from every logit.
        item_ids: (M,) item identity of each column, for accidental-hit masking; -1 marks padding columns.
        weight: (B,) non-negative row weights.
        excluded: (M,) bool, columns never scored (items held out of training), or (B, M) per row.
    """
    logits = user.float() @ item.float().T / temperature  # (B, M)
    if excluded is not None:
        logits = logits.masked_fill(excluded if excluded.dim() == 2 else excluded.unsqueeze(0), float("-inf"))
    if logq is not None:
        logits = logits - logq.unsqueeze(0)
    if item_ids is not None:
        rows, column = torch.arange(len(positive), device=logits.device), positive.clamp(min=0)
        same_item = item_ids.unsqueeze(0) == item_ids[column].unsqueeze(1)  # (B, M)
        same_item[rows, column] = False
        logits = logits.masked_fill(same_item | (item_ids < 0).unsqueeze(0), float("-inf"))
    if weight is None:
        return F.cross_entropy(logits, positive, ignore_index=-1)
    weight = weight * (positive >= 0)
    losses = F.cross_entropy(logits, positive, ignore_index=-1, reduction="none")
    return (losses * weight).sum() / weight.sum().clamp(min=1e-12)


def click_weights(target: torch.Tensor, target_above: torch.Tensor, logging: torch.Tensor, slate_size: torch.Tensor,
                  config: LossConfig) -> torch.Tensor:
    """(E,) weights of a log's clicks for the off-policy corrected objective (``config.log_correction``).

    ``target`` is the target policy's probability of the clicked item in one draw (pi), ``target_above`` its
    probability of the items shown above it (the earlier picks of the slate), ``logging`` the logging policy's
    probability of the pick that showed the item given those earlier picks (beta), ``slate_size`` K. The ratio
    compares like with like: pi / (1 - target_above), the target's probability of the same pick after the same
    earlier picks, over beta; it is 1 where the target picks as the logger did, and capped at
    ``config.log_weight_cap``, which bounds the variance a few rare picks can add. "ips" weighs that ratio; "topk"
    multiplies it by K (1 - pi)^(K - 1), the gradient of pi's chance to be among K draws (Chen et al. 2019,
    "Top-K Off-Policy Correction for a REINFORCE Recommender System"); "none" weighs every click 1. Weights are
    then scaled to a mean of 1 over the clicks given (the scale would only act as a learning rate).
    """
    if config.log_correction == "none":
        return torch.ones_like(target)
    pick = target.double() / (1 - target_above.double()).clamp(min=1e-12)
    weight = (pick / logging.double().clamp(min=1e-12)).clamp(max=config.log_weight_cap)
    if config.log_correction == "topk":
        weight = weight * slate_size * (1 - target.double()) ** (slate_size - 1)
    return (weight / weight.mean().clamp(min=1e-300)).float()


def dcg_examination(k: int) -> torch.Tensor:
    """(k,) probability that a user looks at each position under the position-based click model of DCG."""
    return discount(torch.arange(k, dtype=torch.float64))


def position_based_loss(logits: torch.Tensor, clicked: torch.Tensor, shown: torch.Tensor,
                        examination: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of logged slates under the position-based click model.

    A shown item at position j is clicked with probability e_j * sigmoid(logit): the user looked (e_j, the
    examination curve) and liked it. A skipped item at the top is strong evidence against it; one at the bottom
    was likely never seen and says little, which is what debiases training on impressions by position.
    logits, clicked, shown: (B, k), shown marking real positions (slates may be short); examination (k,).
    """
    logits = logits.float()
    examination = examination.to(logits).clamp(1e-6, 1.0)
    log_click = torch.log(examination) + F.logsigmoid(logits)
    log_skip = torch.log1p(-torch.exp(log_click).clamp(max=1 - 1e-6))
    nll = -torch.where(clicked, log_click, log_skip)
    return (nll * shown).sum() / shown.sum().clamp(min=1)


def fit_relevance_link(scores: torch.Tensor, clicked: torch.Tensor, shown: torch.Tensor,
                       examination: torch.Tensor, iterations: int = 100) -> tuple[float, float]:
    """(scale a, bias b) of the link sigmoid(a * score + b) that makes the position-based model fit logged slates
    best for these scores (maximum likelihood, L-BFGS on two numbers): where a fine-tuning on impressions starts.
    A softmax's scores are not probabilities; without the fit, skipped top items would be read as near-certain
    likes that were turned down, and pushed far down. scores, clicked, shown: (B, k); examination (k,)."""
    scores = scores.detach().double()
    link = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([link], max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = position_based_loss(scores * link[0] + link[1], clicked, shown, examination)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(link[0].detach()), float(link[1].detach())


def effective_sample_share(weight: torch.Tensor) -> torch.Tensor:
    """(sum w)^2 / (n sum w^2): the share of a weighted batch that an unweighted batch of equal variance would hold."""
    return weight.sum() ** 2 / (len(weight) * (weight**2).sum()).clamp(min=1e-12)


def gather_items(item: torch.Tensor, positive: torch.Tensor, items: torch.Tensor):
    """All-gathers item columns across DDP ranks (with gradients) and shifts positives to global columns.

    Ranks may hold different numbers of columns: each pads to the largest with id -1 (masked in the loss); then
    columns are de-duplicated.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return item, positive, items
    from torch.distributed.nn.functional import all_gather

    world = dist.get_world_size()
    counts = [torch.zeros(1, dtype=torch.long, device=item.device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([item.shape[0]], device=item.device))
    pad = int(torch.cat(counts).max()) - item.shape[0]
    item = F.pad(item, (0, 0, 0, pad))
    items = F.pad(items, (0, pad), value=-1)
    parts = [torch.empty_like(items) for _ in range(world)]
    dist.all_gather(parts, items)
    shifted = torch.where(positive >= 0, positive + dist.get_rank() * item.shape[0], positive)
    return deduplicate_columns(torch.cat(all_gather(item), dim=0), shifted, torch.cat(parts))


def deduplicate_columns(item: torch.Tensor, positive: torch.Tensor, items: torch.Tensor):
    """Keeps one column per item id (ascending ids, as one process's batch has them) and remaps the positives.

    Ranks encode the items of their own rows, so an item in two ranks' rows arrives twice; one column each keeps
    the softmax (and its logQ, the probability of being among de-duplicated columns) that of one big batch.
    """
    ids, inverse = torch.unique(items, return_inverse=True)
    first = torch.full((len(ids),), len(items), device=items.device).scatter_reduce(
        0, inverse, torch.arange(len(items), device=items.device), reduce="amin")
    return item[first], torch.where(positive >= 0, inverse[positive.clamp(min=0)], positive), ids


@dataclass
class LossConfig:
    """In-batch softmax settings."""

    temperature: float = 0.05
    """Initial temperature (it divides cosine similarities)."""
    learn_temperature: bool = True
    """Train the temperature (as its log) with the rest of the model; off keeps it fixed."""
    min_temperature: float = 0.01
    """Lower clamp of the learned temperature."""
    max_temperature: float = 1.0
    """Upper clamp of the learned temperature."""
    logq_correction: bool = True
    """Subtract log item frequency (from training data) from every logit."""
    negatives: Literal["batch", "catalog"] = "batch"
    """The softmax's columns: the batch's de-duplicated items (sampled softmax with logQ), or every catalog item (full
    softmax: no sampling bias, so logQ and cross-batch memory do not apply). "catalog" suits catalogs of up to tens
    of thousands of items: the rows' text vectors come from the catalog cache but for ``model.fresh_items``."""
    log_correction: Literal["topk", "ips", "none"] = "topk"
    """How clicks from a serving log (``data.logs``) are weighted against the logging policy's choices: the top-K
    off-policy correction, plain importance weights, or not at all (which learns the logging policy back)."""
    log_weight_cap: float = 10.0
    """Largest ratio pi / beta of one logged click (1: the target picks as the logger did), before the top-K factor."""
    log_target_temperature: float = 0.05
    """The target policy of the correction: the model's softmax over the catalog at this temperature, i.e. how the
    retrained model will serve. Set it to the serving exploration temperature (serving.exploration.temperature).
    The target is the model as the fine-tuning starts, held for the whole run (``TwoTowerModule``)."""
    log_impressions: float = 1.0
    """With ``data.logs``: the weight of the logged slates' position-based likelihood (``position_based_loss``), in
    which every shown item is evidence, clicked or skipped, discounted by the examination of its position; 0 trains
    on the clicks alone."""
    examination: list[float] | None = None
    """P(a user looks at position j), j = 1..k, of the logged slates; None: 1 / log2(j + 1), the DCG discount."""
    text_only: float = 0.0
    """The weight of a second softmax, over the same rows and columns, in which every item is its text vector alone (no
    id vector). Items without an id vector (cold or added after training) are ranked by their text; this trains
    users and the item tower to rank by text too, instead of leaving text vectors to be whatever complements the ids.
    0 turns it off; it does nothing without ``tower.item_id_embeddings``."""
    memory_size: int = 0
    """Cross-batch memory: the item vectors of recent batches (detached) join the negatives, up to this many
    columns, each with the logQ of the batch it came from; 0 turns it off. The memory is not checkpointed: a
    resumed run starts with an empty one."""

    def __post_init__(self) -> None:
        if not 0 < self.min_temperature <= self.temperature <= self.max_temperature:
            raise ValueError("Need 0 < min_temperature <= temperature <= max_temperature; got "
                             f"{self.min_temperature}, {self.temperature}, {self.max_temperature}.")
        if not self.log_target_temperature > 0:
            raise ValueError("log_target_temperature must be positive (the serving temperature of the retrained model; "
                             f"a greedy target has no probabilities to weigh by), got {self.log_target_temperature}.")
        if self.log_weight_cap <= 0:
            raise ValueError(f"log_weight_cap must be positive, got {self.log_weight_cap}.")
        if self.memory_size < 0:
            raise ValueError(f"memory_size must be >= 0, got {self.memory_size}.")
        if not 0 <= self.log_impressions < math.inf:
            raise ValueError(f"log_impressions must be >= 0 (0: clicks only), got {self.log_impressions}.")
        if self.examination is not None and not all(0 < e <= 1 for e in self.examination):
            raise ValueError(f"examination holds probabilities in (0, 1], one per position; got {self.examination}.")
        if not 0 <= self.text_only < math.inf:
            raise ValueError(f"text_only is the weight of the text-only softmax, >= 0 (0: off); got {self.text_only}.")
        if self.text_only and self.memory_size:
            raise ValueError("text_only does not combine with memory_size: the memory holds text + id vectors.")
        if self.negatives == "catalog" and self.memory_size:
            raise ValueError("negatives: catalog already scores every item; set memory_size: 0.")


class InBatchSoftmax(nn.Module):
    """Holds the (learnable, clamped) temperature and the items' log-frequencies; gathers across ranks."""

    def __init__(self, config: LossConfig, num_items: int) -> None:
        super().__init__()
        self.config = config
        log_t = torch.tensor([math.log(config.temperature)])  # (1,): FSDP shards no 0-dim parameter
        self.log_temperature = nn.Parameter(log_t, requires_grad=config.learn_temperature)
        self.register_buffer("item_probs", torch.full((num_items,), 1.0 / num_items), persistent=False)
        # sigmoid(scale * score + bias) is the probability that a user likes an item they looked at: fitted to the
        # starting model's scores when a fine-tuning on impressions starts and held for the run (a parameter would go
        # unused in every other run, which DDP refuses)
        self.register_buffer("relevance_link", torch.tensor([1.0, 0.0]))
        self.memory: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # (vectors, ids, logq), newest first

    def set_item_counts(self, counts: torch.Tensor) -> None:
        """Sets item probabilities from training counts (N,); add-one smoothing keeps unseen items possible."""
        probs = (counts.double() + 1.0) / (counts.sum() + len(counts))
        self.item_probs.copy_(probs.float())

    def column_logq(self, items: torch.Tensor, draws: int | torch.Tensor) -> torch.Tensor:
        """log P(item is among the batch's columns) when ``draws`` targets are drawn and columns de-duplicated.

        That is log(1 - (1 - q)^draws): about log(draws * q) for rare items, and 0 for items so frequent that
        they are in every batch (they need no correction; log(draws * q) would over-correct them).
        """
        q = self.item_probs[items.clamp(min=0)].double()
        return torch.log(-torch.expm1(draws * torch.log1p(-q))).float()

    @property
    def temperature(self) -> torch.Tensor:
        bounds = (math.log(self.config.min_temperature), math.log(self.config.max_temperature))
        return self.log_temperature.clamp(*bounds).exp().squeeze(0)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        key = prefix + "log_temperature"
        if key in state_dict and state_dict[key].dim() == 0:  # checkpoints from before it was (1,)
            state_dict[key] = state_dict[key].reshape(1)
        if key in state_dict:  # checkpoints from before impressions were trained on hold the unfitted link
            state_dict.setdefault(prefix + "relevance_link", torch.tensor([1.0, 0.0]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, user: torch.Tensor, item: torch.Tensor, positive: torch.Tensor, items: torch.Tensor,
                weight: torch.Tensor | None = None, held_out: torch.Tensor | None = None) -> torch.Tensor:
        """user (B, D), item (M, D), positive (B,) columns (-1: ignored row), items (M,) item indices of the columns,
        weight (B,); with catalog negatives, held_out (M,) bool marks the items no step may score (cold items; batch
        negatives never meet them, as no batch holds them)."""
        if self.config.negatives == "catalog":  # every rank holds every item: nothing to gather, no sampling bias
            return sampled_softmax_loss(user, item, positive, self.temperature, weight=weight, excluded=held_out)
        rows = (positive >= 0).sum()  # a tensor: counting on the host would wait for the device
        item, positive, items = gather_items(item, positive, items)
        draws = rows * (dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1)
        logq = self.column_logq(items, draws) if self.config.logq_correction else torch.zeros(len(items),
                                                                                                device=item.device)
        columns, ids, column_logq = item, items, logq
        if self.memory is not None and self.training:
            columns = torch.cat([item, self.memory[0].to(item.dtype)])
            ids, column_logq = torch.cat([items, self.memory[1]]), torch.cat([logq, self.memory[2]])
        loss = sampled_softmax_loss(user, columns, positive, self.temperature, logq=column_logq, item_ids=ids,
                                    weight=weight)
        if self.config.memory_size and self.training:
            self._remember(item.detach(), items, logq)
        return loss

    def examination(self, k: int) -> torch.Tensor:
        """(k,) the examination curve of the logged slates (``LossConfig.examination``)."""
        given = self.config.examination
        if given is None:
            return dcg_examination(k)
        if len(given) < k:
            raise ValueError(f"loss.examination has {len(given)} positions but the logged slates have {k}.")
        return torch.tensor(given[:k], dtype=torch.float64)

    def calibrate(self, scores: torch.Tensor, clicked: torch.Tensor, shown: torch.Tensor) -> None:
        """Fits the relevance link to slates (B, k) as the model scores them now (``fit_relevance_link``)."""
        link = fit_relevance_link(scores, clicked, shown, self.examination(scores.shape[1]).to(scores.device))
        with torch.no_grad():
            self.relevance_link.copy_(torch.tensor(link))

    def impression_loss(self, scores: torch.Tensor, clicked: torch.Tensor, shown: torch.Tensor) -> torch.Tensor:
        """``position_based_loss`` of logged slates from their cosine scores (B, k) through the relevance link."""
        logits = scores * self.relevance_link[0] + self.relevance_link[1]
        return position_based_loss(logits, clicked, shown, self.examination(scores.shape[1]).to(scores.device))

    def _remember(self, item: torch.Tensor, items: torch.Tensor, logq: torch.Tensor) -> None:
        """Puts this batch's columns (padding dropped) in front of the memory and keeps the newest memory_size."""
        keep = items >= 0
        entries = (item[keep], items[keep], logq[keep])
        if self.memory is not None:
            entries = tuple(torch.cat([new, old]) for new, old in zip(entries, self.memory))
        self.memory = tuple(t[: self.config.memory_size] for t in entries)
