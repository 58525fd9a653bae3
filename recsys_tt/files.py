"""File helpers every stage shares: content hashes, the cache folder, replacing a folder atomically."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """Where downloaded data and token caches live: $RECSYS_TT_CACHE, else ~/.cache/recsys_tt."""
    return Path(os.environ.get("RECSYS_TT_CACHE", Path.home() / ".cache" / "recsys_tt"))


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_OWNER = "OWNER_PID"  # inside each staging folder: the process writing it, so a dead writer's copy can be removed
_ABANDONED_AFTER_S = 600  # a staging folder without an owner file this old was left by an older version


class FolderBusyError(RuntimeError):
    """Another process is replacing the same folder."""


@contextlib.contextmanager
def replacing(out: Path) -> Iterator[Path]:
    """A staging folder that replaces ``out`` (or becomes it) when the block ends without an error.

    One writer at a time: a second process replacing the same folder meanwhile is refused (``FolderBusyError``).
    A crash at any point leaves either the old or the new folder under ``out``'s name (or under its backup name for
    an instant, which the next ``replacing`` or ``restore_interrupted_swap`` undoes); staging copies of writers that
    died are removed the next time the folder is replaced.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    with _writer_lock(out):
        restore_interrupted_swap(out)
        _remove_abandoned_staging(out)
        with _staging(out) as staging:
            yield staging


@contextlib.contextmanager
def _writer_lock(out: Path) -> Iterator[None]:
    """An exclusive lock on ``out`` for writers (a lock file beside it, released when the process ends, however)."""
    import fcntl

    with open(out.with_name(f".{out.name}.lock"), "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderBusyError(f"Another process is writing {out}; run this again when it has finished (nothing "
                                  "was changed).") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:
        (Path(tmp) / _OWNER).write_text(str(os.getpid()))
        staging = Path(tmp) / out.name
        staging.mkdir()
        yield staging
        _default_permissions(staging)
        _swap_into_place(staging, out)


def _default_permissions(folder: Path) -> None:
    """Gives every file and folder the permissions the umask grants: some writers (safetensors) create files only
    their owner can read, which a server running as another user could not load."""
    mask = os.umask(0)
    os.umask(mask)
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def restore_interrupted_swap(out: Path) -> None:
    """Puts the old folder back when a crash fell between the swap's two renames (old -> backup, new -> out)."""
    backup = _backup(out)
    if backup.exists() and not out.exists():
        backup.rename(out)
        log.warning("%s was missing after an interrupted replacement; restored the previous version.", out)


def _backup(out: Path) -> Path:
    return out.with_name(f".{out.name}.old")


def _swap_into_place(staging: Path, out: Path) -> None:
    if not out.exists():
        staging.rename(out)
        return
    backup = _backup(out)  # the old folder stays until the new one is in place
    shutil.rmtree(backup, ignore_errors=True)
    out.rename(backup)
    staging.rename(out)
    shutil.rmtree(backup)


def _remove_abandoned_staging(out: Path) -> None:
    for folder in out.parent.glob(f".{out.name}-*"):
        owner = folder / _OWNER
        if owner.exists():
            pid = owner.read_text().strip()
            abandoned = not (pid.isdigit() and _running(int(pid)))
        else:
            abandoned = time.time() - folder.stat().st_mtime > _ABANDONED_AFTER_S
        if abandoned:
            log.info("Removing %s, a staging copy its writer left behind.", folder)
            shutil.rmtree(folder, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return pid > 0


def folder_digests(folder: Path, names: tuple[str, ...]) -> dict[str, str]:
    """sha256 of each named file of ``folder``."""
    return {name: sha256_file(folder / name) for name in names}


def verify_digests(folder: Path, recorded: dict[str, str], fix: str) -> None:
    """Refuses a folder whose files no longer match the digests recorded when it was written."""
    changed = [name for name, digest in recorded.items() if sha256_file(folder / name) != digest]
    if changed:
        raise ValueError(f"{folder}: {', '.join(changed)} changed after the folder was written (sha256 differs from "
                         f"meta.json); {fix}")
