"""Background loops must stop when cancelled, even if a library ate the cancellation.

A loop that catches ``Exception`` to survive store outages can also catch what a cancellation
became on its way through a client library: redis-py, cancelled in the middle of a command,
can surface it as a connection or timeout error, which the store turns into StoreUnavailable. The
task then keeps looping while ``Sidecar.stop()`` waits for it (seen as a test hanging in
teardown). The task's own cancel count is not lost, so the loop asks for it after each round.
"""

from __future__ import annotations

import asyncio


def raise_if_cancelling() -> None:
    """Raise CancelledError if the current task was asked to stop and that got swallowed."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
