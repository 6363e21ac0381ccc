"""The relay's scan policy on its own: no process, no event loop, no file system.

Each test drives :class:`ScanPolicy` as the relay does — ``plan(now)``, run the scan (here:
make up its result), ``scanned(plan, result, now)`` — over real peer state, with ``now``
moved by hand.
"""

from __future__ import annotations

from typing import Any

import pytest

from dropr.relay.backoff import Backoff
from dropr.relay.batches import Entry
from dropr.relay.config import RelayConfig
from dropr.relay.delivery import Peer
from dropr.relay.policy import IDLE_SCAN_SHARE, INLINE_SCAN_SECONDS, Scanned, ScanPlan, ScanPolicy

LIMIT = 100
LIMIT_MAX = 450
RESCAN = 1.0
QUICK = INLINE_SCAN_SECONDS / 10
SLOW = INLINE_SCAN_SECONDS * 10


class Relay:
    """A policy over peers the test adds and a held set it fills."""

    def __init__(self, **settings: Any) -> None:
        defaults = {"scan_limit": LIMIT, "scan_limit_max": LIMIT_MAX, "rescan_seconds": RESCAN}
        config = RelayConfig(spool="unused", **{**defaults, **settings})
        self.peers: dict[str, Peer] = {}
        self.held: set[str] = set()
        self.policy = ScanPolicy(config, self.peers, self.held)
        self.now = 1000.0

    def peer(self, field: str) -> Peer:
        peer = Peer(field, f"http://{field}/", None, "", Backoff(0.1, 1.0))
        self.peers[field] = peer
        return peer

    def plan(self) -> ScanPlan:
        plan = self.policy.plan(self.now)
        assert plan is not None
        return plan

    def idle(self) -> bool:
        return self.policy.plan(self.now) is None

    def answer(
        self, plan: ScanPlan, names: list[str], seconds: float = QUICK, surveyed_to: str | None = None
    ) -> list[str]:
        return self.policy.scanned(plan, Scanned(names, seconds, surveyed_to), self.now)

    def scan(self, count: int, seconds: float = QUICK) -> tuple[ScanPlan, list[str]]:
        """Plans a scan from the head and answers it with ``count`` names."""
        plan = self.plan()
        assert plan.survey_after is None
        return plan, self.answer(plan, names(count), seconds)

    def scan_full(self) -> ScanPlan:
        """Plans a scan from the head and answers it with as many names as it may take."""
        plan = self.plan()
        self.answer(plan, names(plan.limit))
        return plan

    def settle(self) -> None:
        """Answers the first, full, scan with nothing: from then on news starts a scan."""
        self.scan(0)
        assert self.idle()


def names(count: int, prefix: str = "n") -> list[str]:
    return [f"{prefix}{i:06d}" for i in range(count)]


def batch(count: int) -> list[Entry]:
    return [Entry(name, f"{i:030x}", 5, "c", 1, 0) for i, name in enumerate(names(count, "b"))]


# -- the window --------------------------------------------------------------------------


def test_the_window_starts_at_scan_limit_and_doubles_on_each_full_scan_up_to_the_cap() -> None:
    relay = Relay()
    relay.peer("a")
    limits = [relay.scan_full().limit for _ in range(5)]
    assert limits == [LIMIT, 2 * LIMIT, 4 * LIMIT, LIMIT_MAX, LIMIT_MAX]
    assert relay.policy.deep and relay.policy.window == LIMIT_MAX


def test_a_scan_finding_much_less_than_the_window_sets_it_back_to_scan_limit() -> None:
    relay = Relay()
    relay.peer("a")
    relay.scan_full()
    relay.scan_full()
    assert relay.policy.window == 4 * LIMIT
    relay.scan(LIMIT)  # a quarter of the window: it stays
    assert relay.policy.window == 4 * LIMIT and not relay.policy.deep
    relay.policy.rescan()
    relay.scan(LIMIT - 1)
    assert relay.policy.window == LIMIT and not relay.policy.deep


def test_a_scan_limit_max_below_scan_limit_leaves_the_window_at_scan_limit() -> None:
    relay = Relay(scan_limit_max=10)
    relay.peer("a")
    relay.scan_full()
    assert relay.policy.deep and relay.policy.window == LIMIT


def test_the_limit_leaves_room_for_held_names_and_only_fresh_names_come_back() -> None:
    relay = Relay()
    relay.peer("a")
    relay.held.update({"n000001", "n000003"})
    plan = relay.plan()
    assert plan.limit == LIMIT + 2
    fresh = relay.policy.scanned(plan, Scanned(names(5), QUICK, None), relay.now, finished={"n000004"})
    assert fresh == ["n000000", "n000002"]


def test_the_window_goes_back_when_the_names_found_are_all_held() -> None:
    relay = Relay()
    relay.peer("a")
    relay.scan_full()
    assert relay.policy.window == 2 * LIMIT
    relay.held.update(names(LIMIT))
    plan, fresh = relay.scan(LIMIT)
    assert plan.limit == 3 * LIMIT and fresh == []
    assert relay.policy.window == LIMIT


