"""Static security scan of infra/ with checkov, offline.

    python infra/scan.py            # install checkov on first use, then scan; exit 1 on a failed check
    python infra/scan.py --install  # only make sure checkov is installed (needs the package index once)

checkov pins its own dependencies tightly (an older `packaging`, `networkx`, `boto3`, ...), which would
fight the project's stack, so it lives in its own virtual environment under `.maap/checkov-venv`,
installed from `infra/requirements-scan.txt` and reinstalled when that file changes. The scan itself
touches no network (`--skip-download`): it covers `infra/*.bicep` with checkov's Bicep checks plus
this project's AmlCompute checks in `infra/checkov/`. A check is skipped only by a
`// checkov:skip=<ID>: <reason>` comment on the resource it concerns.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

INFRA_DIR = Path(__file__).resolve().parent
REPO_ROOT = INFRA_DIR.parent
REQUIREMENTS = INFRA_DIR / "requirements-scan.txt"
CUSTOM_CHECKS = INFRA_DIR / "checkov"
VENV_DIR = REPO_ROOT / ".maap" / "checkov-venv"
STAMP = VENV_DIR / ".maap-requirements.sha256"
SKIP_COMMENT = re.compile(r"//\s*checkov:skip=(CKV\w*_\d+)(?::\s*(.*))?")


class ScanError(Exception):
    """checkov could not be installed or run."""


def _venv_python() -> Path:
    return VENV_DIR / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _requirements_digest() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def ensure_checkov(quiet: bool = True) -> Path:
    """Create or refresh `.maap/checkov-venv` from infra/requirements-scan.txt; return its python."""
    python = _venv_python()
    digest = _requirements_digest()
    if python.exists() and STAMP.exists() and STAMP.read_text().strip() == digest:
        return python
    if not quiet:
        print(f"installing checkov into {VENV_DIR.relative_to(REPO_ROOT)} (once) ...", file=sys.stderr)
    venv.EnvBuilder(with_pip=True, clear=True).create(VENV_DIR)
    cmd = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", str(REQUIREMENTS)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise ScanError(f"could not install checkov from {REQUIREMENTS.relative_to(REPO_ROOT)} (needs the package index once):\n{tail}")
    STAMP.write_text(digest + "\n")
    return python


@dataclass
class ScanResult:
    passed: list[tuple[str, str]]  # (check id, resource)
    failed: list[dict]
    skipped: list[tuple[str, str, str]]  # (check id, resource, reason)
    parsing_errors: list[str]
    checkov_version: str

    @property
    def ok(self) -> bool:
        return not self.failed and not self.parsing_errors


def run_scan(directory: Path = INFRA_DIR) -> ScanResult:
    """Run checkov on the Bicep files in `directory`, offline, with our custom checks."""
    python = ensure_checkov()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BC_", "PRISMA_", "CKV_"))}
    env["CHECKOV_RUN_SCA_PACKAGE_SCAN_V2"] = "false"
    cmd = [
        str(python), "-m", "checkov.main", "--directory", str(directory), "--framework", "bicep",
        "--external-checks-dir", str(CUSTOM_CHECKS), "--skip-download", "--output", "json", "--compact",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(REPO_ROOT))
    # checkov exits 1 when a check fails; anything else non-zero is a crash.
    if proc.returncode not in (0, 1):
        raise ScanError(f"checkov crashed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise ScanError(f"checkov printed no JSON report: {proc.stdout[-500:]} {proc.stderr[-1500:]}") from None
    reports = data if isinstance(data, list) else [data]
    result = ScanResult([], [], [], [], "")
    for report in reports:
        if not isinstance(report, dict) or "results" not in report:
            continue  # "no files found" summaries
        results = report["results"]
        result.checkov_version = report.get("summary", {}).get("checkov_version", "")
        result.passed += [(c["check_id"], c["resource"]) for c in results.get("passed_checks", [])]
        result.failed += results.get("failed_checks", [])
        result.skipped += [
            (c["check_id"], c["resource"], ((c.get("check_result") or {}).get("suppress_comment") or "").strip())
            for c in results.get("skipped_checks", [])
        ]
        result.parsing_errors += results.get("parsing_errors", [])
    if not result.passed and not result.failed:
        raise ScanError(f"checkov scanned nothing in {directory}")
    return result


def suppressions(directory: Path = INFRA_DIR) -> list[tuple[str, int, str, str]]:
    """Every `checkov:skip` comment in the Bicep files: (file, line, check id, reason)."""
    found = []
    for path in sorted(directory.glob("*.bicep")):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            match = SKIP_COMMENT.search(line)
            if match:
                found.append((path.name, number, match.group(1), (match.group(2) or "").strip()))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Static security scan of infra/ with checkov (offline).")
    parser.add_argument("--install", action="store_true", help="only install checkov into .maap/checkov-venv")
    args = parser.parse_args(argv)
    try:
        if args.install:
            print(f"checkov ready: {ensure_checkov(quiet=False)}")
            return 0
        ensure_checkov(quiet=False)
        result = run_scan()
    except ScanError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for check in result.failed:
        where = f"{check.get('file_path', '').lstrip('/')}:{'-'.join(map(str, check.get('file_line_range', [])))}"
        print(f"FAILED {check['check_id']} {check['resource']} ({where}): {check.get('check_name', '')}")
    for error in result.parsing_errors:
        print(f"PARSE ERROR {error}")
    for check_id, resource, reason in result.skipped:
        print(f"skipped {check_id} {resource}: {reason}")
    print(
        f"checkov {result.checkov_version}: {len(result.passed)} passed, {len(result.failed)} failed, "
        f"{len(result.skipped)} skipped (each with its reason in the template)"
    )
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
