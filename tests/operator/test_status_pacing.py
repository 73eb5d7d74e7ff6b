"""Status refreshes of all policies together are held to a rate (pacing.py): at 1,000 policies a
refresh of each every 3 s was 333 status writes a second, which the bench's API server could not
take (bench/operator_bench.py). Below the rate nothing changes; a failed refresh is retried at once."""

from __future__ import annotations

import pytest

from openai_policy_operator.pacing import StatusPacer, worth_writing


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ticks(pacer: StatusPacer, clock: Clock, refs: list[tuple[str, str]], seconds: float) -> int:
    """Every policy's timer ticking every ``pacer.interval`` for ``seconds``; the refreshes made."""
    made = 0
    for _ in range(int(seconds / pacer.interval)):
        clock.now += pacer.interval
        for ref in refs:
            if pacer.due(ref):
                pacer.refreshed(ref)
                made += 1
    return made


def refs(count: int) -> list[tuple[str, str]]:
    return [(f"team-{i % 50}", f"policy-{i}") for i in range(count)]


def test_few_policies_refresh_on_every_tick():
    clock = Clock()
    pacer = StatusPacer(3.0, 100.0, clock)
    assert ticks(pacer, clock, refs(300), 300) == 300 * 100  # 300 policies x 100 ticks


def test_many_policies_are_held_to_the_rate_and_none_waits_much_longer():
    clock = Clock()
    pacer = StatusPacer(3.0, 100.0, clock)
    policies = refs(1000)
    ticks(pacer, clock, policies, 30)  # every policy known
    made = ticks(pacer, clock, policies, 900)
    assert made / 900 <= 100 * 1.15  # ~111/s: every third tick, 9 s apart
    assert pacer.period() == 10.0
    # No policy waits more than one period (plus a tick) between two refreshes.
    last = {ref: clock.now for ref in policies}
    gaps: list[float] = []
    for _ in range(20):
        clock.now += 3.0
        for ref in policies:
            if pacer.due(ref):
                gaps.append(clock.now - last[ref])
                last[ref] = clock.now
                pacer.refreshed(ref)
    assert gaps and max(gaps) <= 12.0


def test_a_failed_refresh_is_tried_again_on_the_next_tick():
    clock = Clock()
    pacer = StatusPacer(3.0, 1.0, clock)  # a rate of 1/s: two policies are refreshed every 3 s
    a, b, c = ("ns", "a"), ("ns", "b"), ("ns", "c")
    for ref in (a, b, c):
        pacer.refreshed(ref)
    clock.now += 1.0
    assert not pacer.due(a)  # refreshed a second ago, period 3 s
    clock.now += 2.0
    assert pacer.due(a)
    # The refresh failed (not recorded): the next tick tries again.
    clock.now += 3.0
    assert pacer.due(a)


def test_a_deleted_policy_no_longer_stretches_the_others():
    clock = Clock()
    pacer = StatusPacer(3.0, 1.0, clock)
    for i in range(6):
        pacer.refreshed(("ns", str(i)))
    assert pacer.period() == 6.0
    for i in range(3):
        pacer.forget(("ns", str(i)))
    assert pacer.period() == 3.0


def test_nonsense_settings_are_refused():
    with pytest.raises(ValueError, match="positive"):
        StatusPacer(3.0, 0)


# ---- which changed statuses are written --------------------------------------------------------------


def status(report_time: str, requests: int = 5) -> dict:
    return {
        "observedGeneration": 1,
        "conditions": [{"type": "Ready", "status": "True", "reason": "Reconciled"}],
        "usage": {"requests": requests},
        "lastReportTime": report_time,
    }


def test_a_heartbeat_alone_is_written_once_it_moved_by_the_step():
    before = status("2026-11-30T08:00:00Z")
    assert not worth_writing(before, status("2026-11-30T08:00:03Z"), 10.0)
    assert not worth_writing(before, status("2026-11-30T08:00:09Z"), 10.0)
    assert worth_writing(before, status("2026-11-30T08:00:10Z"), 10.0)


def test_any_other_change_is_written_at_once():
    before = status("2026-11-30T08:00:00Z")
    assert worth_writing(before, status("2026-11-30T08:00:01Z", requests=6), 10.0)
    assert worth_writing(before, status("2026-11-30T08:00:00Z", requests=6), 10.0)
    assert worth_writing({}, status("2026-11-30T08:00:00Z"), 10.0)  # the first status
    first_report = {k: v for k, v in before.items() if k != "lastReportTime"}
    assert worth_writing(first_report, before, 10.0)  # the first heartbeat ever
    assert not worth_writing(before, dict(before), 10.0)  # nothing changed
    # Fields the operator does not own (kopf's) are not a reason to write.
    assert not worth_writing({**before, "kopf": {"progress": {}}}, before, 10.0)
