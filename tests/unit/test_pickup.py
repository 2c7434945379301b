"""Decisions of instant pickup, without a database: which node of a fleet takes a notice, how
many children a backlog wakes, when a node passes a notice on, when the listener counts notices
as arriving, and the child's poll that the supervisor stretches and restores."""

from __future__ import annotations

import collections
import os
import selectors
import time

from task_supervisor.chores import listen
from task_supervisor.chores.listen import Notice, ReadyListener, parse_payload
from task_supervisor.loop.child import ChildState
from task_supervisor.loop.fleet import MAX_HOPS, Fleet, Member
from task_supervisor.loop.wakeups import Wakeups
from task_supervisor.wire import control
from task_supervisor.worker.control import ControlChannel, CurrentTask

NODES = [f"node-{n:03d}" for n in range(100)]


def fleet_of(me: str, nodes: list[str] = NODES, queues: tuple[str, ...] = ("default",)) -> Fleet:
    fleet = Fleet(me)
    fleet.update(Member(node, queues) for node in nodes)
    return fleet


def test_each_notice_is_taken_by_exactly_one_node_and_the_work_spreads():
    fleets = [fleet_of(node) for node in NODES]
    taken: collections.Counter[str] = collections.Counter()
    for n in range(300):
        takers = [f.me for f in fleets if f.takes("default", f"task-{n}", 0)]
        assert len(takers) == 1
        taken[takers[0]] += 1
    assert len(taken) > 90 and max(taken.values()) < 4 * 300 / 100


def test_a_notice_passed_on_reaches_the_next_node_and_stops_after_max_hops():
    fleets = {node: fleet_of(node) for node in NODES}
    key = "task-7"
    hops = []
    for hop in range(MAX_HOPS + 2):
        hops.append([node for node, f in fleets.items() if f.takes("default", key, hop)])
    assert all(len(h) == 1 for h in hops[:MAX_HOPS]) and len({h[0] for h in hops[:MAX_HOPS]}) == MAX_HOPS
    assert hops[MAX_HOPS:] == [[], []]
    last = fleets[hops[MAX_HOPS - 1][0]]
    assert fleets[hops[0][0]].may_pass("default", key, 0) and not last.may_pass("default", key, MAX_HOPS - 1)


def test_only_nodes_serving_the_queue_take_its_notices_and_an_unknown_node_acts_alone():
    fleet = fleet_of("a", ["a", "b"], ("reports",))
    assert not any(fleet.takes("default", f"t{n}", 0) for n in range(50))  # serves nobody: a's view lists none
    assert fleet_of("c", ["a", "b"]).takes("default", "t1", 0)  # not in the fleet read yet
    assert not fleet_of("c", ["a", "b"]).takes("default", "t1", 1)
    assert Fleet("lonely").takes("default", "t1", 0)
    star = Fleet("s")
    star.update([Member("s", ("*",))])
    assert star.takes("anything", "t1", 0) and not star.may_pass("anything", "t1", 0)


def test_a_backlog_wakes_one_child_for_one_task_and_every_share_for_many():
    fleets = [fleet_of(node, NODES[:20]) for node in NODES[:20]]
    for epoch in range(1, 30):
        shares = [f.backlog_share("default", 1, epoch) for f in fleets]
        assert sorted(shares)[-2:] == [0, 1]
    # who helps moves on with each reading
    assert len({next(f.me for f in fleets if f.backlog_share("default", 1, e)) for e in range(1, 30)}) > 3
    assert [f.backlog_share("default", 1000, 1) for f in fleets] == [50] * 20
    assert sum(f.backlog_share("default", 7, 3) for f in fleets) == 7
    assert Fleet("alone").backlog_share("default", 5, 1) == 5


class FakeChild:
    def __init__(self) -> None:
        self.state = ChildState.IDLE
        self.woken_at = 0.0
        self.claimed_at = 0.0
        self.wakes = 0

    def claiming(self, now: float) -> bool:
        return self.woken_at > self.claimed_at and now - self.woken_at < 1.0

    def wake(self, now: float) -> None:
        self.woken_at = now
        self.wakes += 1


class FakePool:
    def __init__(self, children: list[FakeChild]) -> None:
        self.kids = children

    def serves(self, queue: str) -> bool:
        return queue == "default"

    def children(self) -> list[FakeChild]:
        return self.kids


