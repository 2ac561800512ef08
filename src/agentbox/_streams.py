"""Bridges between byte streams of different kinds: sync and async iterators, file-like readers, producer threads.

Moving bytes between a blocking world (``tarfile``, files, a worker thread) and the event loop (httpx's async
client, Starlette's request and response streams) needs the same four pieces on both sides of the wire:

* :func:`iterate_in_thread`: an async iterator over a blocking iterator (each ``next`` in a worker thread);
* :func:`iterate_from_thread`: a blocking iterator, for a worker thread, over an async iterator on a loop;
* :class:`IterReader`: a file-like ``read(size)`` over an iterator of chunks (what ``tarfile`` and
  ``shutil.copyfileobj`` consume);
* :class:`ThreadProducer`: runs a writer (e.g. ``tarfile`` writing an archive) in a thread and hands its
  output over as chunks through a small bounded queue, so memory stays constant whatever the size.

Every piece can be abandoned half-way: a consumer that stops early calls ``close()`` (or leaves the ``with``
block) and nothing is left behind, no blocked thread and no open file. That is the property that makes a
failed request safe, and the reason these live in one module rather than one copy per caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from types import TracebackType
from typing import IO

__all__ = [
    "CHUNK",
    "FileChunks",
    "IterReader",
    "Sink",
    "ThreadProducer",
    "aiterate_producer",
    "iterate_from_thread",
    "iterate_in_thread",
]

#: Chunk size for every stream: big enough that thread hops and syscalls do not dominate a transfer.
CHUNK = 1 << 20
#: Thread names start with this, so a test (or a debugger) can tell agentbox's producers apart.
PRODUCER_THREAD_PREFIX = "agentbox-producer"
_counter = itertools.count(1)


async def iterate_in_thread(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Yield the items of a blocking iterator, each ``next`` run in a worker thread (the loop never blocks)."""
    while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
        yield chunk


def iterate_from_thread(chunks: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop) -> Iterator[bytes]:
    """A blocking iterator, to be consumed in a worker thread, over an async iterator running on ``loop``."""

    async def next_chunk() -> bytes | None:
        try:
            return await chunks.__anext__()
        except StopAsyncIteration:
            return None

    while (chunk := asyncio.run_coroutine_threadsafe(next_chunk(), loop).result()) is not None:
        yield chunk


class IterReader:
    """A blocking file-like ``read`` over an iterator of byte chunks (holds at most about one chunk)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = bytearray()
        self._eof = False

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (all remaining if negative or None); b"" at the end."""
        if size is None:
            size = -1
        while not self._eof and (size < 0 or len(self._buf) < size):
            chunk = next(self._chunks, None)
            if chunk is None:
                self._eof = True
            else:
                self._buf += chunk
        if size < 0 or size >= len(self._buf):
            data, self._buf = bytes(self._buf), bytearray()
        else:
            data = bytes(self._buf[:size])
            del self._buf[:size]
        return data

    def readable(self) -> bool:
        """File-like protocol: always readable."""
        return True


class FileChunks:
    """The chunks of a local file, opened now and closed at the end, on ``close()``, or on leaving ``with``.

    A generator over ``open(...)`` would keep the file open until garbage collection when a request fails
    before the body is drained; this closes it deterministically.
    """

    def __init__(self, path: str, chunk_size: int = CHUNK) -> None:
        self._file: IO[bytes] = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._size = chunk_size

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._file.closed:
            raise StopIteration
        chunk = self._file.read(self._size)
        if not chunk:
            self.close()
            raise StopIteration
        return chunk

    def close(self) -> None:
        """Close the file (idempotent)."""
        self._file.close()

    def __enter__(self) -> FileChunks:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class Sink:
    """The file-like ``write`` a :class:`ThreadProducer` function writes to (``write_chunk`` for a callback)."""

    def __init__(self, put: Callable[[bytes], None]) -> None:
        self.write_chunk = put

    def write(self, data: bytes) -> int:
        """Hand ``data`` to the consumer (blocks while the queue is full)."""
        self.write_chunk(bytes(data))
        return len(data)


class ThreadProducer:
    """Runs ``produce(sink)`` in a daemon thread and iterates over what it writes to ``sink`` (a file-like).

    The queue between them is bounded (``maxsize`` chunks), so memory is constant. The consumer iterates;
    an exception in the producer is re-raised in the consumer. :meth:`close` (also on leaving ``with``) stops
    a producer the consumer no longer wants: its next write raises ``BrokenPipeError``, which ends it, and
    ``close`` returns once the thread is gone. Without that, a request that fails before draining the body
    leaves the thread blocked on the full queue forever, holding the files it had open.
    """

    _END = object()

    def __init__(self, produce: Callable[[Sink], None], *, name: str = "", maxsize: int = 4) -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=maxsize)
        self._closed = threading.Event()
        self._done = False
        self._produce = produce
        label = f"{PRODUCER_THREAD_PREFIX}-{name or 'stream'}-{next(_counter)}"
        self._thread = threading.Thread(target=self._run, name=label, daemon=True)
        self._thread.start()

    def _put(self, item: object) -> None:
        # A bounded wait in a loop, not a blocking put: close() may come while the queue is full.
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise BrokenPipeError("the consumer of this stream went away")

    def _run(self) -> None:
        try:
            self._produce(Sink(self._put))
            self._put(self._END)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            if not self._closed.is_set():
                with contextlib.suppress(BrokenPipeError):
                    self._put(exc)

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is self._END:
            self._done = True
            self._thread.join()
            raise StopIteration
        if isinstance(item, BaseException):
            self._done = True
            self._thread.join()
            raise item
        assert isinstance(item, bytes)
        return item

    def close(self) -> None:
        """Stop the producer if it still runs and wait for its thread to end (idempotent)."""
        self._closed.set()
        self._thread.join()
        self._done = True
        # A consumer still waiting in another thread (an abandoned iterate_in_thread) must wake up.
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(self._END)

    @property
    def alive(self) -> bool:
        """Whether the producer thread still runs."""
        return self._thread.is_alive()

    def __enter__(self) -> ThreadProducer:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


async def aiterate_producer(producer: ThreadProducer) -> AsyncIterator[bytes]:
    """Iterate a :class:`ThreadProducer` from the event loop; stopping early (or being cancelled) closes it."""
    try:
        async for chunk in iterate_in_thread(producer):
            yield chunk
    finally:
        await asyncio.to_thread(producer.close)
