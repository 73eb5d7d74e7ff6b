"""The e2e tests use the same shared fixtures as tests/ (control plane, Redis, fake upstream).

tests/conftest.py registers them only for tests/; registering them again here is a no-op when
both directories are collected (pytest loads a plugin module once).
"""

pytest_plugins = [
    "openai_policy_devkit.environment",
    "openai_policy_devkit.fake_openai_fixture",
    "openai_policy_devkit.redis_fixture",
    "openai_policy_devkit.control_plane_fixture",
]