# -- which peers, and when ---------------------------------------------------------------


def test_the_first_plan_is_a_full_scan_from_the_head_run_inline() -> None:
    relay = Relay()
    plan = relay.plan()
    assert plan.full and plan.survey_after is None and plan.peers == [] and plan.skip == []
    assert plan.inline and plan.limit == LIMIT and relay.policy.scanning


def test_one_scan_at_a_time() -> None:
    relay = Relay()
    peer = relay.peer("a")
    plan = relay.plan()
    relay.policy.rescan()
    peer.news = True
    assert relay.idle() and relay.policy.scanning
    relay.answer(plan, [])
    assert not relay.policy.scanning
    assert relay.plan().peers == [peer]


def test_only_peers_with_news_are_scanned_for_between_rescans() -> None:
    relay = Relay()
    a, b = relay.peer("a"), relay.peer("b")
    plan = relay.plan()
    assert plan.peers == [a, b] and plan.skip == []
    assert not a.news and not b.news  # cleared as the scan is planned
    relay.answer(plan, [])
    assert relay.idle()
    b.news = True
    plan = relay.plan()
    assert not plan.full and plan.peers == [b] and plan.skip == ["a"] and plan.survey_after is None
    assert not b.news


def test_news_during_a_scan_is_kept_for_the_next() -> None:
    relay = Relay()
    peer = relay.peer("a")
    plan = relay.plan()
    peer.news = True  # a put while the scan reads
    relay.answer(plan, names(3))
    assert peer.news
    assert relay.plan().peers == [peer]


def test_a_full_scan_keeps_every_scanned_peer_s_news_and_the_rescan() -> None:
    relay = Relay()
    a, b = relay.peer("a"), relay.peer("b")
    b.pending.append(batch(LIMIT + 1))
    plan = relay.scan_full()
    assert plan.peers == [a] and a.news and b.news
    plan = relay.plan()
    assert plan.full and plan.peers == [a] and plan.skip == ["b"]


def test_a_full_scan_for_news_is_followed_by_another_but_not_a_rescan() -> None:
    relay = Relay()
    a, b = relay.peer("a"), relay.peer("b")
    relay.settle()
    a.news = True
    plan = relay.scan_full()
    assert not plan.full and a.news and not b.news
    plan = relay.plan()
    assert not plan.full and plan.peers == [a] and plan.skip == ["b"]


def test_a_rescan_asked_for_during_a_full_scan_for_news_is_kept() -> None:
    relay = Relay()
    a = relay.peer("a")
    relay.settle()
    a.news = True
    plan = relay.plan()
    relay.policy.rescan()  # events lost while the scan reads
    relay.answer(plan, names(plan.limit))
    assert relay.plan().full


def test_the_rescan_comes_every_rescan_seconds_and_on_request() -> None:
    relay = Relay()
    relay.peer("a")
    relay.settle()
    assert relay.policy.due == relay.now + RESCAN
    relay.now += RESCAN / 2
    assert relay.idle() and relay.policy.due == relay.now + RESCAN / 2
    relay.now += RESCAN / 2
    plan, _ = relay.scan(0)
    assert plan.full and relay.policy.due == relay.now + RESCAN
    assert relay.idle()
    relay.policy.rescan()
    assert relay.plan().full


def test_the_rescan_timer_runs_on_while_a_scan_is_out() -> None:
    relay = Relay()
    relay.peer("a")
    plan = relay.plan()
    relay.now += RESCAN
    assert relay.idle() and relay.policy.due == relay.now + RESCAN  # no busy wake-up meanwhile
    relay.answer(plan, [])
    assert relay.plan().full


@pytest.mark.parametrize("state", ["backing off", "given up", "batches waiting", "every slot busy"])
def test_a_peer_is_left_out_while(state: str) -> None:
    relay = Relay(parallel=2)
    peer, other = relay.peer("a"), relay.peer("b")
    if state == "backing off":
        peer.backoff.fail(now=relay.now)
    elif state == "given up":
        peer.gave_up = True
    elif state == "batches waiting":
        peer.pending.append(batch(1))
    else:
        peer.inflight = 2
    plan = relay.plan()
    assert plan.full and plan.peers == [other] and plan.skip == ["a"]
    assert peer.news  # left for when it is eligible again


def test_a_peer_with_a_free_slot_and_nothing_waiting_is_scanned_for() -> None:
    relay = Relay(parallel=2)
    peer = relay.peer("a")
    peer.inflight = 1
    assert relay.plan().peers == [peer]


def test_a_peer_is_scanned_for_again_once_its_backoff_is_over() -> None:
    relay = Relay()
    peer = relay.peer("a")
    delay = peer.backoff.fail(now=relay.now)
    plan = relay.plan()
    assert plan.peers == [] and plan.skip == ["a"]
    relay.answer(plan, [], surveyed_to="")
    relay.now += delay
    assert relay.plan().peers == [peer]


