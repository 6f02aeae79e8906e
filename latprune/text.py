"""Calibration and held-out text, and fixed token windows over it.

The embedded default text is the standard library's `pydoc_data.topics` (English prose,
PSF licence). Any text is split deterministically: it is cut into blocks at blank lines,
and every 5th block (index 4, 9, 14, ...) goes to the held-out part, the rest to
calibration. Windows are non-overlapping runs of `window` tokens (no special tokens
added); when more exist than asked for, evenly spaced ones are taken.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import LatpruneError

HELDOUT_EVERY = 5
# The second text: docstrings of these standard-library modules (and of their public classes
# and functions). Another kind of prose than pydoc's language reference; no stage ever trains
# or calibrates on it, so in-domain adaptation cannot pass for recovered quality.
SECOND_TEXT_MODULES = ("argparse", "collections", "csv", "dataclasses", "datetime", "decimal", "difflib",
                       "email.message", "fractions", "functools", "heapq", "http.client", "ipaddress", "json",
                       "logging", "pathlib", "queue", "random", "shutil", "statistics", "string", "subprocess",
                       "tarfile", "textwrap", "threading", "typing", "unittest", "urllib.parse", "uuid", "zipfile")
PROSE_SHARE = 0.98  # at least this share of a text's characters is printable


def default_text() -> str:
    """The standard library's pydoc topics, in sorted key order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def second_text() -> str:
    """Docstrings of SECOND_TEXT_MODULES, in a fixed order (about 160 K characters)."""
    import importlib
    import warnings

    docs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # typing.io / typing.re, reached through `typing`
        for name in SECOND_TEXT_MODULES:
            docs.extend(_docstrings(importlib.import_module(name)))
    return "\n\n".join(d for d in docs if d)


def _docstrings(module) -> list[str]:
    import inspect

    docs = [inspect.getdoc(module) or ""]
    for attr, obj in sorted(vars(module).items()):
        if not attr.startswith("_") and getattr(obj, "__module__", None) == module.__name__ \
                and (inspect.isclass(obj) or inspect.isfunction(obj)):
            docs.append(inspect.getdoc(obj) or "")
    return docs


def second_windows(tokenizer, window: int = 128, max_windows: int = 40) -> torch.Tensor:
    """Windows of the second text (never trained or calibrated on)."""
    return token_windows(tokenizer, second_text(), window, max_windows, "second text")


def read_text(path: str | Path | None) -> str:
    """The user's text file, or the default text when `path` is None or 'default'."""
    if path is None or str(path) == "default":
        return default_text()
    p = Path(path)
    if not p.is_file():
        raise LatpruneError(f"text file '{path}' does not exist; pass a UTF-8 text file or omit --text")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise LatpruneError(f"text file '{path}' is not UTF-8 text (byte {exc.start} cannot be decoded); "
                            "pass a UTF-8 text file") from None
    printable = sum(ch.isprintable() or ch in "\n\t\r" for ch in text)
    if printable < PROSE_SHARE * len(text):
        raise LatpruneError(f"text file '{path}' does not look like text ({1 - printable / len(text):.0%} of its "
                            "characters are control characters); pass a UTF-8 text file")
    if len(text.split()) < 200:
        raise LatpruneError(f"text file '{path}' is too short ({len(text.split())} words); give at least a few pages")
    return text


def split_text(text: str) -> tuple[str, str]:
    """(calibration, held-out): every 5th blank-line-separated block is held out."""
    blocks = [b for b in text.split("\n\n") if b.strip()]
    calib = [b for i, b in enumerate(blocks) if i % HELDOUT_EVERY != HELDOUT_EVERY - 1]
    held = [b for i, b in enumerate(blocks) if i % HELDOUT_EVERY == HELDOUT_EVERY - 1]
    if not held:
        n = max(1, len(text) // HELDOUT_EVERY)
        return text[:-n], text[-n:]
    return "\n\n".join(calib), "\n\n".join(held)


def token_windows(tokenizer, text: str, window: int = 128, max_windows: int | None = None,
                  part: str = "text") -> torch.Tensor:
    """Non-overlapping windows of `window` tokens, shape [n, window]: `max_windows` evenly
    spaced ones (refused when the text has fewer), or all of them when None."""
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    n = len(ids) // window
    if n == 0 or (max_windows is not None and n < max_windows):
        raise LatpruneError(f"the {part} has {len(ids):,} tokens: {n} windows of {window}, fewer than the "
                            f"{max_windows or 1} asked for; give a longer text (or fewer --windows)")
    windows = torch.tensor(ids[: n * window], dtype=torch.long).view(n, window)
    return windows if max_windows is None else evenly_spaced(windows, max_windows)


def evenly_spaced(windows: torch.Tensor, k: int) -> torch.Tensor:
    """`k` of `windows` [n, T], evenly spaced from the first to the last (all when n <= k)."""
    if len(windows) <= k:
        return windows
    return windows[torch.linspace(0, len(windows) - 1, k).round().long()]


def calibration_windows(tokenizer, text: str | None = None, window: int = 128,
                        max_windows: int | None = 32) -> torch.Tensor:
    """Windows of the calibration part of `text` (default text when None; all when
    `max_windows` is None)."""
    return token_windows(tokenizer, split_text(text or default_text())[0], window, max_windows,
                         "calibration part of the text")


def heldout_windows(tokenizer, text: str | None = None, window: int = 128, max_windows: int = 40) -> torch.Tensor:
    """Windows of the held-out part of `text` (default text when None)."""
    return token_windows(tokenizer, split_text(text or default_text())[1], window, max_windows,
                         "held-out part of the text (every 5th paragraph)")
