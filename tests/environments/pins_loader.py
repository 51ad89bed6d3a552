"""Import environments/pins.py (a script folder, not a package) once for the environment tests."""

from __future__ import annotations

from tests.helpers import REPO_ROOT, load_script


def load_pins():
    return load_script("maap_env_pins", REPO_ROOT / "environments" / "pins.py")
