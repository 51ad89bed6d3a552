"""Deploy a registered model to an Azure ML managed online endpoint (optional; not a pipeline step).

    python pipelines/deploy.py --model maap-finetuned:1 --instance-type Standard_NC24ads_A100_v4
    python pipelines/deploy.py --model maap-finetuned:2 --instance-type Standard_NC24ads_A100_v4 \\
        --endpoint-name contoso-chat --deployment-name green --instance-count 2
    python pipelines/deploy.py --model maap-finetuned:1 --registry shared-models --instance-type ...

Creates the endpoint (key auth) when it does not exist, creates or updates the deployment of the
model (an MLflow model: Azure ML builds the scoring server, no scoring script), sends all of the
endpoint's traffic to that deployment, and prints the scoring URI and a sample request.

Workspace: --subscription/--resource-group/--workspace, else AZURE_SUBSCRIPTION_ID,
AZURE_RESOURCE_GROUP and AZUREML_WORKSPACE_NAME, else config.json (this folder or a parent, or
--config), exactly as submit.py. Credentials: DefaultAzureCredential (az login, managed identity,
AZURE_CLIENT_ID/...); nothing is stored.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `pipelines` and the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EXIT_USER_ERROR = 2
MODEL_REF = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,254}):(?P<version>[0-9]+)$")
ENDPOINT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,30}[A-Za-z0-9]$")  # Azure ML: 3-32 chars
DEPLOYMENT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,30}[A-Za-z0-9]$")
REGISTRY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{2,32}$")
SAMPLE_REQUEST = {
    "messages": [{"role": "user", "content": "What is the warranty on a new bike?"}],
    "max_tokens": 64,
    "temperature": 0.0,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deploy.py",
        description="Create or update a managed online endpoint and deployment for a registered model.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
        allow_abbrev=False,
    )
    parser.add_argument("--model", required=True, metavar="NAME:VERSION", help="registered model, such as maap-finetuned:1")
    parser.add_argument("--instance-type", required=True, help="VM size, such as Standard_NC24ads_A100_v4 (GPU) or Standard_DS3_v2")
    parser.add_argument("--instance-count", type=int, default=1, help="instances behind the deployment (default 1)")
    parser.add_argument("--endpoint-name", help="endpoint name, unique in the Azure region (default: from the model name)")
    parser.add_argument("--deployment-name", default="blue", help="deployment name (default blue)")
    parser.add_argument("--registry", help="the model is in this Azure ML registry instead of the workspace")
    parser.add_argument("--request-timeout-ms", type=int, default=90000,
                        help="scoring request timeout in ms (default 90000; generation is slow)")
    from pipelines.submit import add_workspace_arguments

    add_workspace_arguments(parser.add_argument_group("workspace"))
    return parser


def default_endpoint_name(model_name: str) -> str:
    """A valid endpoint name from a model name: lowercase letters, digits and '-', 3-32 characters."""
    name = re.sub(r"[^a-z0-9-]+", "-", model_name.lower()).strip("-")
    if not name or not name[0].isalpha():
        name = "ep-" + name
    name = name[:32].rstrip("-")
    return name if len(name) >= 3 else f"{name}-ep"


def check_args(args: argparse.Namespace) -> tuple[str, str]:
    """(model name, version); a UserError listing every bad flag."""
    from maap_finetune.common.errors import ConfigErrors

    problems = []
    match = MODEL_REF.match(args.model)
    if not match:
        problems.append(f"--model {args.model!r}: expected NAME:VERSION, such as maap-finetuned:1")
    if args.endpoint_name is None and match:
        args.endpoint_name = default_endpoint_name(match["name"])
    if args.endpoint_name is not None and not ENDPOINT_NAME.match(args.endpoint_name):
        problems.append(f"--endpoint-name {args.endpoint_name!r}: 3-32 letters, digits or '-', starting with a letter")
    if not DEPLOYMENT_NAME.match(args.deployment_name):
        problems.append(f"--deployment-name {args.deployment_name!r}: 3-32 letters, digits or '-', starting with a letter")
    if args.registry is not None and not REGISTRY_NAME.match(args.registry):
        problems.append(f"--registry {args.registry!r}: 3-33 letters, digits, '-' or '_'")
    if args.instance_count < 1:
        problems.append(f"--instance-count {args.instance_count}: must be at least 1")
    if not 1000 <= args.request_timeout_ms <= 180000:
        problems.append(f"--request-timeout-ms {args.request_timeout_ms}: Azure ML allows 1000-180000")
    if problems:
        raise ConfigErrors(problems, header="deploy: invalid arguments")
    return match["name"], match["version"]


def model_reference(ml_client, name: str, version: str, registry: str | None) -> str:
    """The model id the deployment points at; a workspace model must exist."""
    from azure.core.exceptions import ResourceNotFoundError

    from maap_finetune.common.errors import UserError

    if registry:
        return f"azureml://registries/{registry}/models/{name}/versions/{version}"
    try:
        model = ml_client.models.get(name=name, version=version)
    except ResourceNotFoundError:
        raise UserError(f"model {name}:{version} is not registered in the workspace; "
                        f"list versions with `az ml model list --name {name}`") from None
    if getattr(model, "type", None) not in (None, "mlflow_model"):
        raise UserError(f"model {name}:{version} is a {model.type}, not an mlflow_model; this script deploys MLflow "
                        "models (no scoring script)")
    return f"azureml:{name}:{version}"


def deploy(ml_client, args: argparse.Namespace, name: str, version: str) -> dict:
    """Create/update endpoint and deployment, route all traffic to it; returns what was done."""
    from azure.ai.ml.entities import ManagedOnlineDeployment, ManagedOnlineEndpoint, OnlineRequestSettings
    from azure.core.exceptions import ResourceNotFoundError

    model_id = model_reference(ml_client, name, version, args.registry)
    try:
        endpoint = ml_client.online_endpoints.get(name=args.endpoint_name)
        endpoint_action = "updated"
    except ResourceNotFoundError:
        endpoint = ManagedOnlineEndpoint(
            name=args.endpoint_name,
            auth_mode="key",
            description=f"Chat endpoint for {name}, fine-tuned with maap-finetune.",
            tags={"model": f"{name}:{version}"},
        )
        print(f"creating endpoint {args.endpoint_name} (a few minutes)...", flush=True)
        endpoint = ml_client.online_endpoints.begin_create_or_update(endpoint).result()
        endpoint_action = "created"

    deployment = ManagedOnlineDeployment(
        name=args.deployment_name,
        endpoint_name=args.endpoint_name,
        model=model_id,
        instance_type=args.instance_type,
        instance_count=args.instance_count,
        request_settings=OnlineRequestSettings(request_timeout_ms=args.request_timeout_ms),
        tags={"model": f"{name}:{version}"},
    )
    print(f"deploying {name}:{version} as {args.endpoint_name}/{args.deployment_name} on {args.instance_count} x "
          f"{args.instance_type} (10-20 minutes for an LLM)...", flush=True)
    ml_client.online_deployments.begin_create_or_update(deployment).result()

    endpoint = ml_client.online_endpoints.get(name=args.endpoint_name)
    endpoint.traffic = {args.deployment_name: 100}
    endpoint = ml_client.online_endpoints.begin_create_or_update(endpoint).result()
    return {"endpoint": args.endpoint_name, "endpoint_action": endpoint_action, "deployment": args.deployment_name,
            "model": model_id, "scoring_uri": getattr(endpoint, "scoring_uri", None)}


def print_sample_request(result: dict, args: argparse.Namespace) -> None:
    workspace = ""
    if args.resource_group and args.workspace:
        workspace = f" --resource-group {args.resource_group} --workspace-name {args.workspace}"
    print(f"endpoint {result['endpoint']} {result['endpoint_action']}; deployment {result['deployment']} serves "
          f"{result['model']} with 100% of the traffic")
    print(f"scoring_uri: {result['scoring_uri']}")
    print("sample request (request.json):")
    print(json.dumps(SAMPLE_REQUEST, indent=2))
    print(f"invoke: az ml online-endpoint invoke --name {result['endpoint']} --request-file request.json{workspace}")
    print(f"key:    az ml online-endpoint get-credentials --name {result['endpoint']}{workspace}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code (0 deployed, 2 a problem the user can fix)."""
    args = build_parser().parse_args(argv)
    from maap_finetune.common.errors import UserError

    from pipelines.submit import azure_errors, connect

    from azure.ai.ml.exceptions import MlException

    try:
        name, version = check_args(args)
        with azure_errors("connecting to the workspace"):
            ml_client = connect(args)
        with azure_errors(f"deploying {args.model} to endpoint {args.endpoint_name}"):
            try:
                result = deploy(ml_client, args, name, version)
            except MlException as err:  # the SDK's own validation and deployment errors
                first = (str(getattr(err, "message", "") or err).strip().splitlines() or [type(err).__name__])[0]
                raise UserError(f"Azure ML could not deploy {args.model}: {first}") from None
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    print_sample_request(result, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
