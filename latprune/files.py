"""Safe writes. Files and directories are built under a temporary sibling name and renamed
into place, so a crash or Ctrl-C never leaves a half-written artefact. An existing
directory is replaced only when latprune wrote it (it holds that kind of output's own
metadata file, its *marker*); anything else, the current directory, and any directory
holding an input are refused before work starts (`check_out`)."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import LatpruneError

# The metadata file that marks each kind of directory latprune writes.
MODEL_MARKER = "latprune.json"  # a compressed checkpoint
PREDICTOR_MARKER = "metadata.json"  # a predictor
SEARCH_MARKER = "summary.json"  # a search / run output
CHECKPOINT_MARKER = "state.json"  # a training checkpoint (distill, supernet)
CACHE_MARKER = "latprune_source.json"  # the converted default model
SUPERNET_MARKER = "latprune_supernet.json"  # a fine-tuned super-network


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _contains(outer: Path, inner: Path) -> bool:
    return outer == inner or outer in inner.parents


def check_out(out: str | Path, marker: str, inputs: Iterable[str | Path | None] = ()) -> Path:
    """Refuse, in one line, an output directory whose replacement could lose a user's files:
    the current directory or one above it, a directory holding an input, an existing file,
    or a non-empty directory without latprune's `marker`. Returns `out` as a Path."""
    out = Path(out)
    where = out.resolve()
    if _contains(where, Path.cwd().resolve()):
        raise LatpruneError(f"--out '{out}' is the current directory or contains it; latprune replaces its output "
                            "directory, so pass a new directory name")
    for item in inputs:
        if item is not None and str(item) != "default" and _contains(where, Path(item).resolve()):
            raise LatpruneError(f"--out '{out}' would replace the input '{item}'; pass another output directory")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise LatpruneError(f"--out '{out}' exists and is not a directory; pass a new directory name")
    if out.is_dir() and any(out.iterdir()) and not (out / marker).is_file():
        raise LatpruneError(f"--out '{out}' holds files latprune did not write (no {marker}); "
                            "latprune only replaces its own outputs: pass a new or empty directory")
    return out


def remove_output(out: str | Path, marker: str) -> None:
    """Delete a directory latprune wrote (it holds `marker`); leave anything else alone."""
    out = Path(out)
    if out.is_dir() and not out.is_symlink() and (out / marker).is_file():
        shutil.rmtree(out)


@contextmanager
def atomic_dir(out: str | Path, marker: str, inputs: Iterable[str | Path | None] = ()) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces `out` when the block succeeds. The
    block must write `marker` into it; `out` is checked (see `check_out`) before and after."""
    inputs = list(inputs)
    out = check_out(out, marker, inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the result should not be
    old = None
    try:
        yield tmp
        if not (tmp / marker).is_file():
            raise RuntimeError(f"atomic_dir: the block wrote no {marker}")
        check_out(out, marker, inputs)  # nothing of the user's appeared meanwhile
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}-old-", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[str]:
    """Yield a temporary file name that replaces `path` when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class FileLock:
    """An exclusive, non-blocking lock on `path` + '.lock' (released when the process ends,
    however it ends). `why` ends the one-line refusal when another process holds it."""

    def __init__(self, path: str | Path, why: str = ""):
        self.path = Path(str(path) + ".lock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self._fd)
            raise LatpruneError(f"'{path}' is in use by another latprune process (pid {holder}); {why}".rstrip("; ")
                                ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
