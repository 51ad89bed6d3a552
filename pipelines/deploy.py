"""Deploy a registered model to an Azure ML managed online endpoint (optional; not a pipeline step).

    python pipelines/deploy.py --model maap-finetuned:1 --instance-type Standard_NC24ads_A100_v4
    python pipelines/deploy.py --model maap-finetuned:2 --instance-type Standard_NC24ads_A100_v4 \\
        --endpoint-name contoso-chat --deployment-name green --instance-count 2
    python pipelines/deploy.py --model maap-finetuned:1 --registry shared-models --instance-type ...

    python pipelines/deploy.py --model maap-finetuned:1 --instance-type Standard_NC24ads_A100_v4 --dry-run

Creates the endpoint (key auth) when it does not exist, creates or updates the deployment of the
model, sends all of the endpoint's traffic to that deployment, and prints the scoring URI and a
sample request in Azure ML's `input_data` envelope. The deployment runs `pipelines/scoring/score.py`
in the project's GPU environment: Azure ML's no-code MLflow scoring script cannot load an
`llm/v1/chat` model (see that file). `--dry-run` prints the endpoint and deployment YAML and the
sample request, and calls no Azure service.

Workspace: --subscription/--resource-group/--workspace, else AZURE_SUBSCRIPTION_ID,
AZURE_RESOURCE_GROUP and AZUREML_WORKSPACE_NAME, else config.json (this folder or a parent, or
--config), exactly as submit.py. Credentials: DefaultAzureCredential (az login, managed identity,
AZURE_CLIENT_ID/...); nothing is stored.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `pipelines` and the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODEL_REF = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,254}):(?P<version>[0-9]+)$")
ENDPOINT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,30}[A-Za-z0-9]$")  # Azure ML: 3-32 chars
DEPLOYMENT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{1,30}[A-Za-z0-9]$")
REGISTRY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{2,32}$")
REPO_ROOT = Path(__file__).resolve().parents[1]
SCORING_DIR = REPO_ROOT / "pipelines" / "scoring"
ENVIRONMENT_YAML = REPO_ROOT / "environments" / "train-gpu" / "environment.yaml"
# Azure ML reads scoring inputs from the "input_data" key (how-to-deploy-mlflow-models); the chat
# fields inside are the model's MLflow llm/v1/chat signature. No temperature: 0.0 is refused by
# transformers' sampling check, and generation is greedy by default.
SAMPLE_REQUEST = {
    "input_data": {
        "messages": [{"role": "user", "content": "What is the warranty on a new bike?"}],
        "max_tokens": 64,
    }
}
# Azure's limit: request_timeout_ms at most 180000 (reference-yaml-deployment-managed-online.md,
# RequestSettings). Generation of a few hundred tokens needs the headroom.
MAX_REQUEST_TIMEOUT_MS = 180000
# Probes (same reference, ProbeSettings: defaults initial_delay 10 s, period 10 s, timeout 2 s,
# failure_threshold 30, minimums 1). The container installs nothing at start (the image holds the
# pins) but loads several GB of weights: readiness waits 10 min before failing (60 x 10 s after a
# 30 s delay); liveness starts after 10 min and restarts only after 5 min of silence (10 x 30 s).
READINESS_PROBE = {"initial_delay": 30, "period": 10, "timeout": 10, "failure_threshold": 60, "success_threshold": 1}
LIVENESS_PROBE = {"initial_delay": 600, "period": 30, "timeout": 10, "failure_threshold": 10, "success_threshold": 1}
# Accelerator memory per VM size in GB (Azure's managed online endpoint SKU list; GPU count x GPU memory),
# system RAM for CPU sizes. A size not listed is not checked.
INSTANCE_MEMORY_GB = {
    "Standard_NC4as_T4_v3": 16, "Standard_NC8as_T4_v3": 16, "Standard_NC16as_T4_v3": 16,
    "Standard_NC64as_T4_v3": 64, "Standard_NC6s_v3": 16, "Standard_NC12s_v3": 32, "Standard_NC24s_v3": 64,
    "Standard_NC24ads_A100_v4": 80, "Standard_NC48ads_A100_v4": 160, "Standard_NC96ads_A100_v4": 320,
    "Standard_ND96asr_v4": 320, "Standard_ND96amsr_A100_v4": 640, "Standard_NC40ads_H100_v5": 94,
    "Standard_NC80adis_H100_v5": 188, "Standard_ND96isr_H100_v5": 640,
    "Standard_DS3_v2": 14, "Standard_DS4_v2": 28, "Standard_DS5_v2": 56, "Standard_E8s_v3": 64,
    "Standard_E16s_v3": 128, "Standard_F8s_v2": 16, "Standard_F16s_v2": 32,
}
HEADROOM = 1.3  # bf16 weights plus KV cache, activations and the CUDA context
# azmlinfsrv runs one gunicorn sync worker: a request that generates for minutes blocked the liveness
# probe, and Azure restarts a container whose probe times out. Threads (gunicorn's gthread worker) share
# the one loaded model; score.py scores one request at a time and these answer the probes meanwhile.
# A second worker would load a second copy of the weights.
SERVER_THREADS = 24
MAX_PENDING_REQUESTS = SERVER_THREADS - 4  # score.py refuses more (503): 4 threads stay free for probes


def server_environment(request_timeout_ms: int, max_request_bytes: int | None = None) -> dict[str, str]:
    """The deployment's environment variables for azmlinfsrv and score.py (see score.py's docstring)."""
    environment = {
        "GUNICORN_CMD_ARGS": f"--threads {SERVER_THREADS}",
        "SCORING_TIMEOUT_MS": str(request_timeout_ms),  # the server's default is 3,600,000 ms
        "MAAP_MAX_PENDING_REQUESTS": str(MAX_PENDING_REQUESTS),
    }
    if max_request_bytes is not None:
        environment["MAAP_MAX_REQUEST_BYTES"] = str(max_request_bytes)
    return environment


def build_parser() -> argparse.ArgumentParser:
    from maap_finetune.common.cli import command_parser

    parser = command_parser("deploy.py", "Create or update a managed online endpoint and deployment for a registered model.", __doc__)
    parser.add_argument("--model", required=True, metavar="NAME:VERSION", help="registered model, such as maap-finetuned:1")
    parser.add_argument("--instance-type", required=True, help="VM size, such as Standard_NC24ads_A100_v4 (GPU) or Standard_DS3_v2")
    parser.add_argument("--instance-count", type=int, default=1, help="instances behind the deployment (default 1)")
    parser.add_argument("--endpoint-name", help="endpoint name, unique in the Azure region (default: from the model name)")
    parser.add_argument("--deployment-name", default="blue", help="deployment name (default blue)")
    parser.add_argument("--registry", help="the model is in this Azure ML registry instead of the workspace")
    parser.add_argument("--request-timeout-ms", type=int, default=MAX_REQUEST_TIMEOUT_MS,
                        help=f"scoring request timeout in ms (default and Azure's maximum: {MAX_REQUEST_TIMEOUT_MS})")
    parser.add_argument("--max-request-bytes", type=int,
                        help="largest request body the deployment reads; a larger one is HTTP 413 (default: "
                             "score.py's, 1000000)")
    parser.add_argument("--weights-gb", type=float,
                        help="size of the model's bf16 weights in GB (2 x billions of parameters), to check "
                             "--instance-type; default: the model's model_size_bytes tag when it has one")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the endpoint and deployment YAML and the sample request; call no Azure service")
    from pipelines.azure_ml import add_workspace_arguments

    add_workspace_arguments(parser.add_argument_group("workspace"))
    return parser


def default_endpoint_name(model_name: str, workspace_id: str) -> str:
    """Model name + '-' + 6 hex characters of sha256(workspace, model): stable for one workspace, and
    unlikely to collide with another workspace's endpoint in the region (names are unique per region).
    Lowercase letters, digits and '-', starting with a letter, 3-32 characters."""
    suffix = hashlib.sha256(f"{workspace_id}/{model_name}".encode()).hexdigest()[:6]
    name = re.sub(r"[^a-z0-9-]+", "-", model_name.lower()).strip("-")
    if not name or not name[0].isalpha():
        name = "ep-" + name
    name = re.sub(r"-{2,}", "-", name)[: 32 - len(suffix) - 1].rstrip("-")
    return f"{name}-{suffix}"


def check_args(args: argparse.Namespace) -> tuple[str, str]:
    """(model name, version); a UserError listing every bad flag."""
    from maap_finetune.common.errors import ConfigErrors

    problems = []
    match = MODEL_REF.match(args.model)
    if not match:
        problems.append(f"--model {args.model!r}: expected NAME:VERSION, such as maap-finetuned:1")
    if args.endpoint_name is not None and not ENDPOINT_NAME.match(args.endpoint_name):
        problems.append(f"--endpoint-name {args.endpoint_name!r}: 3-32 letters, digits or '-', starting with a letter")
    if not DEPLOYMENT_NAME.match(args.deployment_name):
        problems.append(f"--deployment-name {args.deployment_name!r}: 3-32 letters, digits or '-', starting with a letter")
    if args.registry is not None and not REGISTRY_NAME.match(args.registry):
        problems.append(f"--registry {args.registry!r}: 3-33 letters, digits, '-' or '_'")
    if args.instance_count < 1:
        problems.append(f"--instance-count {args.instance_count}: must be at least 1")
    if not 1000 <= args.request_timeout_ms <= MAX_REQUEST_TIMEOUT_MS:
        problems.append(f"--request-timeout-ms {args.request_timeout_ms}: Azure ML allows 1000-{MAX_REQUEST_TIMEOUT_MS}")
    if args.max_request_bytes is not None and args.max_request_bytes < 1:
        problems.append(f"--max-request-bytes {args.max_request_bytes}: must be at least 1")
    if args.weights_gb is not None and args.weights_gb <= 0:
        problems.append(f"--weights-gb {args.weights_gb}: must be positive")
    if problems:
        raise ConfigErrors(problems, header="deploy: invalid arguments")
    return match["name"], match["version"]


def model_reference(ml_client, name: str, version: str, registry: str | None) -> tuple[str, dict]:
    """(model id the deployment points at, the model's tags); the model must exist, verified."""
    from azure.core.exceptions import ResourceNotFoundError

    from maap_finetune.common.errors import UserError

    if registry:
        from pipelines.registry_models import registry_client

        ml_client = registry_client(registry)
    where = f"the registry {registry}" if registry else "the workspace"
    try:
        model = ml_client.models.get(name=name, version=version)
    except ResourceNotFoundError:
        raise UserError(f"model {name}:{version} is not registered in {where}; list versions with "
                        f"`az ml model list --name {name}{f' --registry-name {registry}' if registry else ''}`") from None
    if getattr(model, "type", None) not in (None, "mlflow_model"):
        raise UserError(f"model {name}:{version} is a {model.type}, not an mlflow_model; this script deploys MLflow "
                        "models written by maap-finetune")
    tags = dict(getattr(model, "tags", None) or {})
    from maap_finetune.registry.tags import is_unverified

    if is_unverified(tags):
        raise UserError(f"model {name}:{version} is not verified (tag maap_verified: false): Register created it but its "
                        "load-back check did not pass; rerun the pipeline's Register step, or deploy a verified version")
    if registry:
        return f"azureml://registries/{registry}/models/{name}/versions/{version}", tags
    return f"azureml:{name}:{version}", tags


def instance_warning(instance_type: str, weights_gb: float | None) -> str | None:
    """A warning when the VM's accelerator memory (RAM for CPU sizes) cannot hold the weights plus headroom."""
    memory = INSTANCE_MEMORY_GB.get(instance_type)
    if weights_gb is None or memory is None:
        return None
    needed = weights_gb * HEADROOM
    if needed <= memory:
        return None
    return (f"warning: {instance_type} has {memory:g} GB of {'GPU' if '_N' in instance_type else 'RAM'} memory; the "
            f"model needs about {needed:.1f} GB ({weights_gb:g} GB of bf16 weights x {HEADROOM} headroom). The "
            "deployment would fail to load or run out of memory: pick a larger --instance-type.")


def weights_from_tags(tags: dict) -> float | None:
    """GB of weights from Register's model_size_bytes tag. None without one, and for an adapter: its folder
    holds the adapter alone, and the base model it loads at start is not counted."""
    from maap_finetune.registry.tags import MODEL_SIZE_TAG

    if tags.get("model_format") == "adapter":
        return None
    try:
        return int(tags[MODEL_SIZE_TAG]) / 1e9
    except (KeyError, TypeError, ValueError):
        return None


def build_entities(args: argparse.Namespace, name: str, version: str, model_id: str):
    """(endpoint, deployment) as the SDK entities that are sent to Azure (or printed by --dry-run)."""
    from azure.ai.ml import load_environment
    from azure.ai.ml.entities import (
        CodeConfiguration,
        ManagedOnlineDeployment,
        ManagedOnlineEndpoint,
        OnlineRequestSettings,
        ProbeSettings,
    )

    endpoint = ManagedOnlineEndpoint(
        name=args.endpoint_name,
        auth_mode="key",
        description=f"Chat endpoint for {name}, fine-tuned with maap-finetune.",
        tags={"model": f"{name}:{version}"},
    )
    deployment = ManagedOnlineDeployment(
        name=args.deployment_name,
        endpoint_name=args.endpoint_name,
        model=model_id,
        environment=load_environment(ENVIRONMENT_YAML),
        code_configuration=CodeConfiguration(code=str(SCORING_DIR), scoring_script="score.py"),
        instance_type=args.instance_type,
        instance_count=args.instance_count,
        request_settings=OnlineRequestSettings(request_timeout_ms=args.request_timeout_ms),
        environment_variables=server_environment(args.request_timeout_ms, args.max_request_bytes),
        readiness_probe=ProbeSettings(**READINESS_PROBE),
        liveness_probe=ProbeSettings(**LIVENESS_PROBE),
        tags={"model": f"{name}:{version}"},
    )
    return endpoint, deployment


def deploy(ml_client, args: argparse.Namespace, name: str, version: str, model_id: str) -> dict:
    """Create/update endpoint and deployment, route all traffic to it; returns what was done."""
    from azure.core.exceptions import ResourceNotFoundError

    new_endpoint, deployment = build_entities(args, name, version, model_id)
    try:
        ml_client.online_endpoints.get(name=args.endpoint_name)
        endpoint_action = "updated"
    except ResourceNotFoundError:
        print(f"creating endpoint {args.endpoint_name} (a few minutes)...", flush=True)
        ml_client.online_endpoints.begin_create_or_update(new_endpoint).result()
        endpoint_action = "created"

    print(f"deploying {name}:{version} as {args.endpoint_name}/{args.deployment_name} on {args.instance_count} x "
          f"{args.instance_type} (10-20 minutes for an LLM)...", flush=True)
    ml_client.online_deployments.begin_create_or_update(deployment).result()

    endpoint = ml_client.online_endpoints.get(name=args.endpoint_name)
    endpoint.traffic = {args.deployment_name: 100}
    endpoint = ml_client.online_endpoints.begin_create_or_update(endpoint).result()
    return {"endpoint": args.endpoint_name, "endpoint_action": endpoint_action, "deployment": args.deployment_name,
            "model": model_id, "scoring_uri": getattr(endpoint, "scoring_uri", None)}


def entity_yaml(entity) -> str:
    """The YAML `az ml online-endpoint/online-deployment create --file` takes, from the SDK's own schema."""
    import yaml

    # _to_dict() is what entity.dump() writes; the JSON round trip turns its OrderedDicts into plain dicts.
    return yaml.safe_dump(json.loads(json.dumps(entity._to_dict())), sort_keys=False)


def print_dry_run(args: argparse.Namespace, name: str, version: str, model_id: str) -> None:
    endpoint, deployment = build_entities(args, name, version, model_id)
    print(f"# dry run: nothing was sent to Azure\n# endpoint.yaml\n{entity_yaml(endpoint)}")
    print(f"# deployment.yaml\n{entity_yaml(deployment)}")
    print("sample request (request.json):")
    print(json.dumps(SAMPLE_REQUEST, indent=2))


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
    from maap_finetune.common.errors import USER_ERROR_EXIT_CODE, ConfigErrors, UserError

    from pipelines.azure_ml import azure_errors, connect

    from azure.ai.ml.exceptions import MlException

    try:
        name, version = check_args(args)
        with azure_errors("connecting to the workspace"):
            ml_client = connect(args)  # builds the client only: no request is sent yet
        if args.endpoint_name is None:
            workspace_id = f"{ml_client.subscription_id}/{ml_client.resource_group_name}/{ml_client.workspace_name}"
            args.endpoint_name = default_endpoint_name(name, workspace_id)
            if not ENDPOINT_NAME.match(args.endpoint_name):  # a bug here must not reach Azure
                raise ConfigErrors([f"derived endpoint name {args.endpoint_name!r} breaks Azure's rules; "
                                    "pass --endpoint-name"], header="deploy: invalid arguments")
        if args.dry_run:
            model_id = (f"azureml://registries/{args.registry}/models/{name}/versions/{version}" if args.registry
                        else f"azureml:{name}:{version}")
            warning = instance_warning(args.instance_type, args.weights_gb)
            if warning:
                print(warning, file=sys.stderr)
            print_dry_run(args, name, version, model_id)
            return 0
        with azure_errors(f"deploying {args.model} to endpoint {args.endpoint_name}"):
            try:
                model_id, tags = model_reference(ml_client, name, version, args.registry)
                weights_gb = args.weights_gb if args.weights_gb is not None else weights_from_tags(tags)
                warning = instance_warning(args.instance_type, weights_gb)
                if warning:
                    print(warning, file=sys.stderr)
                result = deploy(ml_client, args, name, version, model_id)
            except MlException as err:  # the SDK's own validation and deployment errors
                first = (str(getattr(err, "message", "") or err).strip().splitlines() or [type(err).__name__])[0]
                raise UserError(f"Azure ML could not deploy {args.model}: {first}") from None
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    print_sample_request(result, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
