"""Argument parsing shared by the component entry scripts.

Defaults live in the component YAML only: parsers built here declare no defaults, every
non-optional YAML input is a required flag, and optional inputs (inside `$[[...]]`) default
to None. `tests/static/test_spec_parser_agreement.py` proves each parser matches its YAML.
"""

from __future__ import annotations

import argparse
from pathlib import Path


class StrictParser(argparse.ArgumentParser):
    """argparse that refuses abbreviations, so a flag must match a YAML input name exactly."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def command_parser(prog: str, description: str, doc: str) -> argparse.ArgumentParser:
    """The parser header of a repository command (submit.py, deploy.py, ...): its module docstring after the
    first paragraph is the --help epilog, as written; no abbreviated flags."""
    return argparse.ArgumentParser(
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=doc.split("\n\n", 1)[1],
        allow_abbrev=False,
    )


def str2bool(value: str) -> bool:
    """Parse Azure ML's rendering of a boolean input ("True"/"False") and common spellings."""
    lowered = str(value).strip().lower()
    if lowered in {"true", "1", "yes"}:
        return True
    if lowered in {"false", "0", "no"}:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


def existing_path(value: str) -> Path:
    path = Path(value)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"path does not exist: {value}")
    return path


def bounded(kind: type, low: float | None = None, high: float | None = None):
    """An argparse type that enforces the YAML `min`/`max` of a numeric input."""

    def convert(value: str):
        try:
            number = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {value!r}") from None
        if low is not None and number < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {number}")
        if high is not None and number > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {number}")
        return number

    convert.__name__ = kind.__name__
    return convert
