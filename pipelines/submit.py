"""Submit the fine-tuning pipeline to Azure ML, or run it on this machine.

    python pipelines/submit.py --compute gpu-cluster --set model_name=microsoft/Phi-3-mini-4k-instruct
    python pipelines/submit.py --compute gpu-cluster --cpu-compute cpu-cluster \\
        --instance-count 2 --process-count-per-instance 4 --set train_data=data/my_chat.jsonl \\
        --set model_name=microsoft/Phi-3-mini-4k-instruct --set peft_method=dora --set finetune.gradient_checkpointing=true --stream
    python pipelines/submit.py --dry-run --set model_name=...   # print the pipeline YAML, no network
    python pipelines/submit.py --validate                       # every component + the pipeline, offline
    python pipelines/submit.py --local                          # same pipeline here: tiny model, sample data
    python pipelines/submit.py --local --sweep-set "learning_rate=choice(0.001,0.005)" --sweep-set "lora_r=choice(4,8)"
                                                                # sweep Fine-Tune (pipelines/definition/sweep.py; --sweep sweep.yaml,
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
LOCAL_PROFILE (pipelines/local/defaults.py) where --set does not; a real base model keeps the YAML defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `pipelines` and the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.azure_ml import add_workspace_arguments, azure_errors, check_computes, connect, first_line  # noqa: E402

DEFAULT_EXPERIMENT = "maap-finetune"
EXIT_RUN_FAILED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_SIGTERM = 143  # 128 + SIGTERM
# Submitted without a base model, the pipeline fine-tunes Phi-3-mini (pulled from the Hugging Face Hub
# by the job). The local run defaults to the tiny Phi-3 built on this machine instead.
DEFAULT_AZURE_BASE_MODEL = "microsoft/Phi-3-mini-4k-instruct"


def build_parser() -> argparse.ArgumentParser:
    from maap_finetune.common.cli import command_parser

    parser = command_parser("submit.py", "Submit the maap-finetune pipeline to Azure ML, or run it locally.", __doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--local", action="store_true", help="run the pipeline on this machine (tiny model and sample data by default)")
    mode.add_argument("--dry-run", action="store_true", help="print the complete pipeline YAML and exit; touches no network")
    mode.add_argument("--validate", action="store_true", help="validate every component and the pipeline offline; list all problems")

    _add_compute_arguments(parser.add_argument_group("compute"))
    _add_input_arguments(parser.add_argument_group("inputs"))
    _add_sweep_arguments(parser.add_argument_group("hyperparameter sweep of Fine-Tune (pipelines/definition/sweep.py)"))
    add_workspace_arguments(parser.add_argument_group("workspace"))
    parser.add_argument("--stream", action="store_true", help="wait for the job and stream its logs (with --local: echo step logs)")
    _add_maas_arguments(parser.add_argument_group("serverless fine-tuning (MaaS): Data Prep here, training by the service"))
    local = parser.add_argument_group("local run")
    local.add_argument(
        "--tracking-uri", default=None,
        help="MLflow tracking URI for --local (default sqlite:///mlruns.db in this folder)",
    )
    return parser


def _add_compute_arguments(where) -> None:
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

    from pipelines.definition.inputs import REGISTER_IDENTITIES
    from pipelines.definition.settings import PipelineSettings

    where.add_argument(
        "--register-identity", choices=REGISTER_IDENTITIES, default=PipelineSettings.register_identity,
        help="whose rights Register uses to list and create models: user (yours, the default; works on any cluster) "
        "or managed (the cluster's managed identity; needs the roles infra/main.bicep grants it)",
    )


def _add_input_arguments(inputs) -> None:
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


def _add_sweep_arguments(sweep) -> None:
    sweep.add_argument("--sweep", metavar="FILE", help="a sweep YAML: search_space, sampling_algorithm, objective, limits, "
                       "early_termination (Azure ML's sweep job keys)")
    sweep.add_argument("--sweep-set", action="append", default=[], metavar="NAME=EXPR",
                       help="sweep one Fine-Tune input, e.g. lora_r=choice(8,16) or warmup_ratio=uniform(0,0.1) (a "
                       "dimension that is not a choice needs --sweep-limit max_total_trials=N); repeatable")
    sweep.add_argument("--sweep-limit", action="append", default=[], metavar="KEY=N",
                       help="set one of the sweep's limits: max_total_trials, max_concurrent_trials, timeout or "
                       "trial_timeout (whole seconds >= 60), e.g. trial_timeout=7200; repeatable")


def _add_maas_arguments(maas) -> None:
    maas.add_argument("--maas", action="store_true", help="submit a serverless fine-tuning job instead of the pipeline "
                      "(with --dry-run: print the job); see pipelines/maas.py")
    maas.add_argument("--model", help="with --maas: the base model's registry id, "
                      "azureml://registries/<registry>/models/<name>/versions/<version>")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code (0 ok, 1 a run failed, 2 a problem the user can fix)."""
    args = build_parser().parse_args(argv)
    from maap_finetune.common.errors import USER_ERROR_EXIT_CODE, UserError
    from pipelines.local.processes import Terminated
    from pipelines.local.step import StepFailed

    try:
        if args.maas:
            from pipelines import maas

            return maas.run(args, connect)
        if args.model:
            raise UserError("--model is for --maas (a registry model id); the pipeline takes --set model_name=...")
        if args.validate:
            return lint(args)
        if args.local:
            return run_local(args)
        return submit(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE
    except StepFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_RUN_FAILED
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM during --local (processes.Terminated)
        signal_name = "SIGTERM" if isinstance(err, Terminated) else "interrupt"
        print(f"stopped by {signal_name}: every step process was ended and its MLflow run marked KILLED", file=sys.stderr)
        return EXIT_SIGTERM if isinstance(err, Terminated) else EXIT_INTERRUPTED


def settings_from_args(args: argparse.Namespace, *, require_base_model: bool = True, require_training_data: bool = True):
    """PipelineSettings from the CLI, --set and the sweep flags read once (--sample-data: `with_sample_data`)."""
    from pipelines.definition.inputs import parse_set_options
    from pipelines.definition.settings import PipelineSettings
    from pipelines.definition.sweep import sweep_from_args

    inputs, step_inputs = parse_set_options(args.set)
    sweep = sweep_from_args(getattr(args, "sweep", None), getattr(args, "sweep_set", []), getattr(args, "sweep_limit", []))
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


def with_sample_data(settings, args: argparse.Namespace):
    """--sample-data: train on the bundled sample when no train_data/train_folder is set."""
    from pipelines.definition.inputs import SAMPLE_DATA

    inputs = settings.inputs
    if getattr(args, "sample_data", False) and not (inputs.get("train_data") or inputs.get("train_folder")):
        return dataclasses.replace(settings, inputs={**inputs, "train_data": str(SAMPLE_DATA)})
    return settings


def run_local(args: argparse.Namespace) -> int:
    """--local: the same pipeline on this machine (pipelines/local_run.py)."""
    from pipelines import local_run

    return local_run.run_local(args, settings_from_args(args, require_base_model=False))


# ------------------------------------------------------------------------------------------
# --validate and --dry-run: offline


def lint(args: argparse.Namespace) -> int:
    """--validate: every component and the pipeline, offline; with a base model, the capacity check too."""
    from pipelines.definition import lint as checks

    settings = with_sample_data(settings_from_args(args, require_base_model=False, require_training_data=False), args)
    problems = checks.lint_repo(settings)
    if not problems and (settings.inputs.get("model_path") or settings.inputs.get("model_name")):
        from maap_finetune.common.errors import ConfigErrors
        from pipelines.capacity import check_capacity
        from pipelines.definition.build import build_pipeline

        try:
            check_capacity(build_pipeline(settings), settings, force=args.force)
        except ConfigErrors as err:
            problems = err.problems
    if problems:
        print(f"{len(problems)} problem{'s' if len(problems) != 1 else ''}:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print(f"ok: {len(checks.component_files())} components and the pipeline are valid")
    from pipelines.definition.build import build_pipeline
    from pipelines.definition.environments import environments_line

    print(environments_line(build_pipeline(settings)))  # grpo's Fine-Tune runs in rft-gpu
    return 0


# ------------------------------------------------------------------------------------------
# Azure ML


def with_default_base_model(settings, out):
    """Fill in Phi-3-mini when no base model is set, and say so (dry run and submit alike)."""
    if not (settings.inputs.get("model_path") or settings.inputs.get("model_name")):
        settings.inputs["model_name"] = DEFAULT_AZURE_BASE_MODEL
        print(f"base model: {DEFAULT_AZURE_BASE_MODEL} (the default; --set model_name=... or model_path=... to change)", file=out)
    return settings


def submit(args: argparse.Namespace) -> int:
    """Build offline, check the workspace's computes and the capacity, submit (and with --stream, follow)."""
    from maap_finetune.common.errors import ConfigErrors, UserError
    from pipelines.capacity import check_capacity
    from pipelines.definition.build import build_pipeline, job_problems, pipeline_yaml
    from pipelines.definition.environments import environments_line

    if args.dry_run:
        settings = with_default_base_model(with_sample_data(settings_from_args(args), args), sys.stderr)
        job = build_pipeline(settings)
        print(pipeline_yaml(job), end="")
        print(environments_line(job), file=sys.stderr)  # grpo's Fine-Tune runs in rft-gpu
        check_capacity(job, settings, force=args.force)  # infra/main.bicep's VM sizes; prints the table
        return 0
    if not args.compute:
        raise UserError("--compute is required to submit to Azure ML (or use --local, --dry-run or --validate)")
    settings = with_default_base_model(with_sample_data(settings_from_args(args), args), sys.stdout)
    job = build_pipeline(settings)  # offline: bad inputs fail here, before any network call
    problems = job_problems(job)
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
    return _stream(ml_client, created.name) if args.stream else 0


def _stream(ml_client, job_name: str) -> int:
    from azure.ai.ml.exceptions import JobException

    try:
        with azure_errors("streaming the job's logs"):
            ml_client.jobs.stream(job_name)
    except JobException as err:
        print(f"error: pipeline job {job_name} did not complete: {first_line(err)}", file=sys.stderr)
        return EXIT_RUN_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
