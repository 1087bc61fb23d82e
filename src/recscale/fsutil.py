"""Atomic writes: every output appears whole under its final name, or not at all; and the one rule
for replacing an output (`check_output`): only what recscale made, never an input."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

from recscale.errors import RecscaleError, RunInterrupted

# Scratch beside an output: `.NAME.KIND-PID-RANDOM` (KIND tmp, old or scratch), so that the scratch
# of a process that died (SIGKILL, power loss) can be told from one in use and removed.
_SCRATCH = re.compile(r"\.(?P<name>.+)\.(?:tmp|old|scratch)-(?P<pid>\d+)-[^/]*")


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


def scratch_prefix(target: Path, kind: str) -> str:
    return f".{target.name}.{kind}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_scratch(path: Path, tries: int = 30) -> None:
    """Remove a scratch directory on the way out of an error or an interrupt, and finish even when
    interrupted again meanwhile (Polars raises the KeyboardInterrupt of one SIGINT a second time)
    or when the streaming engine's threads are still finishing a file in it."""
    for _ in range(tries):
        try:
            shutil.rmtree(path, ignore_errors=True)
            if not path.exists():
                return
            time.sleep(0.1)
        except (KeyboardInterrupt, RunInterrupted):
            continue


def remove_stale_scratch(target: Path) -> list[Path]:
    """Remove the scratch that dead processes left beside `target` (a live one's stays); returns
    what was removed."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in target.parent.iterdir():
            match = _SCRATCH.fullmatch(entry.name)
            if match and match["name"] == target.name and not _alive(int(match["pid"])):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


@contextlib.contextmanager
def stop_signals_clean_up(what: str) -> Iterator[None]:
    """While inside, the first SIGINT raises KeyboardInterrupt and the first SIGTERM or SIGHUP
    RunInterrupted in the main thread, so that every `finally` and atomic directory removes its
    scratch and the process exits with 128 + the signal, leaving no partial output. Later signals
    are ignored so that the clean-up itself is not cut short (Polars delivers one SIGINT twice).
    Elsewhere (another thread) a no-op: only the main thread may set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopped = []

    def stop(signum, frame):
        if stopped:
            return
        stopped.append(signum)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise RunInterrupted(f"{what}: stopped by {signal.Signals(signum).name}; nothing was written", signum)

    with signal_handlers(stop, (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)):
        yield


@contextlib.contextmanager
def signal_handlers(handler, signals) -> Iterator[None]:
    """`handler` for `signals` while inside; the previous handlers after."""
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


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
    remove_stale_scratch(target)
    tmp = Path(tempfile.mkdtemp(prefix=scratch_prefix(target, "tmp"), dir=target.parent))
    respect_umask(tmp, directory=True)
    try:
        try:
            yield tmp
        except OSError as exc:  # disk full, quota, permissions: a one-line error, nothing left behind
            raise RecscaleError(f"{target}: cannot write: {exc.strerror or exc}") from exc
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=scratch_prefix(target, "old"), dir=target.parent))
            os.rename(target, old / "x")
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        remove_scratch(tmp)
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
        fd, name = tempfile.mkstemp(prefix=scratch_prefix(target, "tmp"), dir=target.parent)
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


# ----------------------------------------------------------------------------- what --overwrite may replace

def json_marker(name: str, *keys: str) -> Callable[[Path], bool]:
    """A directory recscale made: it holds the JSON object `name` with `keys` (its manifest)."""
    def made(path: Path) -> bool:
        try:
            content = json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(content, dict) and all(key in content for key in keys)
    return made


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def refuse_if_input(out: str | os.PathLike, inputs: Iterable[str | os.PathLike], flag: str = "--out") -> Path:
    """`out` resolved, unless it is or contains one of `inputs` (after resolving symlinks and `..`)."""
    target = Path(out).resolve()
    for given in inputs:
        source = Path(given).resolve()
        if _inside(source, target):
            relation = "is" if source == target else "contains"
            raise RecscaleError(f"{flag}: {out} {relation} the input {given}; choose another {flag}")
    return target


def check_output(out: str | os.PathLike, what: str, made_by_us: Callable[[Path], bool], overwrite: bool,
                 inputs: Iterable[str | os.PathLike] = (), flag: str = "--out") -> Path:
    """Refuse, before any work, an output that would destroy something recscale did not make.

    `out` may not be, nor contain, any of `inputs` (compared after resolving symlinks and `..`).
    An existing `out` is replaced only with `overwrite`, and then only when it is empty or
    `made_by_us` recognizes it as recscale's own kind of output (`what`, e.g. "prepared dataset").
    Returns `out` resolved."""
    target = refuse_if_input(out, inputs, flag)
    if not (target.exists() or target.is_symlink()):
        return target
    if not overwrite:
        raise RecscaleError(f"{flag}: {out} already exists (pass --overwrite to replace it)")
    empty = target.is_dir() and not any(target.iterdir())
    if not (empty or made_by_us(target)):
        kind = "directory" if target.is_dir() else "file"
        raise RecscaleError(f"{flag}: {out} is a {kind} that is not a {what} recscale wrote; refusing to replace "
                            f"it with --overwrite: choose another {flag}")
    return target
