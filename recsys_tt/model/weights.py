"""A TwoTower's trained weights on disk in the formats the ecosystem reads, and nothing pickled.

Each tower's LoRA adapter is a peft adapter folder (``adapters/<item|user|shared>/adapter_config.json`` and
``adapter_model.safetensors``, loadable with ``PeftModel.from_pretrained(base, folder)``); everything else that
trained (projection heads, item-id vectors and which items have one, the history input layer, the softmax
temperature) is ``towers.safetensors``, keyed as in the training module's state dict (``model.*``, ``loss.*``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from recsys_tt.model.towers import TwoTower

ADAPTERS = "adapters"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
TOWERS = "towers.safetensors"


def weight_files(adapters: list[str]) -> list[str]:
    """Paths, relative to the folder, of everything ``save_towers`` writes for these adapter names."""
    return [TOWERS] + [f"{ADAPTERS}/{name}/{file}" for name in adapters for file in ADAPTER_FILES]


_ADAPTERS_README = """# LoRA adapters of a recsys_tt two-tower model

One peft adapter per tower ({adapters}) over the frozen backbone `{backbone}`. Load one onto the base model:

```python
from peft import PeftModel
from transformers import AutoModel
tower = PeftModel.from_pretrained(AutoModel.from_pretrained("{backbone}"), "adapters/item")
```

(offline, pass a local copy of the backbone instead of its name). The towers pool the last hidden states (see
the folder's model card, `../README.md`) and never use a BERT pooler, so peft may report the pooler's adapter
keys as missing: that part of the base is unused. The rest of what trained (heads, item id vectors, temperature)
is `../towers.safetensors`.
"""


def save_towers(model: TwoTower, folder: Path, extra: dict[str, torch.Tensor]) -> list[str]:
    """Writes the adapters and ``towers.safetensors`` (with ``extra``, e.g. the loss's temperature) into
    ``folder``; returns the files written."""
    model.encoder.save_pretrained(str(folder / ADAPTERS), selected_adapters=model.adapters, safe_serialization=True)
    for name in model.adapters:  # peft records the resolved local path (this machine's); keep the portable name
        config = folder / ADAPTERS / name / "adapter_config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()),
                                      "base_model_name_or_path": model.config.backbone}, indent=2))
    (folder / ADAPTERS / "README.md").write_text(_ADAPTERS_README.format(
        backbone=model.config.backbone, adapters=", ".join(f"`{name}/`" for name in model.adapters)))
    rest = {f"model.{k}": v for k, v in model.state_dict().items() if not is_base_weight(k) and "lora_" not in k}
    save_file({k: v.detach().cpu().contiguous() for k, v in {**rest, **extra}.items()}, str(folder / TOWERS))
    return weight_files(model.adapters)


def load_towers(model: TwoTower, folder: Path) -> None:
    """Loads what ``save_towers`` wrote onto a TwoTower built from the same config (its base from the backbone);
    refuses weights that do not fit it."""
    for name in model.adapters:
        path = folder / ADAPTERS / name / "adapter_model.safetensors"
        try:
            result = set_peft_model_state_dict(model.encoder, load_file(str(path)), adapter_name=name)
        except RuntimeError as err:  # torch's size mismatch: the recorded config (lora_r, ...) is not the weights'
            reason = str(err).splitlines()[-1].strip()
            raise ValueError(f"{path} does not fit the {name} adapter its config describes (meta.json or the "
                             f"checkpoint's hyper-parameters were changed?): {reason}") from None
        missing = [k for k in result.missing_keys if "lora_" in k and f".{name}." in k]
        if result.unexpected_keys or missing:
            raise ValueError(f"{path} does not fit the {name} adapter of backbone {model.config.backbone!r}: "
                             f"missing {missing[:3]}, unexpected {list(result.unexpected_keys)[:3]}.")
    adapters = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    load_trainable(model, {**sub_state(load_file(str(folder / TOWERS)), "model."), **adapters}, folder / TOWERS)


def is_base_weight(key: str) -> bool:
    """True for state-dict keys of the frozen backbone, which checkpoints leave out (they come from `backbone`)."""
    return key.removeprefix("model.").startswith("encoder.") and "lora_" not in key


def sub_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of a state dict under ``prefix``, keyed without it (a LightningModule's ``model.*``: its towers)."""
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def load_trainable(model: TwoTower, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Loads trained weights (adapters, heads, id vectors; keys as in ``model.state_dict()``) onto a TwoTower whose
    frozen base came from its backbone."""
    backbone = model.config.backbone
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise ValueError(f"{source} does not fit backbone {backbone!r} (shapes differ): was it trained with "
                         f"another backbone or projection?\n{err}") from err
    missing = [k for k in missing if not is_base_weight(k)]
    if missing or unexpected:
        raise ValueError(f"{source} does not match the model built for backbone {backbone!r}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}.")
