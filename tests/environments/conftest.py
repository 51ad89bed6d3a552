"""Markers for the environment tests."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "network: needs the package index (PyPI); skipped when unreachable, except under CI=true where it fails",
    )
