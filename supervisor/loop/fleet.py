"""Who wakes a child for a new task when many nodes listen: one node, chosen by the task's id.

Every supervisor hears every NOTIFY. Were each to wake an idle child, one new task would bring
one claim attempt per node (a hundred nodes: ninety-nine find nothing). Instead each node ranks
the live nodes that serve the task's queue the same way (by a hash of the task id and the node's
name: rendezvous hashing), and only the node at the notice's ``hop`` wakes one of its idle
children. The ranking uses nothing that changes from one heartbeat to the next (an idle count
would: two nodes reading it at different moments would each think themselves first). A node
with no idle child passes the notice on (``hop + 1``) to the next in the ranking, at most
MAX_HOPS nodes in all: a task brings at most one claim attempt from notices, and at most
MAX_HOPS - 1 passes (one ``pg_notify`` each; a node passes at most a few a second,
loop/wakeups.py). A task none of them could take is left to the children that finish a task and
claim again, and to the backlog wake (``backlog_share``), which reads the queue depth.

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

    def serves(self, queue: str) -> bool:
        return queue in self.queues or "*" in self.queues


MASK64 = (1 << 64) - 1


def digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def mix(value: int) -> int:
    """splitmix64's finaliser: a key's digest and a node's, combined into a well-spread score."""
    value = (value ^ (value >> 30)) * 0xBF58476D1CE4E5B9 & MASK64
    value = (value ^ (value >> 27)) * 0x94D049BB133111EB & MASK64
    return value ^ (value >> 31)


class Fleet:
    """The live nodes as this node last read them (empty: alone, or not known yet)."""

    def __init__(self, me: str) -> None:
        self.me = me
        self.members: list[Member] = []
        self.digests: dict[str, int] = {}
        self.known = False  # this node is among the members read

    def update(self, members: Iterable[Member]) -> None:
        self.members = list(members)
        self.digests = {m.node: digest(m.node) for m in self.members}
        self.known = self.me in self.digests

    def ranking(self, queue: str, key: str) -> list[str]:
        """Nodes serving ``queue`` in the order they take a notice keyed ``key``."""
        mine = digest(key)
        serving = [m.node for m in self.members if m.serves(queue)]
        serving.sort(key=lambda node: -mix(mine ^ self.digests[node]))
        return serving

    def takes(self, queue: str, key: str, hop: int) -> bool:
        """Is this node the one to act on a notice of ``queue`` keyed ``key`` at ``hop``?"""
        if not self.known:
            return hop == 0  # alone, or not read with the fleet yet: act as if alone
        ranking = self.ranking(queue, key)
        return hop < min(len(ranking), MAX_HOPS) and self.me in ranking and ranking[hop] == self.me

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
        if not self.known:
            return depth  # alone, or not read with the fleet yet
        ranking = self.ranking(queue, f"{queue}\0{epoch}")
        if self.me not in ranking:
            return 0
        helpers = min(depth, len(ranking))
        if ranking.index(self.me) >= helpers:
            return 0
        return math.ceil(depth / helpers)
