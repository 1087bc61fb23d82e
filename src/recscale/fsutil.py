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


def _umask() -> int:
    """The process's umask (read by setting and restoring it; there is no other portable way)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def respect_umask(path: Path, directory: bool = False) -> None:
    """mkstemp/mkdtemp create 0600/0700 whatever the umask; give outputs the mode that a plain
    open() or mkdir() would, so that a shared group or a web server can read them as expected."""
    with contextlib.suppress(OSError):
        os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def fsync_dir(path: Path) -> None:
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
    respect_umask(tmp, directory=True)
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
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; fsync and rename it to `target` on success.

    A failed write (disk full, quota, permissions) is a one-line RecscaleError naming `target`;
    the temporary file is removed and a previous `target` stays as it was."""
    target = Path(target)
    if target.is_dir():
        raise RecscaleError(f"{target}: is a directory, expected a file name")
    _make_parent(target)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    except OSError as exc:
        raise RecscaleError(f"{target}: cannot write: {exc.strerror or exc}") from None
    os.close(fd)
    tmp = Path(name)
    respect_umask(tmp)
    try:
        try:
            yield tmp
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            raise RecscaleError(f"{target}: cannot write: {exc.strerror or exc}") from exc
        fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
