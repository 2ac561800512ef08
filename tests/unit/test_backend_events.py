"""The events of a backend without an event stream: two looks at its sandboxes, and what changed."""

from __future__ import annotations

import threading

from agentbox.backends.base import SandboxInfo, SandboxState
from agentbox.backends.events import BackendEvent, PolledEvents, QueuedEvents, changes


def _info(sandbox_id: str, state: SandboxState, node: str | None = None) -> SandboxInfo:
    return SandboxInfo(id=sandbox_id, container_id="c-" + sandbox_id, container_name=sandbox_id, image="i",
                       state=state, created=None, owner_pid=None, owner_host="h", url=None, node=node)


def test_changes_between_two_looks() -> None:
    S = SandboxState
    before = {i.id: i for i in [
        _info("a", S.RUNNING), _info("b", S.RUNNING), _info("c", S.PAUSED), _info("d", S.RUNNING, "n2"),
        _info("e", S.STOPPED), _info("f", S.RUNNING), _info("g", S.RUNNING),
    ]}
    after = {i.id: i for i in [
        _info("b", S.PAUSED), _info("c", S.RUNNING), _info("d", S.LOST, "n2"), _info("e", S.RUNNING),
        _info("f", S.STOPPED), _info("g", S.RUNNING), _info("new", S.RUNNING),
    ]}
    assert sorted(changes(before, after), key=lambda e: e.sandbox_id) == [
        BackendEvent("a", "destroy"),
        BackendEvent("b", "pause"),
        BackendEvent("c", "unpause"),
        BackendEvent("d", "lost", node="n2"),
        BackendEvent("e", "start"),
        BackendEvent("f", "die"),
    ]  # g did not change; "new" was made after the first look: not an event of its own


def test_polled_events_report_what_changed_and_end_when_closed() -> None:
    looks = [[_info("a", SandboxState.RUNNING, "n1")], [_info("a", SandboxState.LOST, "n1")]]
    taken = threading.Semaphore(0)

    def look() -> list[SandboxInfo]:
        taken.release()
        return looks.pop(0) if len(looks) > 1 else looks[0]

    # An interval far beyond the test: only nudge() makes it look again.
    with PolledEvents(look, interval=3600) as stream:
        assert taken.acquire(timeout=0)  # the first look is taken before the constructor returns
        stream.nudge()
        events = iter(stream)
        assert next(events) == BackendEvent("a", "lost", node="n1")
        closer = threading.Thread(target=stream.close)
        closer.start()
        assert list(events) == []  # close() from another thread ends the iteration
        closer.join()


def test_a_queued_stream_ends_when_its_producer_ends() -> None:
    stream = QueuedEvents()
    stream.put(BackendEvent("x", "die", exit_code=137))
    stream.end()
    assert list(stream) == [BackendEvent("x", "die", exit_code=137)]
    assert not stream.closed.is_set()  # it ended on its own: a watcher can tell it was not asked to
