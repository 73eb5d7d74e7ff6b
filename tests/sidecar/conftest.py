"""Fixtures of the sidecar tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from openai_policy_devkit.sidecar import close_all_async_clients


@pytest.fixture(autouse=True)
async def close_async_clients() -> AsyncIterator[None]:
    """Close every ``async_client`` a test made, on the test's own loop (not by GC on a closed one)."""
    yield
    await close_all_async_clients()
