"""Publish the environments, the components and the pipeline to Azure ML, with explicit versions.

    python pipelines/publish.py --dry-run                     # list what would be published (offline)
    python pipelines/publish.py                               # workspace from config.json
    python pipelines/publish.py --subscription <id> --resource-group <rg> --workspace <ws>
    python pipelines/publish.py --registry <registry-name>    # share through an Azure ML registry

What is published, in order:
  1. environments/<name>/environment.yaml      as environment <name>:<version> (built by Azure ML)
  2. components/<step>/spec.yaml               as command component <name>:<version>, its
     environment pointing at the published one (azureml:<env>:<version>, or the registry's URI)
  3. the pipeline of pipelines/definition/build.py as pipeline component maap_finetune_pipeline:<version>
     (the project version unless --pipeline-version), its steps pointing at the published components.

Afterwards data scientists find them in studio (Designer → Custom components, Assets → Components,
Environments) and with `az ml component list` / `az ml environment list`.

A version is never overwritten with different content: each asset carries the tag
maap.content_sha256 (its YAML after the reference rewrite plus every file of its code or build
context). An existing version with the same hash is left alone; one with another hash, or without
the tag, stops the publish before anything is created: bump the version in the YAML.

Workspace: --subscription/--resource-group/--workspace, else AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP
and AZUREML_WORKSPACE_NAME, else config.json (or --config); --registry NAME publishes to a registry.
Credentials: DefaultAzureCredential (az login, managed identity, AZURE_CLIENT_ID/...).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `pipelines` and the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.definition.assets import HASH_TAG, Asset, Target, all_assets, prepare  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    from maap_finetune.common.cli import command_parser

    parser = command_parser("publish.py", "Publish maap-finetune's environments, components and pipeline component to Azure ML.", __doc__)
    parser.add_argument("--dry-run", action="store_true", help="list what would be published; create nothing")
    parser.add_argument(
        "--pipeline-version", help="version of the pipeline component (default: the project version in pyproject.toml)"
    )
    target = parser.add_argument_group("where to publish (a workspace, or a registry with --registry)")
    target.add_argument("--registry", help="name of an Azure ML registry to publish to instead of a workspace")
    from pipelines.azure_ml import add_workspace_arguments

    add_workspace_arguments(target)
    return parser


# ------------------------------------------------------------------------------------------
# What gets published


# ------------------------------------------------------------------------------------------
# Talking to Azure ML


def _operations(ml_client, asset: Asset):
    return ml_client.environments if asset.kind == "environment" else ml_client.components


def check_published(ml_client, assets: list[Asset]) -> None:
    """Set each asset's status: create, unchanged or conflict (read-only calls)."""
    from azure.core.exceptions import ResourceNotFoundError

    for asset in assets:
        try:
            existing = _operations(ml_client, asset).get(name=asset.name, version=asset.version)
        except ResourceNotFoundError:
            asset.status = "create"
            continue
        published = (getattr(existing, "tags", None) or {}).get(HASH_TAG)
        if published == asset.sha256:
            asset.status, asset.detail = "unchanged", "already published with the same content"
        elif published is None:
            asset.status, asset.detail = "conflict", f"exists without the {HASH_TAG} tag, so its content cannot be compared"
        else:
            asset.status, asset.detail = "conflict", f"exists with different content (sha256 {published[:12]}, here {asset.sha256[:12]})"


def connect(args: argparse.Namespace):
    """MLClient for the registry (--registry) or the workspace (flags, environment, config.json)."""
    from pipelines import azure_ml

    if not args.registry:
        return azure_ml.connect(args)
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    logging.getLogger("azure.identity").setLevel(logging.ERROR)
    # Constructing a registry client already calls Azure (it looks up the registry's region).
    with azure_ml.azure_errors(f"connecting to registry {args.registry!r}"):
        return MLClient(
            DefaultAzureCredential(), subscription_id=args.subscription, resource_group_name=args.resource_group,
            registry_name=args.registry,
        )


def _where(args: argparse.Namespace) -> str:
    return f"registry {args.registry!r}" if args.registry else "the workspace"


def publish(args: argparse.Namespace) -> list[Asset]:
    from maap_finetune.common.errors import UserError
    from pipelines import azure_ml

    if args.registry and args.workspace:
        raise UserError("give --registry or --workspace, not both")
    assets = all_assets(Target(args.registry), args.pipeline_version)
    prepare(assets)
    workspace_given = bool(args.registry) or azure_ml.workspace_from_args(args) is not None or args.config
    if args.dry_run and not workspace_given:
        try:
            ml_client = connect(args)  # config.json in this folder or a parent, when there is one
        except UserError:
            for asset in assets:
                asset.status = "unknown"
            return assets
    else:
        ml_client = connect(args)
    with azure_ml.azure_errors(f"reading what {_where(args)} has published"):
        check_published(ml_client, assets)
    conflicts = [a for a in assets if a.status == "conflict"]
    if conflicts and not args.dry_run:
        lines = "; ".join(f"{a.label} ({a.source}) {a.detail}" for a in conflicts)
        raise UserError(
            f"refusing to overwrite published versions: {lines}. Bump the version in the YAML "
            f"(or --pipeline-version) and publish again; nothing was created"
        )
    if args.dry_run:
        return assets
    for asset in assets:
        if asset.status != "create":
            continue
        with azure_ml.azure_errors(f"publishing {asset.label} to {_where(args)}"):
            _operations(ml_client, asset).create_or_update(asset.entity)
        asset.status, asset.detail = "created", ""
        print(f"{asset.label}: created", flush=True)
    return assets


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from maap_finetune.common.errors import USER_ERROR_EXIT_CODE, UserError

    try:
        assets = publish(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    verb = {"create": "would create", "unknown": "would publish", "conflict": "CONFLICT"}
    if args.dry_run and any(a.status == "unknown" for a in assets):
        print("dry run, no workspace or registry given: not compared with what is already published")
    for asset in assets:
        if args.dry_run or asset.status != "created":
            status = verb.get(asset.status, asset.status) if args.dry_run else asset.status
            print(f"{asset.label}: {status}" + (f" ({asset.detail})" if asset.detail else ""))
    if args.dry_run and any(a.status == "conflict" for a in assets):
        print("error: some versions exist with different content; bump their versions before publishing", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
