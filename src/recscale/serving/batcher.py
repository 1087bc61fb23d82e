"""Dynamic micro-batching: concurrent requests are scored together, up to `max_batch` of them.

Jobs wait in an asyncio queue; one worker takes the first, then every job already queued, and
while the service is busy (the previous batch held more than one job) waits up to `max_wait_ms`
for more, then scores the batch in one call in a worker thread (ONNX Runtime and torch release
the GIL, so the event loop keeps accepting requests meanwhile). An idle service does not wait:
a lone request is scored at once, so batching costs nothing at concurrency 1.

`drain` is how a swapped-out bundle retires: every job already submitted is scored and answered,
then the worker stops.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any, Callable


class MicroBatcher:
    def __init__(self, score: Callable[[list[Any]], list[Any]], max_batch: int = 64, max_wait_ms: float = 8.0,
                 on_batch: Callable[[int], None] | None = None):
        self.score, self.max_batch, self.max_wait = score, max(1, max_batch), max(0.0, max_wait_ms) / 1000
        self.on_batch = on_batch  # told each batch's size (the server's metrics)
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="recscale-score")
        self.busy = False
        self.batches = self.jobs = 0  # counters for /metadata
        self.pending = 0  # jobs submitted and not yet answered

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            try:
                await self.worker
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def drain(self, poll_s: float = 0.005) -> None:
        """Stop once every job submitted so far has its answer."""
        while self.pending:
            await asyncio.sleep(poll_s)
        await self.stop()

    async def submit(self, job: Any) -> Any:
        self.pending += 1  # before any await: a drain that starts later waits for this job
        try:
            future = asyncio.get_running_loop().create_future()
            self.queue.put_nowait((job, future))
            return await future
        finally:
            self.pending -= 1

    async def _collect(self) -> list:
        batch = [await self.queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.max_wait if self.busy else 0.0)
        while len(batch) < self.max_batch:
            try:
                batch.append(self.queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            self.busy = len(batch) > 1
            self.batches += 1
            self.jobs += len(batch)
            if self.on_batch is not None:
                self.on_batch(len(batch))
            try:
                results = await loop.run_in_executor(self.executor, self.score, [job for job, _ in batch])
            except Exception as exc:  # every waiting request gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)
