"""Fixtures shared by every test live in tests/support; this file only registers them."""

pytest_plugins = [
    "tests.support.environment",
    "tests.support.fake_openai_fixture",
    "tests.support.redis_fixture",
    "tests.support.control_plane_fixture",
]
