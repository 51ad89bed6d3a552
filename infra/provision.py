"""Create or update the maap-finetune compute clusters in an existing Azure ML workspace.

For people without the Azure CLI; the same clusters as `az ml compute create --file
infra/compute/<name>.yaml` and as infra/main.bicep. Idempotent: a cluster that already matches is
left alone, one whose scale settings differ is updated, one whose VM size, tier or SSH access
differ is reported (Azure cannot change those on an existing cluster) and nothing is changed.

    python infra/provision.py                                # workspace from config.json
    python infra/provision.py --subscription <id> --resource-group <rg> --workspace <ws>
    python infra/provision.py --tier low_priority --gpu-max-instances 4 --dry-run
    python infra/provision.py --only gpu --gpu-size Standard_NC40ads_H100_v5

Cluster definitions: infra/compute/gpu-cluster.yaml and cpu-cluster.yaml; flags override them.
Credentials: DefaultAzureCredential (az login, managed identity, AZURE_CLIENT_ID/...).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

INFRA_DIR = Path(__file__).resolve().parent
REPO_ROOT = INFRA_DIR.parent
if str(REPO_ROOT) not in sys.path:  # run as a script: make `pipelines` importable
    sys.path.insert(0, str(REPO_ROOT))

CLUSTER_FILES = {"gpu": INFRA_DIR / "compute" / "gpu-cluster.yaml", "cpu": INFRA_DIR / "compute" / "cpu-cluster.yaml"}
# Azure updates only these on an existing AmlCompute cluster.
UPDATABLE = ("min_instances", "max_instances", "idle_time_before_scale_down", "identity")
IMMUTABLE = ("size", "tier", "ssh_public_access_enabled")


def build_parser() -> argparse.ArgumentParser:
    from maap_finetune.common.cli import command_parser

    parser = command_parser("provision.py", "Create or update the maap-finetune GPU and CPU compute clusters (idempotent).", __doc__)
    parser.add_argument("--only", choices=sorted(CLUSTER_FILES), help="provision only this cluster")
    parser.add_argument("--dry-run", action="store_true", help="say what would be created or updated; change nothing")
    clusters = parser.add_argument_group("cluster settings (default: infra/compute/*.yaml)")
    clusters.add_argument("--tier", choices=["dedicated", "low_priority"], help="node tier for both clusters")
    for kind in CLUSTER_FILES:
        clusters.add_argument(f"--{kind}-name", help=f"name of the {kind.upper()} cluster")
        clusters.add_argument(f"--{kind}-size", help=f"VM size of the {kind.upper()} cluster")
        clusters.add_argument(f"--{kind}-max-instances", type=_positive_int, metavar="N", help=f"most {kind.upper()} nodes")
    clusters.add_argument(
        "--idle-seconds", type=_positive_int, metavar="S", help="seconds an idle node waits before it is released (both clusters)"
    )
    from pipelines.azure_ml import add_workspace_arguments

    add_workspace_arguments(parser.add_argument_group("workspace"))
    return parser


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def desired_clusters(args: argparse.Namespace) -> list:
    """The AmlCompute objects to provision: the YAMLs with the flags applied."""
    from azure.ai.ml import load_compute

    clusters = []
    for kind, path in CLUSTER_FILES.items():
        if args.only and kind != args.only:
            continue
        compute = load_compute(path)
        compute.name = getattr(args, f"{kind}_name") or compute.name
        compute.size = getattr(args, f"{kind}_size") or compute.size
        compute.max_instances = getattr(args, f"{kind}_max_instances") or compute.max_instances
        compute.tier = args.tier or compute.tier
        if args.idle_seconds:
            compute.idle_time_before_scale_down = args.idle_seconds
        clusters.append(compute)
    return clusters


def _value(compute, field: str):
    value = getattr(compute, field, None)
    if field == "identity":
        return str(getattr(value, "type", None) or "none").lower()
    if field in ("size", "tier") and value is not None:
        return str(value).lower()
    if field == "idle_time_before_scale_down" and value is not None:
        return int(value)  # read back from Azure as float seconds (PT30M -> 1800.0)
    return value


def differences(existing, desired, fields: Sequence[str]) -> list[tuple[str, object, object]]:
    diffs = []
    for field in fields:
        have, want = _value(existing, field), _value(desired, field)
        if want is not None and have != want:
            diffs.append((field, have, want))
    return diffs


@dataclass
class Outcome:
    name: str
    action: str  # created | updated | unchanged | would create | would update
    detail: str = ""


def provision_cluster(ml_client, desired, dry_run: bool) -> Outcome:
    from azure.core.exceptions import ResourceNotFoundError

    from maap_finetune.common.errors import UserError

    try:
        existing = ml_client.compute.get(desired.name)
    except ResourceNotFoundError:
        existing = None
    if existing is None:
        summary = (
            f"{desired.size}, {desired.tier}, {desired.min_instances}-{desired.max_instances} nodes, "
            f"idle scale-down after {desired.idle_time_before_scale_down}s, no public SSH"
        )
        if dry_run:
            return Outcome(desired.name, "would create", summary)
        ml_client.compute.begin_create_or_update(desired).result()
        return Outcome(desired.name, "created", summary)

    kind = str(getattr(existing, "type", "")).lower()
    if kind != "amlcompute":
        raise UserError(
            f"compute {desired.name!r} already exists in the workspace as a {kind or 'compute of unknown type'}, "
            f"not a compute cluster; pick another name (--gpu-name/--cpu-name)"
        )
    fixed = differences(existing, desired, IMMUTABLE)
    if fixed:
        changes = "; ".join(f"{field} is {have}, wanted {want}" for field, have, want in fixed)
        raise UserError(
            f"cluster {desired.name!r} exists with different settings Azure cannot change in place ({changes}): "
            f"delete it (`az ml compute delete --name {desired.name}`) or choose another name"
        )
    diffs = differences(existing, desired, UPDATABLE)
    if not diffs:
        return Outcome(desired.name, "unchanged")
    detail = ", ".join(f"{field} {have} -> {want}" for field, have, want in diffs)
    if dry_run:
        return Outcome(desired.name, "would update", detail)
    ml_client.compute.begin_update(desired).result()
    return Outcome(desired.name, "updated", detail)


def run(args: argparse.Namespace) -> list[Outcome]:
    from pipelines.azure_ml import azure_errors, connect

    clusters = desired_clusters(args)
    ml_client = connect(args)
    outcomes = []
    for compute in clusters:
        with azure_errors(f"provisioning compute cluster {compute.name!r}"):
            outcomes.append(provision_cluster(ml_client, compute, args.dry_run))
    return outcomes


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from maap_finetune.common.errors import USER_ERROR_EXIT_CODE, UserError

    logging.getLogger("azure").setLevel(logging.ERROR)
    try:
        outcomes = run(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    for outcome in outcomes:
        print(f"{outcome.name}: {outcome.action}" + (f" ({outcome.detail})" if outcome.detail else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
