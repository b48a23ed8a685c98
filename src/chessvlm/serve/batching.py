"""Gathering concurrent requests into model batches.

Each request hands its decoded board to `MicroBatcher.submit` and awaits the result. One task
takes the first waiting item with everything queued behind it, waits up to `max_wait`
seconds for requests still on their way (`coming`) while the batch is short of `max_batch`,
and runs the whole batch in one
model call on its own thread, so the event loop keeps receiving uploads and answering other
clients meanwhile. Requests that arrive during a model call queue up and make the next
batch: the busier the server, the larger its batches. A batch goes to the model in chunks of
1, 2, 4, 8, ... boards (`power_of_two_chunks`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")
T = TypeVar("T")


@dataclass
class BatchStats:
    """Counts since start: model calls, items read, and the largest batch."""

    batches: int = 0
    items: int = 0
    largest: int = 0


def power_of_two_chunks(batch: Sequence[T]) -> list[Sequence[T]]:
    """`batch` cut into chunks of 2^k items, largest first (13 -> 8, 4, 1).

    The model then sees a handful of batch shapes: with any size at all, the allocator's
    heap fragments and a busy server's memory kept growing (bench/bench_serve.py).
    """
    chunks = []
    start = 0
    while start < len(batch):
        size = 1 << ((len(batch) - start).bit_length() - 1)
        chunks.append(batch[start : start + size])
        start += size
    return chunks


class MicroBatcher(Generic[Item, Result]):
    """Runs `process` (a list of items -> a list of results, in order) over batches of
    concurrently submitted items. Start it with `start()` inside the event loop, stop it with
    `stop()`."""

    def __init__(
        self,
        process: Callable[[Sequence[Item]], Sequence[Result]],
        *,
        max_batch: int = 16,
        max_wait: float = 0.005,
    ) -> None:
        self.process = process
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.stats = BatchStats()
        self._coming = 0
        self._queue: asyncio.Queue[tuple[Item, asyncio.Future[Result]]] | None = None
        self._task: asyncio.Task[None] | None = None
        # One thread: the model is called by one batch at a time, and its own threads
        # (torch's) do the parallel work.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")

    def start(self) -> None:
        """Start the batching task in the running event loop."""
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop batching; items still waiting get a `RuntimeError`."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while self._queue is not None and not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(RuntimeError("the server is shutting down"))
        self._executor.shutdown(wait=True)

    @contextmanager
    def coming(self) -> Iterator[None]:
        """Mark a request on its way (e.g. being decoded) for the block's length: a batch
        short of `max_batch` waits for it, up to `max_wait`, and for nothing else."""
        self._coming += 1
        try:
            yield
        finally:
            self._coming -= 1

    async def submit(self, item: Item) -> Result:
        """The result of `process` for `item`, read in a batch with whatever else waits."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        await self._queue.put((item, future))
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            await self._gather(batch)
            # A client that went away while waiting has its future cancelled: skip its item.
            batch = [(item, future) for item, future in batch if not future.done()]
            for chunk in power_of_two_chunks(batch):
                await self._process(loop, chunk)

    async def _process(self, loop: asyncio.AbstractEventLoop, chunk: list) -> None:
        items = [item for item, _ in chunk]
        try:
            results = await loop.run_in_executor(self._executor, self.process, items)
        except Exception as error:  # a model failure fails this chunk, not the server
            for _, future in chunk:
                if not future.done():
                    future.set_exception(error)
            return
        self._record(len(chunk))
        for (_, future), result in zip(chunk, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def _gather(self, batch: list) -> None:
        """Add what waits in the queue to `batch`; while it is short of `max_batch` and requests
        are `coming`, wait for them up to `max_wait` after its first item. A lone request
        never waits: on a loaded machine even a 2 ms sleep cost a lone client 20 ms."""
        assert self._queue is not None
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._coming:
                return
            getter = asyncio.ensure_future(self._queue.get())
            await asyncio.wait({getter}, timeout=remaining)
            if not getter.done():
                # A cancelled `Queue.get` leaves its item in the queue: nothing is lost.
                getter.cancel()
                await asyncio.gather(getter, return_exceptions=True)
            if getter.done() and not getter.cancelled():
                batch.append(getter.result())

    def _record(self, size: int) -> None:
        self.stats.batches += 1
        self.stats.items += size
        self.stats.largest = max(self.stats.largest, size)
