"""Who wakes a child for a new task when many nodes listen: one node, chosen by the task's id.

Every supervisor hears every NOTIFY. Were each to wake an idle child, one new task would bring
one claim attempt per node (a hundred nodes: ninety-nine find nothing). Instead each node ranks
the live nodes that serve the task's queue the same way (those that had an idle child at their
last heartbeat first, then by a hash of the task id and the node's name, rendezvous hashing), and
only the node at the notice's ``hop`` wakes one of its idle children. A node with no idle child
passes the notice on (``hop + 1``) to the next in the ranking, at most MAX_HOPS nodes in all: a
task brings at most one claim attempt from notices, and at most MAX_HOPS - 1 passes (one
``pg_notify`` each). A task none of them could take is left to the children that finish a task
and claim again, and to the backlog wake (``backlog_share``), which reads the queue depth.

The view is each node's own, read with its heartbeat: two nodes may briefly disagree on who is
live, which costs at worst one extra attempt or a task left to the backlog wake.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

MAX_HOPS = 3  # nodes a notice may reach: the owner and two passes


@dataclass(frozen=True, slots=True)
class Member:
    node: str
    queues: tuple[str, ...]  # "*" serves every queue
    idle: int  # idle worker children at its last heartbeat

    def serves(self, queue: str) -> bool:
        return queue in self.queues or "*" in self.queues


def score(key: str, node: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{key}\0{node}".encode(), digest_size=8).digest(), "big")


class Fleet:
    """The live nodes as this node last read them (empty: alone, or not known yet)."""

    def __init__(self, me: str) -> None:
        self.me = me
        self.members: list[Member] = []

    def update(self, members: Iterable[Member]) -> None:
        self.members = list(members)

    def ranking(self, queue: str, key: str) -> list[str]:
        """Nodes serving ``queue`` in the order they take a notice keyed ``key``."""
        serving = [m for m in self.members if m.serves(queue)]
        serving.sort(key=lambda m: (m.idle <= 0, -score(key, m.node)))
        return [m.node for m in serving]

    def takes(self, queue: str, key: str, hop: int) -> bool:
        """Is this node the one to act on a notice of ``queue`` keyed ``key`` at ``hop``?"""
        ranking = self.ranking(queue, key)
        if self.me not in ranking:
            return hop == 0  # not known to the fleet yet (no heartbeat read): act as if alone
        return hop < min(len(ranking), MAX_HOPS) and ranking[hop] == self.me

    def may_pass(self, queue: str, key: str, hop: int) -> bool:
        """May a notice this node could not serve go on to the next node?"""
        return hop + 1 < min(len(self.ranking(queue, key)), MAX_HOPS)

    def backlog_share(self, queue: str, depth: int, epoch: int) -> int:
        """How many of this node's idle children to wake for ``depth`` READY tasks nobody took.

        The nodes serving the queue are ranked by a hash of the queue and ``epoch`` (which moves on
        with each depth reading, so a node that cannot help is not asked twice in a row); the first
        ``depth`` of them each wake their share. One forgotten task brings one claim attempt, a
        backlog of a thousand wakes every idle child.
        """
        ranking = [m.node for m in self.members if m.serves(queue)]
        if self.me not in ranking:
            return depth  # alone, or not known yet
        ranking.sort(key=lambda node: -score(f"{queue}\0{epoch}", node))
        helpers = min(depth, len(ranking))
        if ranking.index(self.me) >= helpers:
            return 0
        return math.ceil(depth / helpers)
