"""Copying the next batch to the device while the current one trains.
"""

from __future__ import annotations

import queue
import threading

import torch


class Prefetcher:
    """Prepares the next batch in a background thread and moves it to `device`; on CUDA it pins
    host memory and copies with non_blocking=True so the copy overlaps compute.

    Worth it where building a batch costs as much as a step (see benchmarks/loader.py)."""

    _DONE = object()

    def __init__(self, loader, device: torch.device | str, depth: int = 2):
        self.loader, self.device, self.depth = loader, torch.device(device), depth

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.loader.set_epoch(epoch, start_batch)

    def __iter__(self):
        slots: queue.Queue = queue.Queue(self.depth)
        cuda = self.device.type == "cuda"
        stop = threading.Event()

        def work():
            try:
                for batch in self.loader:
                    if stop.is_set():
                        return
                    if cuda:
                        batch = batch.pin_memory().to(self.device, non_blocking=True)
                    slots.put(batch)
                slots.put(self._DONE)
            except BaseException as exc:  # surface loader errors in the consumer
                slots.put(exc)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        try:
            while (item := slots.get()) is not self._DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item if cuda else item.to(self.device)
        finally:
            stop.set()
            while thread.is_alive():  # unblock a producer waiting on a full queue
                try:
                    slots.get_nowait()
                except queue.Empty:
                    thread.join(0.01)
