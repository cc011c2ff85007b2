"""The thread plumbing both files and live sessions run on: bounded, timed, nothing dies silently."""

from __future__ import annotations

import threading
import time

import pytest

from voxcli.events import TokenEvent
from voxcli.live.runner import Runner, consume


def _events(n: int):
    for i in range(n):
        yield TokenEvent(i, i, f" w{i}", time.perf_counter())


def test_items_come_in_order_and_an_idle_poll_is_none():
    def work(put):
        put("a")
        time.sleep(0.2)  # longer than a poll: the consumer sees None meanwhile
        put("b")

    with Runner(work, maxsize=1) as runner:
        got = list(runner.items())
    assert [x for x in got if x is not None] == ["a", "b"]
    assert None in got


def test_an_exception_in_the_work_is_raised_in_the_consumer():
    class Boom(Exception):
        pass

    def work(put):
        put(1)
        raise Boom("engine failed")

    with Runner(work, maxsize=4) as runner:
        items = runner.items()
        assert next(items) == 1
        with pytest.raises(Boom, match="engine failed"):
            list(items)


def test_a_consumer_that_leaves_ends_a_producer_blocked_on_a_full_queue():
    puts = []

    def work(put):
        for i in range(10_000):
            put(i)
            puts.append(i)

    with Runner(work, maxsize=2) as runner:
        items = runner.items()
        next(items)
    # The with block has abandoned the work: its next put ended it, far short of 10 000 items.
    assert not runner._thread.is_alive()
    assert len(puts) < 10


def test_ctrl_c_while_drawing_returns_what_came_marked_incomplete():
    produced = []

    def produce():
        for event in _events(1000):
            produced.append(event)
            yield event

    def on_event(event):
        if event.index == 3:
            raise KeyboardInterrupt

    events, t_start, complete = consume(produce, on_event)
    assert not complete
    assert [e.index for e in events] == [0, 1, 2, 3]
    assert len(produced) < 1000  # the engine stopped instead of running to the end
    assert t_start <= events[0].t_emitted


def test_a_stop_request_ends_the_engine_after_its_step():
    stop = threading.Event()

    def on_event(event):
        if event.index == 5:
            stop.set()

    events, _, complete = consume(lambda: _events(1000), on_event, stop=stop)
    assert complete and len(events) < 1000
