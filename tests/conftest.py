"""Fixtures shared by every test live in the openai_policy_devkit package; this file only registers them."""

pytest_plugins = [
    "openai_policy_devkit.environment",
    "openai_policy_devkit.fake_openai_fixture",
    "openai_policy_devkit.redis_fixture",
    "openai_policy_devkit.control_plane_fixture",
]
