"""Atomic writes: every output appears whole under its final name, or not at all."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from recscale.errors import RecscaleError


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (OSError, FileExistsError) as exc:
        raise RecscaleError(f"{path.parent}: cannot create directory: {exc.strerror or exc}") from exc
    if not path.parent.is_dir():
        raise RecscaleError(f"{path.parent}: not a directory")
    if not os.access(path.parent, os.W_OK):
        raise RecscaleError(f"{path.parent}: directory is not writable")


def _fsync_dir(path: Path) -> None:
    # Makes a rename durable across a crash; not every platform lets us open a directory.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory beside `target`; rename it to `target` on success.

    On any exception (or KeyboardInterrupt) the temporary directory is removed and `target` is left
    exactly as it was.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise RecscaleError(f"{target}: already exists (pass --overwrite to replace it)")
    _make_parent(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        try:
            yield tmp
        except OSError as exc:  # disk full, quota, permissions: a one-line error, nothing left behind
            raise RecscaleError(f"{target}: cannot write: {exc.strerror or exc}") from exc
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.rename(target, old / "x")
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; fsync and rename it to `target` on success."""
    target = Path(target)
    _make_parent(target)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
