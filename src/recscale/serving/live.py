"""The bundle being served, and its swap for a new one without downtime.

A swap (SIGHUP, or POST /admin/reload with the admin token) reads the bundle path the server was
started with again (a symlink is resolved again: point it at the new export, then signal), verifies
and loads it and scores one warm-up batch, all in a worker thread while the old bundle keeps
answering. Only then does `current` change: a request reads `current` once when it starts, so
requests in flight finish on the old bundle and new ones go to the new. The old bundle's batcher
drains (every job it was given is answered) and is dropped. A bundle that fails to load or verify
changes nothing: the old one keeps serving, and the failure is logged and answered in one line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import time
from pathlib import Path

from recscale.errors import RecscaleError
from recscale.serving.batcher import MicroBatcher
from recscale.serving.bundle import Bundle
from recscale.serving.scoring import Service, warm_up
from recscale.serving.settings import ServerConfig

LOGGER = logging.getLogger("recscale.serve")


@dataclasses.dataclass
class Served:
    """One loaded bundle with what serves it."""

    bundle: Bundle
    service: Service
    batcher: MicroBatcher
    loaded_at: float


class SwapInProgress(Exception):
    pass


def _one_line(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text if isinstance(exc, RecscaleError) else f"{type(exc).__name__}: {text}"


class LiveBundle:
    """`current` is the Served that new requests use; `swap` replaces it."""

    def __init__(self, root: str | Path, settings: ServerConfig, on_batch=None, on_swap=None):
        """`on_batch(size)` is told each micro-batch's size, `on_swap(outcome)` each swap's outcome."""
        self.root, self.settings, self.on_batch, self.on_swap = Path(root), settings, on_batch, on_swap
        self.current = self._load()  # a bad bundle or setting fails here, at start, in one line
        self.swaps = {"swapped": 0, "failed": 0}
        self.last_swap: dict | None = None
        self._lock: asyncio.Lock | None = None
        self._warm = False

    def _load(self) -> Served:
        s = self.settings
        bundle = Bundle(self.root, s.runtime, s.threads, trust=s.trust_bundle)
        index = None
        if s.index != "none":
            if bundle.item_vectors is None:
                raise RecscaleError(f"--index {s.index}: {bundle.manifest['model']}'s score is not an inner product "
                                    f"of user and item vectors (its tower mixes them): serve it without an index")
            from recscale.serving.index import ItemIndex
            index = ItemIndex(bundle.item_vectors, s.index, nprobe=s.nprobe, threads=s.threads)
        service = Service(bundle, index)
        return Served(bundle, service, MicroBatcher(service.score, s.max_batch, s.max_wait_ms, self.on_batch),
                      time.time())

    def _load_warm(self) -> Served:
        served = self._load()
        warm_up(served.service, self.settings.max_batch)
        return served

    async def start(self) -> None:
        if not self._warm:
            warm_up(self.current.service, self.settings.max_batch)
            self._warm = True
        await self.current.batcher.start()

    async def stop(self) -> None:
        await self.current.batcher.stop()

    async def swap(self) -> dict:
        """Load the bundle at the served path again and serve it; {"swapped", "digest", ...}.
        Raises SwapInProgress while another swap is loading."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        if self._lock.locked():
            raise SwapInProgress("a swap is already in progress")
        async with self._lock:
            old = self.current
            started = time.perf_counter()
            try:
                new = await asyncio.get_running_loop().run_in_executor(None, self._load_warm)
            except Exception as exc:  # whatever went wrong, the old bundle keeps serving
                self.swaps["failed"] += 1
                self.last_swap = {"swapped": False, "error": _one_line(exc), "digest": old.bundle.digest}
                LOGGER.error(f"serve: swap refused, still serving {old.bundle.digest[:12]}: {_one_line(exc)}")
                return self._told(self.last_swap)
            await new.batcher.start()
            self.current, previous = new, old.bundle.digest
            await old.batcher.drain()
            del old
            self._release_frozen()
            self.swaps["swapped"] += 1
            self.last_swap = {"swapped": True, "digest": new.bundle.digest, "previous": previous,
                              "seconds": round(time.perf_counter() - started, 3)}
            LOGGER.info(f"serve: now serving {new.bundle.digest[:12]} ({new.bundle.manifest['model']}) "
                           f"from {self.root}")
            return self._told(self.last_swap)

    def _told(self, outcome: dict) -> dict:
        if self.on_swap is not None:
            self.on_swap(outcome)
        return outcome

    @staticmethod
    def _release_frozen() -> None:
        """The server freezes what it loaded at start (gc.freeze, app.py): unfreeze so the swapped-out
        bundle's cycles can go, then freeze the new state again."""
        gc.unfreeze()
        gc.collect()
        gc.freeze()
