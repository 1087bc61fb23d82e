"""The life of a run directory: one writer at a time, built aside, published whole.

- **Lock.** A writer (train, resume) holds an exclusive `flock` on `.NAME.lock` beside the run
  directory, resolved (symlinks, `..`), for as long as it runs. A second writer is refused with one line naming the holder
  (pid, host, start time, command); the kernel drops the lock when the holder dies.
- **Built aside.** A new run (also one that replaces an existing run with --overwrite) is written
  into `.NAME.new-PID` beside its final place and renamed into place when its first checkpoint
  exists. Until then the previous run, if any, is untouched; a run killed before its first
  checkpoint leaves no run directory (only the aside directory, which the next start removes), so
  it can simply be started again. With --overwrite the previous run, with every output written into
  it (eval-*.json, recs.tsv), is removed at that moment, never before.
- Nothing here deletes a directory it did not create: an existing directory that is not a run (no
  config.toml) is refused, not replaced.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import os
import shutil
import socket
import sys
from pathlib import Path

from recscale.errors import RecscaleError
from recscale.fsutil import fsync_dir, refuse_if_input

CONFIG = "config.toml"
LAST = Path("checkpoints") / "last.pt"


def is_run(path: Path) -> bool:
    return (path / CONFIG).is_file()


def has_checkpoint(path: Path) -> bool:
    return (path / LAST).is_file()


class RunLock:
    """An exclusive, non-blocking flock on `.NAME.lock` beside the run directory."""

    def __init__(self, run: Path):
        self.run = run
        self.path = run.parent / f".{run.name}.lock"
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        try:
            self.run.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RecscaleError(f"{self.run.parent}: cannot create directory: {exc.strerror}") from None
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as exc:
                raise RecscaleError(f"{self.path}: cannot create lock file: {exc.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    raise RecscaleError(f"{self.run}: in use by {holder}; wait for it to finish or stop it") from None
                raise RecscaleError(f"{self.path}: cannot lock: {exc.strerror}") from None
            # The holder before us may have unlinked the file between our open and our lock.
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        started = datetime.datetime.now().isoformat(timespec="seconds")
        note = f"recscale (pid {os.getpid()} on {socket.gethostname()}, since {started}: {' '.join(sys.argv)})"
        os.ftruncate(fd, 0)
        os.pwrite(fd, note.encode()[:4000], 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = None


class RunDirectory:
    """Where a run's files go (`path`) and where they end up (`final`)."""

    def __init__(self, final: Path, path: Path | None = None):
        self.final = Path(final)
        self.path = Path(path) if path is not None else self.final
        self.lock = RunLock(self.final)

    @property
    def published(self) -> bool:
        return self.path == self.final

    @classmethod
    def create(cls, final: str | Path, overwrite: bool, inputs=()) -> tuple["RunDirectory", str]:
        """Lock `final` and make a fresh aside directory to build the run in. Returns it with a
        note for the user when an unfinished run is restarted ('' otherwise). A `final` that is or
        contains one of `inputs` (the prepared data) is refused before anything is touched."""
        final = Path(final).resolve()  # one lock and one directory for every path that reaches it
        refuse_if_input(final, inputs)
        note = ""
        if final.exists() and not final.is_dir():
            raise RecscaleError(f"{final}: exists and is not a directory")
        if final.is_dir() and any(final.iterdir()):
            if not is_run(final):
                raise RecscaleError(f"{final}: exists and is not a run directory (no {CONFIG}); "
                                    f"refusing to replace it: choose another --out")
            if has_checkpoint(final) and not overwrite:
                raise RecscaleError(f"{final}: a run already exists there (pass --overwrite to replace it, "
                                    f"or --resume {final} to continue it)")
            if not has_checkpoint(final):
                note = f"{final} was stopped before its first checkpoint; starting it again"
        run = cls(final)
        run.lock.acquire()
        try:
            run.remove_stale_asides()
            run.path = final.parent / f".{final.name}.new-{os.getpid()}"
            run.path.mkdir()  # mode from the umask
        except OSError as exc:
            run.lock.release()
            raise RecscaleError(f"{final.parent}: cannot create the run directory: {exc.strerror}") from None
        except BaseException:
            run.lock.release()
            raise
        return run, note

    @classmethod
    def existing(cls, final: str | Path) -> "RunDirectory":
        """Lock a published run to continue writing it (resume)."""
        run = cls(Path(final).resolve())
        run.lock.acquire()
        return run

    def remove_stale_asides(self) -> None:
        """Aside directories of earlier starts of this run that died (we hold the lock, so no
        live process is writing them)."""
        for stale in self.final.parent.glob(f".{self.final.name}.new-*"):
            shutil.rmtree(stale, ignore_errors=True)

    def publish(self) -> None:
        """Rename the aside directory into place (replacing the previous run, if any). Called once
        the run has its first checkpoint; a no-op afterwards."""
        if self.published:
            return
        old = None
        try:
            if self.final.exists():
                if any(self.final.iterdir()):
                    old = self.final.parent / f".{self.final.name}.old-{os.getpid()}"
                    os.rename(self.final, old)
                else:
                    self.final.rmdir()  # an empty directory: nothing of anyone's is lost
            os.rename(self.path, self.final)
        except OSError as exc:
            if old is not None and not self.final.exists():
                os.rename(old, self.final)
            raise RecscaleError(f"{self.final}: cannot publish the run: {exc.strerror}") from None
        self.path = self.final
        fsync_dir(self.final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abandon(self) -> None:
        """The run failed before publishing: remove its aside directory."""
        if not self.published:
            shutil.rmtree(self.path, ignore_errors=True)

    def close(self) -> None:
        self.lock.release()
