"""pytest fixture `fake_openai`: a fresh fake OpenAI server per test, on a free loopback port.

It runs in a background thread with its own event loop, so both sync tests (sync SDK clients
block the test thread) and async tests (their own loop stays free) can call it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from openai_policy_devkit.fake_openai import FakeOpenAI


@pytest.fixture
def fake_openai(tiktoken_cache_dir: Path) -> Iterator[FakeOpenAI]:
    # tiktoken_cache_dir: usage is counted with tiktoken, which must find its files offline.
    with FakeOpenAI.in_thread(host="127.0.0.1", port=0) as fake:
        yield fake
