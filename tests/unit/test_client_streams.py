"""agentbox._streams: the bridges between blocking and async byte streams, and the producer thread."""

from __future__ import annotations

import asyncio
import io
import os
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from pathlib import Path
from typing import cast

import pytest

from agentbox._streams import (
    PRODUCER_THREAD_PREFIX,
    FileChunks,
    IterReader,
    Sink,
    ThreadProducer,
    aiterate_producer,
    iterate_from_thread,
    iterate_in_thread,
)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _producers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(PRODUCER_THREAD_PREFIX)]


def test_iter_reader_reads_exact_sizes_across_chunks() -> None:
    reader = IterReader(iter([b"ab", b"", b"cde", b"f"]))
    assert reader.read(3) == b"abc"
    assert reader.read(1) == b"d"
    assert reader.read() == b"ef"
    assert reader.read(5) == b""


def test_producer_hands_over_everything_in_order() -> None:
    def produce(sink: Sink) -> None:
        for i in range(20):  # more than the queue holds
            sink.write(bytes([i]) * 3)

    with ThreadProducer(produce, name="test") as producer:
        assert b"".join(producer) == b"".join(bytes([i]) * 3 for i in range(20))
        assert not producer.alive


def test_producer_error_reaches_the_consumer() -> None:
    def produce(sink: Sink) -> None:
        sink.write(b"first")
        raise ValueError("disk on fire")

    with ThreadProducer(produce) as producer, pytest.raises(ValueError, match="disk on fire"):
        list(producer)


def test_abandoned_producer_is_stopped_and_closes_its_file(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * (64 * 1024))
    fds = _open_fds()
    opened = threading.Event()

    def produce(sink: Sink) -> None:
        with open(big, "rb") as f:
            opened.set()
            while chunk := f.read(1024):  # 64 writes: blocks on the 4-slot queue
                sink.write(chunk)

    producer = ThreadProducer(produce, name="abandoned")
    assert next(producer) == b"x" * 1024
    assert opened.is_set() and producer.alive
    producer.close()  # the consumer gives up (a request failed before the body was drained)
    assert not producer.alive
    assert _producers() == []
    assert _open_fds() == fds


def test_close_wakes_a_consumer_blocked_in_another_thread() -> None:
    release = threading.Event()

    def produce(sink: Sink) -> None:
        release.wait()

    producer = ThreadProducer(produce)
    got: list[object] = []
    consumer = threading.Thread(target=lambda: got.append(next(producer, None)))
    consumer.start()
    release.set()
    producer.close()
    consumer.join()
    assert got == [None] and not consumer.is_alive()


def test_file_chunks_closes_when_abandoned(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"y" * 10)
    fds = _open_fds()
    with FileChunks(str(tmp_path / "f"), chunk_size=3) as chunks:
        assert next(chunks) == b"yyy"
        assert _open_fds() == fds + 1
    assert _open_fds() == fds
    assert list(FileChunks(str(tmp_path / "f"), chunk_size=4)) == [b"yyyy", b"yyyy", b"yy"]
    assert _open_fds() == fds


def test_sync_async_bridges_round_trip() -> None:
    async def main() -> bytes:
        loop = asyncio.get_running_loop()

        async def source() -> AsyncIterator[bytes]:
            for part in (b"a", b"bc", b"def"):
                yield part

        blocking: Iterator[bytes] = iterate_from_thread(source(), loop)
        # async -> blocking (consumed in a thread) -> async again
        return b"".join([c async for c in iterate_in_thread(iter(list(await asyncio.to_thread(list, blocking))))])

    assert asyncio.run(main()) == b"abcdef"


def test_async_consumer_that_stops_early_closes_the_producer() -> None:
    def produce(sink: Sink) -> None:
        for _ in range(100):
            sink.write(b"z" * 10)

    async def main() -> None:
        producer = ThreadProducer(produce, name="async")
        chunks = cast(AsyncGenerator[bytes, None], aiterate_producer(producer))
        assert await chunks.__anext__() == b"z" * 10
        await chunks.aclose()
        assert not producer.alive

    asyncio.run(main())
    assert _producers() == []


def test_the_bridges_serve_a_starlette_app_too() -> None:
    """The server's shapes: a request body read by a worker thread, a response made by a producer thread."""
    import tarfile

    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    async def upload(request: Request) -> Response:
        reader = IterReader(iterate_from_thread(request.stream(), asyncio.get_running_loop()))
        data = await asyncio.to_thread(reader.read)  # what receive_file does, 1 MiB at a time
        return JSONResponse({"bytes": len(data), "head": data[:3].decode()})

    async def download(request: Request) -> Response:
        def produce(sink: Sink) -> None:
            with tarfile.open(fileobj=sink, mode="w|") as tar:  # type: ignore[call-overload]
                info = tarfile.TarInfo("f.txt")
                info.size = 5
                tar.addfile(info, io.BytesIO(b"hello"))

        return StreamingResponse(aiterate_producer(ThreadProducer(produce, name="download")))

    app = Starlette(routes=[Route("/up", upload, methods=["PUT"]), Route("/down", download)])

    async def main() -> tuple[dict[str, object], bytes]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            up = await client.put("/up", content=b"abc" * 100_000)
            down = await client.get("/down")
            return up.json(), down.content

    answer, tar_bytes = asyncio.run(main())
    assert answer == {"bytes": 300_000, "head": "abc"}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        member = tar.extractfile("f.txt")
        assert member is not None and member.read() == b"hello"
    assert _producers() == []