class FakeListener:
    def __init__(self) -> None:
        self.sent: list[Notice] = []

    def send(self, notice: Notice) -> bool:
        self.sent.append(notice)
        return True


def wakeups(me: str, children: list[FakeChild], nodes: list[str]) -> Wakeups:
    return Wakeups([], selectors.DefaultSelector(), lambda: [FakePool(children)], time.monotonic, fleet_of(me, nodes))


def owner_of(key: str, nodes: list[str], hop: int = 0) -> str:
    return next(node for node in nodes if fleet_of(node, nodes).takes("default", key, hop))


def test_the_owner_wakes_one_child_others_do_nothing_and_a_busy_owner_passes_it_on():
    nodes = ["a", "b", "c", "d"]
    key = "task-1"
    owner = owner_of(key, nodes)
    other = next(n for n in nodes if n != owner)
    kids = [FakeChild(), FakeChild()]
    listener = FakeListener()
    wakeups(other, kids, nodes).route(listener, Notice("default", key), 10.0)  # type: ignore[arg-type]
    assert [k.wakes for k in kids] == [0, 0] and not listener.sent
    mine = wakeups(owner, kids, nodes)
    mine.route(listener, Notice("default", key), 10.0)  # type: ignore[arg-type]
    assert sorted(k.wakes for k in kids) == [0, 1] and mine.counts["notice"] == 1
    # Both children busy: passed on once, to hop 1, whose node is another.
    for kid in kids:
        kid.state = ChildState.BUSY
    mine.route(listener, Notice("default", key), 11.0)  # type: ignore[arg-type]
    assert listener.sent == [Notice("default", key, hop=1)] and mine.counts["passed"] == 1
    assert owner_of(key, nodes, 1) != owner
    # A notice for every node (no task id) wakes a child here whoever owns what.
    kids[0].state = ChildState.IDLE
    wakeups(other, kids, nodes).route(listener, Notice("default", None), 12.0)  # type: ignore[arg-type]
    assert kids[0].wakes == 2


def test_a_child_still_answering_a_wake_is_passed_over_for_the_next_node():
    nodes = ["a", "b", "c"]
    key = "task-9"
    owner = owner_of(key, nodes)
    kid = FakeChild()
    listener = FakeListener()
    mine = wakeups(owner, [kid], nodes)
    mine.route(listener, Notice("default", key), 5.0)  # type: ignore[arg-type]
    mine.route(listener, Notice("default", key), 5.1)  # type: ignore[arg-type]
    assert kid.wakes == 1 and listener.sent == [Notice("default", key, hop=1)]
    kid.claimed_at = 5.2  # it reported its claim: free for the next notice
    mine.route(listener, Notice("default", key), 5.3)  # type: ignore[arg-type]
    assert kid.wakes == 2


def test_the_backlog_wake_skips_children_woken_a_moment_ago_and_queues_held_back():
    kids = [FakeChild() for _ in range(3)]
    alone = wakeups("a", kids, ["a"])
    alone.backlog({"default": 2, "paused": 9}, ["paused"], 20.0)
    assert sorted(k.wakes for k in kids) == [0, 1, 1] and alone.counts["backlog"] == 2
    alone.backlog({"default": 5}, [], 20.1)
    assert sorted(k.wakes for k in kids) == [1, 1, 1]  # only the one not just woken


def test_notices_parse_with_their_task_id_hop_and_time():
    now = 1000.0
    assert parse_payload('{"q": "default", "id": "x", "at": 999}', now) == Notice("default", "x")
    assert parse_payload('{"q": "default", "id": "x", "hop": 2}', now) == Notice("default", "x", 2)
    assert parse_payload('{"q": "default", "at": 1005}', now) == Notice("default", None, 0, 1005.0)
    assert parse_payload('{"probe": "abc:3"}', now) == "abc:3"
    assert parse_payload("not json", now) is None and parse_payload('{"x": 1}', now) is None
    assert Notice("q", "i", 1).payload() == '{"q": "q", "id": "i", "hop": 1}'


