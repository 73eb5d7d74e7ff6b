"""The e2e tests use the same shared fixtures as tests/ (control plane, Redis, fake upstream).

tests/conftest.py registers them only for tests/; registering them again here is a no-op when
both directories are collected (pytest loads a plugin module once).
"""

pytest_plugins = [
    "tests.support.environment",
    "tests.support.fake_openai_fixture",
    "tests.support.redis_fixture",
    "tests.support.control_plane_fixture",
]