def test_while_the_queue_is_deep_a_peer_is_scanned_for_ahead_when_half_a_window_is_left() -> None:
    relay = Relay()
    peer = relay.peer("a")
    relay.scan_full()
    assert relay.policy.deep and relay.policy.window == 2 * LIMIT
    peer.inflight = 1  # its only slot busy
    peer.pending.extend([batch(LIMIT // 2), batch(LIMIT // 2 + 1)])
    plan = relay.plan()
    assert plan.peers == [] and plan.skip == ["a"]  # more than half a window waiting
    relay.answer(plan, [], surveyed_to="")
    peer.pending.pop()
    peer.pending.append(batch(LIMIT // 2))  # half a window
    plan, _ = relay.scan(0)
    assert plan.peers == [peer] and not relay.policy.deep
    peer.news = True
    assert relay.idle()  # shallow again: batches waiting leave it out


# -- surveys -----------------------------------------------------------------------------


def test_when_every_known_peer_is_left_out_surveys_go_slice_by_slice_and_start_over() -> None:
    relay = Relay()
    relay.peer("a").pending.append(batch(1))
    plan = relay.plan()
    assert plan.full and plan.peers == [] and plan.skip == ["a"]
    assert plan.survey_after == "" and not plan.inline
    found = relay.answer(plan, ["x1", "x2"], seconds=0.01, surveyed_to="b3")
    assert found == ["x1", "x2"]  # every name, for the relay to meet their peers
    quiet = 0.01 / IDLE_SCAN_SHARE
    assert relay.idle() and relay.policy.due == pytest.approx(relay.now + quiet)
    relay.now += quiet
    plan = relay.plan()
    assert plan.survey_after == "b3" and plan.skip == ["a"]
    relay.answer(plan, [], seconds=0.01, surveyed_to="")  # that was the end of the queue
    relay.now += quiet
    assert relay.idle()  # no more surveys until the next rescan
    relay.now += RESCAN
    plan = relay.plan()
    assert plan.full and plan.survey_after == ""  # from the first bucket again


def test_surveys_take_at_most_their_share_of_the_time_but_never_hold_back_news() -> None:
    relay = Relay()
    relay.peer("a").pending.append(batch(1))
    relay.answer(relay.plan(), [], seconds=0.02, surveyed_to="b1")
    relay.now += 0.02 / IDLE_SCAN_SHARE * 0.99
    assert relay.idle()  # the next survey waits
    b = relay.peer("b")
    plan = relay.plan()
    assert plan.peers == [b] and plan.skip == ["a"] and plan.survey_after is None


def test_no_survey_while_some_peer_is_scanned_for_or_none_is_known() -> None:
    relay = Relay()
    plan = relay.plan()
    assert plan.survey_after is None  # no peer known: the scan from the head finds them all
    relay.answer(plan, [])
    a = relay.peer("a")
    relay.peer("b").pending.append(batch(1))
    plan = relay.plan()
    assert plan.peers == [a] and plan.skip == ["b"] and plan.survey_after is None


def test_a_deep_queue_asks_for_a_survey_when_every_peer_is_then_left_out() -> None:
    relay = Relay()
    a = relay.peer("a")
    relay.settle()
    a.news = True
    relay.scan_full()
    a.pending.append(batch(2 * LIMIT))
    plan = relay.plan()
    assert not plan.full and plan.survey_after == ""


# -- inline or threaded ------------------------------------------------------------------


def test_a_scan_slower_than_inline_scan_seconds_sends_the_next_to_the_scan_thread() -> None:
    relay = Relay()
    relay.peer("a").pending.append(batch(1))
    relay.peer("b")
    plan, _ = relay.scan(0, seconds=SLOW)
    assert plan.inline
    relay.policy.rescan()
    plan, _ = relay.scan(0)
    assert not plan.inline
    relay.policy.rescan()
    assert relay.plan().inline


def test_a_slow_survey_leaves_scans_from_the_head_inline() -> None:
    relay = Relay()
    a = relay.peer("a")
    a.inflight = 1
    relay.answer(relay.plan(), [], seconds=SLOW, surveyed_to="")
    a.inflight = 0
    assert relay.plan().inline


# -- done --------------------------------------------------------------------------------


def test_drained_once_nothing_is_left_to_read_or_to_send() -> None:
    relay = Relay()
    peer = relay.peer("a")
    now = relay.now
    assert not relay.policy.drained(now)  # the first rescan is still to come
    plan = relay.plan()
    assert not relay.policy.drained(now)  # and then under way
    relay.answer(plan, [])
    assert relay.policy.drained(now)
    peer.news = True
    assert not relay.policy.drained(now)
    peer.news = False
    peer.pending.append(batch(1))
    assert not relay.policy.drained(now)
    peer.pending.clear()
    peer.backoff.fail(now=now)
    assert not relay.policy.drained(now)
    peer.gave_up = True
    peer.news = True
    assert relay.policy.drained(now)