def test_notices_count_as_arriving_only_while_the_latest_probe_came_back():
    listener = ReadyListener.__new__(ReadyListener)
    listener.conn, listener.trigger, listener.token = object(), True, "tok"
    listener.sent, listener.heard, listener.sent_at = 0, 0, float("-inf")
    assert not listener.confirmed(0.0)  # nothing heard yet
    listener.sent, listener.sent_at = 1, 0.0
    listener._heard("tok:1")
    listener._heard("other:9")  # another node's probe
    assert listener.heard == 1 and listener.confirmed(0.1)
    listener.sent, listener.sent_at = 2, 10.0  # the next probe is on its way
    assert listener.confirmed(10.0 + listen.PROBE_GRACE - 0.1)
    assert not listener.confirmed(10.0 + listen.PROBE_GRACE)  # it did not come back in time
    listener._heard("tok:2")
    assert listener.confirmed(30.0)
    listener.trigger = False
    assert not listener.confirmed(30.0)


def test_the_child_stretches_its_poll_when_told_and_goes_back_when_told():
    r, w = os.pipe()
    channel = ControlChannel(r, CurrentTask())
    try:

        def slept(seconds: float) -> float:
            began = time.monotonic()
            channel.sleep(seconds)
            return time.monotonic() - began

        assert slept(0.05) < 0.04 + 0.5
        control.send_poll(w, 0.4)
        assert slept(0.05) >= 0.4
        control.send_wake(w)
        assert slept(0.05) < 0.3  # a wake still cuts it short
        control.send_poll(w, None)
        assert slept(0.05) < 0.3
    finally:
        os.close(r)
        os.close(w)


def test_a_burst_passes_only_a_few_notices_a_second_on():
    nodes = ["a", "b", "c"]
    keys = [f"burst-{n}" for n in range(200)]
    owner = "a"
    mine = [k for k in keys if owner_of(k, nodes) == owner]
    kid = FakeChild()
    kid.state = ChildState.BUSY
    listener = FakeListener()
    busy = wakeups(owner, [kid], nodes)
    for key in mine:
        busy.route(listener, Notice("default", key), 50.0)  # type: ignore[arg-type]
    assert len(listener.sent) == 5 and busy.counts["passed"] == 5
    busy.route(listener, Notice("default", mine[0]), 51.0)  # a second later: tokens again
    assert len(listener.sent) == 6


def test_pooled_settings_that_break_under_transaction_pooling_are_named():
    from task_supervisor import pooling

    warnings = pooling._pooled_settings("default", {"OPTIONS": {"server_side_binding": True}})
    assert len(warnings) == 2
    assert "set DISABLE_SERVER_SIDE_CURSORS = True" in warnings[0] and "server_side_binding" in warnings[1]
    assert pooling._pooled_settings("default", {"DISABLE_SERVER_SIDE_CURSORS": True}) == []


class DyingListener:
    """A connected listener whose connection is lost when it passes a notice on."""

    def __init__(self, key: str) -> None:
        self.conn: object | None = object()
        self.retry_at = 0.0
        self.key = key

    def probe(self, now: float) -> bool:
        return False

    def warn_if_deaf(self, now: float) -> None:
        pass

    def due(self) -> list[Notice]:
        return [Notice("default", self.key)]

    def send(self, notice: Notice) -> bool:
        self.conn = None
        return False


def test_a_connection_lost_while_passing_a_notice_on_leaves_the_selector():
    nodes = ["a", "b", "c"]
    key = next(k for k in (f"k{n}" for n in range(100)) if owner_of(k, nodes) == "a")
    listener = DyingListener(key)
    busy = FakeChild()
    busy.state = ChildState.BUSY
    mine = wakeups("a", [busy], nodes)
    mine.listeners = [listener]  # type: ignore[list-item]
    r, w = os.pipe()
    try:
        mine.selector.register(r, selectors.EVENT_READ)
        mine.registered[listener] = r  # type: ignore[index]
        mine.tick(1.0)
        assert listener.conn is None and not mine.registered and not mine.selector.get_map()
    finally:
        os.close(r)
        os.close(w)


def test_a_probe_that_cannot_be_sent_ends_instant_pickup_at_once(monkeypatch):
    listener = ReadyListener.__new__(ReadyListener)
    listener.conn, listener.trigger, listener.token = object(), True, "tok"
    listener.sent, listener.heard, listener.sent_at, listener.next_probe = 1, 1, 0.0, 0.0
    listener.backend = type("Backend", (), {"db_alias": "nowhere"})()
    assert listener.confirmed(5.0)
    assert listener.probe(10.0)  # the alias does not exist: the send fails
    assert listener.sent == 2 and not listener.confirmed(10.0)
