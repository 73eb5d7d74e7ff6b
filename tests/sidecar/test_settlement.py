"""Settlement as plain functions: which failures may have been billed, what is charged for them,
and a settle above its hold."""

from __future__ import annotations

import logging

import aiohttp
import pytest

from openai_policy_devkit.sidecar import admin_get, async_client, running_sidecar, upstream_spec, write_policy
from openai_policy_sidecar.context import RequestContext
from openai_policy_sidecar.metrics import Metrics
from openai_policy_sidecar.pipeline import forward, settle
from openai_policy_sidecar.resilience import CircuitOpen, RetryEvent
from openai_policy_sidecar.resilience.timeouts import DeadlineExceeded
from openai_policy_store import Reservation


@pytest.mark.parametrize(
    ("error", "billed"),
    [
        (TimeoutError(), True),
        (DeadlineExceeded(1.0), True),
        (aiohttp.ServerDisconnectedError(), True),
        (aiohttp.ClientPayloadError("cut"), True),
        (ConnectionResetError(), True),
        (aiohttp.ConnectionTimeoutError(), False),  # never connected: nothing was sent
        (aiohttp.ClientConnectorError(None, OSError(111, "refused")), False),
        (CircuitOpen("http://upstream", 1.0), False),
    ],
)
def test_which_failures_may_have_been_billed(error, billed):
    assert forward.may_have_reached_upstream(error) is billed


def test_a_retried_attempt_that_may_have_been_billed_is_charged_its_worst_case():
    ctx = RequestContext(dry_run=False)
    ctx.budget.worst_micros, ctx.budget.cost_micros = 900, 120
    forward.on_retry(ctx, Metrics(), RetryEvent(1, 0.1, None, aiohttp.ServerDisconnectedError(), None))
    forward.on_retry(ctx, Metrics(), RetryEvent(2, 0.1, 503, None, None))  # a 5xx bills nothing
    assert ctx.budget.maybe_billed == 1
    assert settle.final_cost(ctx) == 120 + 900


def test_nothing_billed_releases():
    ctx = RequestContext(dry_run=False)
    ctx.budget.worst_micros = 900
    assert settle.final_cost(ctx) is None


def test_a_settle_above_its_hold_is_flagged(caplog):
    ctx = RequestContext(dry_run=False)
    ctx.budget.reservation = Reservation("r1", 500, ())
    ctx.budget.reserved_micros = 500
    with caplog.at_level(logging.ERROR):
        settle.check_over_reservation(ctx, 500)
        assert not ctx.budget.over_reserved
        settle.check_over_reservation(ctx, 501)
    assert ctx.budget.over_reserved and "above its reservation of 500" in caplog.text
    dry = RequestContext(dry_run=True)  # a dry-run stand-in holds nothing: not a bug
    dry.budget.reservation = Reservation("dryrun-r2", 0, ())
    settle.check_over_reservation(dry, 10)
    assert not dry.budget.over_reserved


def test_a_call_cut_off_mid_flight_is_charged_its_worst_case():
    ctx = RequestContext(dry_run=False)
    ctx.budget.worst_micros = 900
    ctx.budget.attempt_open = True  # the handler was cancelled while the body was on its way
    assert settle.final_cost(ctx) == 900
    answered = RequestContext(dry_run=False)
    answered.budget.worst_micros, answered.budget.answered = 900, True  # cancelled reading the answer
    assert settle.final_cost(answered) == 900
    metered = RequestContext(dry_run=False)
    metered.budget.worst_micros, metered.budget.answered, metered.budget.cost_micros = 900, True, 42
    assert settle.final_cost(metered) == 42


async def test_a_settle_above_its_hold_is_a_prometheus_counter_too(tmp_path, fake_openai):
    """An upstream reporting more input than the request could hold (a table or estimate bug):
    charged in full, and counted in openai_policy_over_reserved_total beside the status."""
    spec = upstream_spec(fake_openai, budget={"limits": [{"window": "hour", "usd": 5}]})
    async with running_sidecar(write_policy(tmp_path / "policy.yaml", spec)) as sidecar:
        fake_openai.add_fault(
            "usage", usage={"prompt_tokens": 900_000, "completion_tokens": 1, "total_tokens": 900_001}
        )
        client = async_client(sidecar.base_url, max_retries=0)
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        status, metrics = await admin_get(sidecar, "/metrics")
    assert status == 200
    assert 'openai_policy_over_reserved_total{model="gpt-4o-mini"} 1.0' in metrics
