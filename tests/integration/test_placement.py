"""Placement of a parallel pass's streams on receiver workers: the admission rule of ``PassGate``.

Real processes share a real gate (shared memory, forked as ``receive
--workers`` forks its workers): this test process is one worker, forked
children are the others.  The rule: a stream that reaches a worker already
serving another stream of its pass is refused (``Misplaced``, nothing
reserved) while an enlisted live worker serves none; a stream is taken where it
lands when the other workers are busy or dead, when the agent does not number
its attempts (0), and from attempt PLACE_ANYWHERE on.  The end-to-end side (the
kernel's choice, the agent reconnecting) is in tests/e2e/test_streams_workers.py.
"""
from __future__ import annotations

import multiprocessing
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from cvmigrate.common.errors import Misplaced
from cvmigrate.receiver.shards import PLACE_ANYWHERE, PassGate, Ticket

_fork = multiprocessing.get_context("fork")


def _serve(gate: PassGate, index: int, orders: Any, answers: Any) -> None:
    """Another worker: enlist, then admit what it is told to, answering "ok" or the error's class name."""
    gate.enlist(index)
    answers.put("ready")
    while True:
        order = orders.get()
        if order is None:
            return
        try:
            gate.admit(*order)
            answers.put("ok")
        except Exception as exc:  # noqa: BLE001 - the test reads the class
            answers.put(type(exc).__name__)


class Worker:
    """A forked worker process holding tickets in the shared gate (and serving them until it exits)."""

    def __init__(self, gate: PassGate, index: int) -> None:
        self.orders = _fork.SimpleQueue()
        self.answers = _fork.SimpleQueue()
        self.proc = _fork.Process(target=_serve, args=(gate, index, self.orders, self.answers), daemon=True)
        self.proc.start()
        assert self.answers.get() == "ready"

    def admit(self, pass_id: str, shard: int, count: int, placement: int = 1) -> str:
        self.orders.put((pass_id, shard, count, False, placement))
        answer: str = self.answers.get()
        return answer

    def exit(self) -> None:
        self.orders.put(None)
        self.proc.join(10)
        assert self.proc.exitcode == 0


@contextmanager
def workers(gate: PassGate, *indexes: int) -> Iterator[list[Worker]]:
    started = [Worker(gate, i) for i in indexes]
    try:
        yield started
    finally:
        for w in started:
            if w.proc.is_alive():
                w.exit()


def leave_all(gate: PassGate, *tickets: Ticket) -> None:
    for t in tickets:
        gate.leave(t)


def new_pass() -> str:
    return uuid.uuid4().hex


def test_a_second_stream_is_sent_on_while_another_worker_serves_none_and_nothing_stays_reserved() -> None:
    gate = PassGate(shared=True)
    gate.enlist(0)                                   # this process is worker 0
    with workers(gate, 1) as (other,):
        p = new_pass()
        first = gate.admit(p, 0, 2, False, placement=1)
        with pytest.raises(Misplaced, match=r"stream 1 of 2 .* serves stream\(s\) \[0\] .* 1 other worker"):
            gate.admit(p, 1, 2, False, placement=1)
        assert Misplaced.retryable and Misplaced.grpc_code == "ALREADY_EXISTS"
        # the refused attempt reserved nothing: the same shard is admitted by the idle worker
        assert other.admit(p, 1, 2, placement=2) == "ok"
        leave_all(gate, first)


def test_with_more_streams_than_workers_a_stream_is_taken_where_it_lands() -> None:
    gate = PassGate(shared=True)
    gate.enlist(0)
    with workers(gate, 1) as (other,):
        p = new_pass()
        mine = gate.admit(p, 0, 3, False, placement=1)
        assert other.admit(p, 1, 3) == "ok"
        # both workers serve a stream of the pass: the third is served here, not refused
        third = gate.admit(p, 2, 3, False, placement=1)
        assert third.shard == 2
        leave_all(gate, mine, third)


def test_from_attempt_place_anywhere_on_and_for_unnumbered_agents_a_stream_is_taken_where_it_lands() -> None:
    gate = PassGate(shared=True)
    gate.enlist(0)
    with workers(gate, 1):
        for placement in (0, PLACE_ANYWHERE, PLACE_ANYWHERE + 5):
            p = new_pass()
            first = gate.admit(p, 0, 2, False, placement=1)
            second = gate.admit(p, 1, 2, False, placement=placement)   # the other worker still idles
            assert second.shard == 1
            leave_all(gate, first, second)
        p = new_pass()
        first = gate.admit(p, 0, 2, False, placement=1)
        with pytest.raises(Misplaced):
            gate.admit(p, 1, 2, False, placement=PLACE_ANYWHERE - 1)
        leave_all(gate, first)


def test_a_dead_worker_and_a_finished_stream_do_not_count() -> None:
    gate = PassGate(shared=True)
    gate.enlist(0)
    with workers(gate, 1, 2) as (busy, dead):
        p = new_pass()
        first = gate.admit(p, 0, 3, False, placement=1)
        assert busy.admit(p, 1, 3) == "ok"
        # worker 2 still idles: a second stream here is refused
        with pytest.raises(Misplaced):
            gate.admit(p, 2, 3, False, placement=1)
        dead.exit()                                   # the only idle worker is gone (its pid is checked)
        third = gate.admit(p, 2, 3, False, placement=1)
        assert third.shard == 2
        leave_all(gate, first, third)
    # a worker whose stream of the pass ended serves none of it again
    with workers(gate, 1) as (other,):
        p = new_pass()
        first = gate.admit(p, 0, 2, False, placement=1)
        gate.leave(first)
        assert other.admit(p, 1, 2) == "ok"
        # stream 0 left this worker (its connection broke): the worker serves nothing of the pass again
        again = gate.admit(p, 0, 2, False, placement=1)
        assert again.shard == 0
        leave_all(gate, again)


def test_one_worker_or_one_process_never_refuses() -> None:
    for gate in (PassGate(), PassGate(shared=True)):
        gate.enlist(0)                                # W = 1: only this worker is enlisted
        p = new_pass()
        tickets = [gate.admit(p, k, 4, False, placement=1) for k in range(4)]
        assert [t.shard for t in tickets] == [0, 1, 2, 3]
        leave_all(gate, *tickets)
    lone = PassGate()                                 # a receiver without workers enlists nobody
    p = new_pass()
    tickets = [lone.admit(p, k, 2, False, placement=1) for k in range(2)]
    leave_all(lone, *tickets)
