"""What every command-line entry point shares: option help from attribute docstrings, input errors as one line."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator

from jsonargparse import auto_cli, set_parsing_settings

# What bad input or a wrong path raises (recsys_tt's DataError is a ValueError); its message says what to fix, so a
# traceback only hides it.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turns the errors bad input raises into one line on stderr and exit status 2 (RECSYS_TT_TRACEBACK=1 keeps
    the traceback)."""
    try:
        yield
    except USER_ERRORS as err:
        if os.environ.get("RECSYS_TT_TRACEBACK"):
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def log_to_console() -> None:
    """Our INFO lines on the console; other libraries' only from WARNING up (faiss logs every loader it tries)."""
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", level=logging.WARNING)
    logging.getLogger("recsys_tt").setLevel(logging.INFO)


_NOISE = (r"Precision .* is not supported by the model summary",  # its size estimate; nothing to act on
          r".*isinstance\(treespec, LeafSpec\)",  # Lightning's own call into torch's pytree
          r".*is_gradient_checkpointing.* is deprecated")  # peft asks transformers the old name


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")  # advertising of a hosted logger


def quiet_library_noise() -> None:
    """Silences what the libraries print that a user cannot act on (every entry point calls it)."""
    from transformers.utils import logging as transformers_logging  # here, so importing this module stays light

    for message in _NOISE:
        warnings.filterwarnings("ignore", message=message)
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if not any(isinstance(f, _NoTips) for f in rank_zero.filters):
        rank_zero.addFilter(_NoTips())
    transformers_logging.disable_progress_bar()  # "Loading weights": a bar in a log file for under a second


def document_options() -> None:
    """Config dataclasses document their fields with attribute docstrings; --help shows them only with this."""
    set_parsing_settings(docstring_parse_attribute_docstrings=True)


def run(function: Callable, args: list[str] | None = None) -> None:
    """Runs a typed function as a command line (jsonargparse), with documented options and one-line input errors."""
    quiet_library_noise()
    document_options()
    with user_errors():
        auto_cli(function, as_positional=False, args=args)
