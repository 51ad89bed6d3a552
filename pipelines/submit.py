"""Submit the fine-tuning pipeline to Azure ML, or run it on this machine.

    python pipelines/submit.py --compute gpu-cluster --set model_name=microsoft/Phi-3-mini-4k-instruct
    python pipelines/submit.py --compute gpu-cluster --cpu-compute cpu-cluster \\
        --instance-count 2 --process-count-per-instance 4 --set train_data=data/my_chat.jsonl \\
        --set model_name=microsoft/Phi-3-mini-4k-instruct --set peft_method=dora --set finetune.gradient_checkpointing=true --stream
    python pipelines/submit.py --dry-run --set model_name=...   # print the pipeline YAML, no network
    python pipelines/submit.py --validate                       # every component + the pipeline, offline
    python pipelines/submit.py --local                          # same pipeline here: tiny model, sample data
    python pipelines/submit.py --local --sweep-set "learning_rate=choice(0.001,0.005)" --sweep-set "lora_r=choice(4,8)"
                                                                # sweep Fine-Tune (pipelines/sweep.py; --sweep sweep.yaml,
                                                                # --sweep-limit trial_timeout=7200)
    python pipelines/submit.py --maas --model azureml://registries/azureml/models/Phi-4-mini-instruct/labels/latest \\
        --set train_data=chats.jsonl                            # serverless fine-tuning (pipelines/maas.py)

Workspace: --subscription/--resource-group/--workspace, else the environment variables
AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP and AZUREML_WORKSPACE_NAME (AZURE_WORKSPACE_NAME and the
AZUREML_ARM_* variables Azure ML sets inside jobs also work), else config.json (this folder or a parent,
or --config). Credentials: DefaultAzureCredential (az login, managed identity, AZURE_CLIENT_ID/...).

--set name=value sets a pipeline input (train_data, model_path, model_name, lora_r, ...);
--set step.name=value sets any input of one step (finetune.gradient_checkpointing=true). Values are converted
and checked against the component input's type, enum, min and max. Local paths are uploaded by the SDK.
A submission needs train_data or train_folder (--sample-data: the bundled sample). --local defaults to the
sample data and to a tiny Phi-3 built on this machine, and with that tiny model only it applies
LOCAL_PROFILE (pipelines/local_runner.py) where --set does not; a real base model keeps the YAML defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `pipelines` and the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_EXPERIMENT = "maap-finetune"
# First variable set wins, per field.
WORKSPACE_ENV = {
    "subscription": ("AZURE_SUBSCRIPTION_ID", "AZUREML_ARM_SUBSCRIPTION"),
    "resource_group": ("AZURE_RESOURCE_GROUP", "AZUREML_ARM_RESOURCEGROUP"),
    "workspace": ("AZUREML_WORKSPACE_NAME", "AZURE_WORKSPACE_NAME", "AZUREML_ARM_WORKSPACE_NAME"),
}
WORKSPACE_HELP = (
    "download config.json from the workspace's overview page in Azure ML studio into this folder (or pass --config), "
    "or pass --subscription, --resource-group and --workspace, "
    "or set AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP and AZUREML_WORKSPACE_NAME"
)
AUTH_HELP = (
    "run `az login` (or `az login --use-device-code`), or set AZURE_CLIENT_ID, AZURE_TENANT_ID and "
    "AZURE_CLIENT_SECRET for a service principal, or run where a managed identity is available"
)
EXIT_USER_ERROR = 2
EXIT_RUN_FAILED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_SIGTERM = 143  # 128 + SIGTERM



# Submitted without a base model, the pipeline fine-tunes Phi-3-mini (pulled from the Hugging Face Hub
# by the job). The local run defaults to the tiny Phi-3 built on this machine instead.
DEFAULT_AZURE_BASE_MODEL = "microsoft/Phi-3-mini-4k-instruct"

def add_workspace_arguments(group) -> None:
    """The workspace flags every Azure CLI of this repo takes (submit, deploy, publish, provision)."""
    group.add_argument("--subscription", help="Azure subscription id")
    group.add_argument("--resource-group", help="resource group of the workspace")
    group.add_argument("--workspace", help="Azure ML workspace name")
    group.add_argument("--config", help="path to the workspace config.json (default: search this folder and its parents)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="submit.py",
        description="Submit the maap-finetune pipeline to Azure ML, or run it locally.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
        allow_abbrev=False,
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--local", action="store_true", help="run the pipeline on this machine (tiny model and sample data by default)")
    mode.add_argument("--dry-run", action="store_true", help="print the complete pipeline YAML and exit; touches no network")
    mode.add_argument("--validate", action="store_true", help="validate every component and the pipeline offline; list all problems")

    where = parser.add_argument_group("compute")
    where.add_argument("--compute", help="compute cluster for the GPU steps (fine-tune, evaluate); required to submit")
    where.add_argument("--cpu-compute", help="compute cluster for the CPU steps (data prep, register); default: --compute")
    where.add_argument(
        "--force", action="store_true",
        help="submit even when the capacity check predicts a step too big for its cluster's VM (a warning instead)",
    )
    where.add_argument("--instance-count", "--nodes", type=int, default=1, metavar="N", help="nodes for fine-tune (default 1)")
    where.add_argument(
        "--process-count-per-instance", "--processes-per-node", type=int, default=1, metavar="N",
        help="fine-tune processes per node, usually the GPUs per node (default 1)",
    )

    from pipelines.factory import REGISTER_IDENTITIES, PipelineSettings

    where.add_argument(
        "--register-identity", choices=REGISTER_IDENTITIES, default=PipelineSettings.register_identity,
        help="whose rights Register uses to list and create models: user (yours, the default; works on any cluster) "
        "or managed (the cluster's managed identity; needs the roles infra/main.bicep grants it)",
    )

    inputs = parser.add_argument_group("inputs")
    inputs.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE",
        help="set a pipeline input (lora_r=8) or a step input (finetune.gradient_checkpointing=true); repeatable",
    )
    inputs.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help=f"experiment name (default {DEFAULT_EXPERIMENT})")
    inputs.add_argument(
        "--sample-data", action="store_true",
        help="train on the bundled sample (data/sample/chat.jsonl) when no train_data/train_folder is set; "
        "a submission without data is refused otherwise (--local uses the sample by default)",
    )
    inputs.add_argument(
        "--hf-token-secret", metavar="NAME",
        help="name of a secret in the workspace's Key Vault holding a Hugging Face token, for gated base models; "
        "the steps read it at run time with the job's identity (only the name is in the job). "
        "Locally, HF_TOKEN in your environment is used when set",
    )

    sweep = parser.add_argument_group("hyperparameter sweep of Fine-Tune (pipelines/sweep.py)")
    sweep.add_argument("--sweep", metavar="FILE", help="a sweep YAML: search_space, sampling_algorithm, objective, limits, "
                       "early_termination (Azure ML's sweep job keys)")
    sweep.add_argument("--sweep-set", action="append", default=[], metavar="NAME=EXPR",
                       help="sweep one Fine-Tune input, e.g. lora_r=choice(8,16) or warmup_ratio=uniform(0,0.1) (a "
                       "dimension that is not a choice needs --sweep-limit max_total_trials=N); repeatable")
    sweep.add_argument("--sweep-limit", action="append", default=[], metavar="KEY=N",
                       help="set one of the sweep's limits: max_total_trials, max_concurrent_trials, timeout or "
                       "trial_timeout (whole seconds >= 60), e.g. trial_timeout=7200; repeatable")

    add_workspace_arguments(parser.add_argument_group("workspace"))
    parser.add_argument("--stream", action="store_true", help="wait for the job and stream its logs (with --local: echo step logs)")

    maas = parser.add_argument_group("serverless fine-tuning (MaaS): Data Prep here, training by the service")
    maas.add_argument("--maas", action="store_true", help="submit a serverless fine-tuning job instead of the pipeline "
                      "(with --dry-run: print the job); see pipelines/maas.py")
    maas.add_argument("--model", help="with --maas: the base model's registry id, "
                      "azureml://registries/<registry>/models/<name>/versions/<version>")

    local = parser.add_argument_group("local run")
    local.add_argument(
        "--tracking-uri", default=None,
        help="MLflow tracking URI for --local (default sqlite:///mlruns.db in this folder)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code (0 ok, 1 a run failed, 2 a problem the user can fix)."""
    args = build_parser().parse_args(argv)
    from maap_finetune.common.errors import UserError

    from pipelines.local_runner import StepFailed

    try:
        if args.maas:
            from pipelines import maas

            return maas.run(args, connect)
        if args.model:
            raise UserError("--model is for --maas (a registry model id); the pipeline takes --set model_name=...")
        if args.validate:
            return validate(args)
        if args.local:
            return run_local(args)
        return submit(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except StepFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_RUN_FAILED
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM during --local (local_runner.Terminated)
        from pipelines.local_runner import Terminated

        signal_name = "SIGTERM" if isinstance(err, Terminated) else "interrupt"
        print(f"stopped by {signal_name}: every step process was ended and its MLflow run marked KILLED", file=sys.stderr)
        return EXIT_SIGTERM if isinstance(err, Terminated) else EXIT_INTERRUPTED


def settings_from_args(
    args: argparse.Namespace, *, require_base_model: bool = True, require_training_data: bool = True, inputs=None,
    step_inputs=None, sweep=None,
):
    """PipelineSettings from the CLI; `inputs`/`step_inputs` default to those parsed from --set, `sweep` to the
    one read from --sweep/--sweep-set (run_local reads it first, and passes it)."""
    from pipelines.factory import SAMPLE_DATA, PipelineSettings, parse_set_options
    from pipelines.sweep import sweep_from_args

    if inputs is None:
        inputs, step_inputs = parse_set_options(args.set)
    if sweep is None:
        sweep = sweep_from_args(getattr(args, "sweep", None), getattr(args, "sweep_set", []),
                                getattr(args, "sweep_limit", []))
    if getattr(args, "sample_data", False) and not (inputs.get("train_data") or inputs.get("train_folder")):
        inputs = {**inputs, "train_data": str(SAMPLE_DATA)}
    return PipelineSettings(
        compute=args.compute,
        cpu_compute=args.cpu_compute,
        instance_count=args.instance_count,
        process_count_per_instance=args.process_count_per_instance,
        experiment_name=args.experiment,
        inputs=inputs,
        step_inputs=step_inputs,
        require_base_model=require_base_model,
        require_training_data=require_training_data,
        hf_token_secret=getattr(args, "hf_token_secret", None),
        register_identity=args.register_identity,
        sweep=sweep,
    )


# ------------------------------------------------------------------------------------------
# --validate and --dry-run: offline


def validate(args: argparse.Namespace) -> int:
    from pipelines.validate import component_files, validate_repo

    settings = settings_from_args(args, require_base_model=False, require_training_data=False)
    problems = validate_repo(settings)
    if not problems and (settings.inputs.get("model_path") or settings.inputs.get("model_name")):
        from maap_finetune.common.errors import ConfigErrors

        from pipelines.capacity import check_capacity
        from pipelines.factory import build_pipeline

        try:
            check_capacity(build_pipeline(settings), settings, force=args.force)
        except ConfigErrors as err:
            problems = err.problems
    if problems:
        print(f"{len(problems)} problem{'s' if len(problems) != 1 else ''}:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print(f"ok: {len(component_files())} components and the pipeline are valid")
    return 0


# ------------------------------------------------------------------------------------------
# Azure ML


def workspace_from_args(args: argparse.Namespace, environ=os.environ) -> tuple[str, str, str] | None:
    """(subscription, resource group, workspace) from flags, then environment; None to use config.json."""
    values = {}
    for name, variables in WORKSPACE_ENV.items():
        values[name] = getattr(args, name) or next((environ[v] for v in variables if environ.get(v)), None)
    if all(values.values()):
        return values["subscription"], values["resource_group"], values["workspace"]
    if any(values.values()):
        from maap_finetune.common.errors import UserError

        missing = [name.replace("_", "-") for name, value in values.items() if not value]
        raise UserError(
            f"incomplete workspace: missing {', '.join('--' + m for m in missing)} "
            f"(or {', '.join(WORKSPACE_ENV[m.replace('-', '_')][0] for m in missing)})"
        )
    return None


def _first_line(err: BaseException) -> str:
    text = str(getattr(err, "message", None) or err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@contextlib.contextmanager
def azure_errors(action: str) -> Iterator[None]:
    """Turn Azure's authentication, network and HTTP errors into one clear UserError."""
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

    from maap_finetune.common.errors import UserError

    try:
        yield
    except ClientAuthenticationError as err:
        raise UserError(f"could not authenticate to Azure while {action}: {AUTH_HELP}. ({_first_line(err)})") from None
    except ServiceRequestError as err:
        raise UserError(f"could not reach Azure while {action}: {_first_line(err)}") from None
    except HttpResponseError as err:
        status = f" (HTTP {err.status_code})" if getattr(err, "status_code", None) else ""
        raise UserError(f"Azure ML refused {action}{status}: {_first_line(err)}") from None


def connect(args: argparse.Namespace):
    """An MLClient for the workspace named by flags, environment or config.json."""
    from azure.ai.ml import MLClient
    from azure.ai.ml.exceptions import MlException
    from azure.identity import DefaultAzureCredential

    from maap_finetune.common.errors import UserError

    # On failure DefaultAzureCredential logs a page about every credential it tried; our message says
    # what to do in one line instead (and carries the first line of the SDK's).
    logging.getLogger("azure.identity").setLevel(logging.ERROR)
    credential = DefaultAzureCredential()
    workspace = workspace_from_args(args)
    if workspace is not None:
        subscription, resource_group, name = workspace
        return MLClient(credential, subscription_id=subscription, resource_group_name=resource_group, workspace_name=name)
    try:
        return MLClient.from_config(credential, path=args.config)
    except (MlException, OSError, ValueError) as err:
        raise UserError(f"no Azure ML workspace configured ({_first_line(err)}): {WORKSPACE_HELP}") from None


def _compute_listing(ml_client, clusters_only: bool = False) -> str:
    computes = list(ml_client.compute.list())
    shown = [c for c in computes if not clusters_only or str(c.type).lower() == "amlcompute"]
    if not shown:
        kind = "compute clusters" if clusters_only else "computes"
        return f"the workspace has no {kind}; create one with `az ml compute create --type amlcompute ...`"
    label = "compute clusters" if clusters_only else "computes"
    return f"available {label}: " + ", ".join(f"{c.name} ({c.type})" for c in sorted(shown, key=lambda c: c.name))


def check_computes(ml_client, settings) -> dict:
    """Each compute the pipeline uses exists and is a cluster (AmlCompute) big enough for fine-tune; returns them by
    name."""
    from azure.core.exceptions import ResourceNotFoundError

    from maap_finetune.common.errors import UserError

    names = [settings.compute] + ([settings.cpu_compute] if settings.cpu_compute and settings.cpu_compute != settings.compute else [])
    found = {}
    for name in names:
        flag = "--compute" if name == settings.compute else "--cpu-compute"
        try:
            compute = ml_client.compute.get(name)
        except ResourceNotFoundError:
            raise UserError(f"{flag} {name!r}: no such compute in the workspace; {_compute_listing(ml_client)}") from None
        kind = str(getattr(compute, "type", "")).lower()
        if kind != "amlcompute":
            raise UserError(
                f"{flag} {name!r} is a {kind or 'compute of unknown type'}, not a compute cluster (AmlCompute); "
                f"{_compute_listing(ml_client, clusters_only=True)}"
            )
        max_instances = getattr(compute, "max_instances", None)
        if name == settings.compute and max_instances and settings.instance_count > max_instances:
            raise UserError(
                f"--instance-count {settings.instance_count} exceeds {name!r}'s max_instances ({max_instances})"
            )
        found[name] = compute
    return found


def with_default_base_model(settings, out):
    """Fill in Phi-3-mini when no base model is set, and say so (dry run and submit alike)."""
    if not (settings.inputs.get("model_path") or settings.inputs.get("model_name")):
        settings.inputs["model_name"] = DEFAULT_AZURE_BASE_MODEL
        print(f"base model: {DEFAULT_AZURE_BASE_MODEL} (the default; --set model_name=... or model_path=... to change)", file=out)
    return settings


def submit(args: argparse.Namespace) -> int:
    from maap_finetune.common.errors import ConfigErrors, UserError

    from pipelines.capacity import check_capacity
    from pipelines.factory import build_pipeline, pipeline_yaml, validate_job

    if args.dry_run:
        settings = with_default_base_model(settings_from_args(args), sys.stderr)
        job = build_pipeline(settings)
        print(pipeline_yaml(job), end="")
        check_capacity(job, settings, force=args.force)  # infra/main.bicep's VM sizes; prints the table
        return 0
    if not args.compute:
        raise UserError("--compute is required to submit to Azure ML (or use --local, --dry-run or --validate)")
    settings = with_default_base_model(settings_from_args(args), sys.stdout)
    job = build_pipeline(settings)  # offline: bad inputs fail here, before any network call
    problems = validate_job(job)
    if problems:
        raise ConfigErrors(problems, header="the pipeline does not validate")

    ml_client = connect(args)
    with azure_errors("checking the compute"):
        computes = check_computes(ml_client, settings)
    from pipelines.registry_models import check_registry_model, parse

    registry_model = None
    if parse(settings.inputs.get("model_path")):  # its regions and dates (pipelines/registry_models.py)
        with azure_errors("checking the registry model"):
            registry_model = check_registry_model(ml_client, str(settings.inputs["model_path"]))
    with azure_errors("reading the base model's size"):  # before anything is uploaded
        check_capacity(job, settings, computes=computes, ml_client=ml_client, azure_model=registry_model,
                       force=args.force, out=sys.stdout)
    with azure_errors("submitting the pipeline"):
        created = ml_client.jobs.create_or_update(job, experiment_name=args.experiment)
    print(f"submitted pipeline job {created.name} to experiment {args.experiment!r}")
    print(f"studio_url: {created.studio_url}", flush=True)
    if args.stream:
        from azure.ai.ml.exceptions import JobException

        try:
            with azure_errors("streaming the job's logs"):
                ml_client.jobs.stream(created.name)
        except JobException as err:
            print(f"error: pipeline job {created.name} did not complete: {_first_line(err)}", file=sys.stderr)
            return EXIT_RUN_FAILED
    return 0


# ------------------------------------------------------------------------------------------
# --local


def run_local(args: argparse.Namespace) -> int:
    from pipelines import local_runner
    from pipelines.factory import REPO_ROOT, SAMPLE_DATA, PipelineSettings, build_pipeline, parse_set_options
    from pipelines.sweep import STEP, swept_inputs, sweep_from_args

    workdir = Path.cwd()
    inputs, step_inputs = parse_set_options(args.set)
    # read once: LOCAL_PROFILE leaves the swept inputs alone
    sweep = sweep_from_args(args.sweep, args.sweep_set, args.sweep_limit)
    if str(inputs.get("model_path") or "").startswith("models:/"):  # chaining: a model this registry holds
        uri = inputs["model_path"]
        tracking_uri = local_runner.absolute_tracking_uri(args.tracking_uri or local_runner.DEFAULT_TRACKING_URI,
                                                          workdir)
        inputs["model_path"] = str(local_runner.registered_model_folder(
            uri, tracking_uri, workdir / local_runner.REGISTERED_MODELS_DIR))
        print(f"base model: {uri} from {tracking_uri}, at {inputs['model_path']}")
    uses_tiny_model = not inputs.get("model_path") and not inputs.get("model_name")
    applied: dict = {}
    if uses_tiny_model:  # LOCAL_PROFILE suits the tiny random model only; a real base model gets the YAML defaults
        swept = swept_inputs(sweep)
        method_profile = local_runner.LOCAL_METHOD_PROFILE.get(str(inputs.get("training_method")), {})
        profile = {k: v for k, v in {**local_runner.LOCAL_PROFILE, **method_profile}.items()
                   if k not in swept | {f"{STEP}.{n}" for n in swept}}
        inputs, step_inputs, applied = local_runner.apply_local_profile(inputs, step_inputs, profile)
    if not inputs.get("train_data") and not inputs.get("train_folder"):
        inputs["train_data"] = str(SAMPLE_DATA)
        print(f"training data: {SAMPLE_DATA.relative_to(REPO_ROOT)} (the sample; --set train_data=... to change)")

    def settings(require_base_model: bool) -> PipelineSettings:
        from_args = settings_from_args(args, require_base_model=require_base_model, inputs=inputs, step_inputs=step_inputs,
                                       sweep=sweep)
        return dataclasses.replace(from_args, compute=None, cpu_compute=None)  # no clusters on this machine

    build_pipeline(settings(require_base_model=False))  # every problem in the user's values, before the tiny model
    if args.compute or args.cpu_compute:
        print("note: --compute/--cpu-compute are ignored by --local")
    if applied:
        profile = ", ".join(f"{k}={v}" for k, v in applied.items())
        print(f"local profile (LOCAL_PROFILE in pipelines/local_runner.py; --set overrides): {profile}")
    step_env: dict[str, str] = {}
    if uses_tiny_model:
        inputs["model_path"] = str(local_runner.ensure_tiny_model(workdir / local_runner.TINY_MODEL_DIR))
        print(f"base model: tiny Phi-3 at {inputs['model_path']}")
        step_env.update(local_runner.TINY_MODEL_ENV)
    if not inputs.get("model_name"):
        # The base model is a local folder: nothing needs the Hugging Face Hub, and libraries that look
        # things up there anyway (model cards, licenses) would wait through retries without network.
        step_env["HF_HUB_OFFLINE"] = "1"
    step_env = {k: v for k, v in step_env.items() if k not in os.environ}
    if step_env:
        print("step environment: " + ", ".join(f"{k}={v}" for k, v in step_env.items()))
    job = build_pipeline(settings(require_base_model=True))
    result = local_runner.run_pipeline(
        job,
        workdir=workdir,
        tracking_uri=args.tracking_uri or local_runner.DEFAULT_TRACKING_URI,
        experiment_name=args.experiment,
        stream=args.stream,
        env=step_env,
    )
    print_summary(result)
    return 0


def model_info_lines(model_info_path: Path) -> list[str]:
    """`model_uri: ...` from the register step's model_info.json, or why nothing was registered."""
    from maap_finetune.common.errors import UserError

    try:
        info = json.loads(model_info_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"the register step's {model_info_path} is missing or not JSON: {err}") from None
    if not isinstance(info, dict) or "registered" not in info:
        raise UserError(f"{model_info_path}: expected an object with 'registered', 'name', 'version', 'uri', 'reason'")
    if info["registered"]:
        from maap_finetune.registry.tags import is_unverified

        uri = info.get("uri") or f"models:/{info.get('name')}/{info.get('version')}"
        if is_unverified(info.get("tags")):
            return [f"model not verified: {uri} did not pass the load-back check; do not use it, rerun Register"]
        return [f"model_uri: {uri}"]
    reason = " ".join(str(info.get("reason") or "no reason given").split())
    return [f"model not registered: {reason}"]


def onnx_model_line(model_info_path: Path) -> str:
    """`onnx_model: models:/<name>-onnx/<version>` from Export ONNX's model_info.json, or why there is none."""
    line = model_info_lines(model_info_path)[0]
    if line.startswith("model_uri: "):
        return "onnx_model: " + line[len("model_uri: "):]
    for prefix in ("model not registered: ", "model not verified: "):
        if line.startswith(prefix):
            return f"onnx_model: {prefix[6:-2]} ({line[len(prefix):]})"
    return "onnx_model: " + line


def print_summary(result) -> None:
    print(f"\nlocal run {result.run_id} finished in {result.seconds:.1f} s")
    width = max(len(name) for name in result.steps) if result.steps else 0
    for name, step in result.steps.items():
        print(f"  {name:<{width}}  {step.seconds:6.1f} s")
    print(f"run_dir: {result.run_dir}")
    print(f"tracking_uri: {result.tracking_uri}")
    print(f"mlflow_run_id: {result.mlflow_run_id}")
    register = result.steps.get("register")
    if register is not None and "registration" in register.outputs:
        lines = model_info_lines(register.outputs["registration"] / "model_info.json")
        for line in lines:
            print(line)
        if lines[0].startswith("model_uri:"):
            uri = lines[0].split(": ", 1)[1]
            print(
                f"load it: MLFLOW_TRACKING_URI={result.tracking_uri} python -c "
                f"\"import mlflow; print(mlflow.pyfunc.load_model('{uri}'))\""
            )
    export = result.steps.get("export_onnx")
    if export is not None and "export_report" in export.outputs:
        print(onnx_model_line(export.outputs["export_report"] / "model_info.json"))
    print(f"browse: mlflow ui --backend-store-uri {result.tracking_uri}")


if __name__ == "__main__":
    sys.exit(main())
