"""Serverless fine-tuning (Model-as-a-Service) of the same data file the pipeline trains on.

    python pipelines/submit.py --maas --model azureml://registries/azureml/models/Phi-4-mini-instruct/labels/latest \\
        --set train_data=chats.jsonl --set epochs=2
    python pipelines/submit.py --maas --dry-run --model ... --set train_data=chats.jsonl   # print the job, no network

Data Prep runs here first, with the same checks and the same report as the pipeline's first step, so
bad rows fail before anything is uploaded or paid for. It runs as the local runner runs any pipeline
node: its YAML command rendered as text and run with `bash -c` in a snapshot of its code, so a value
quoted wrongly for Azure fails here too. The prepared train and validation splits are uploaded as data
assets (versioned by content) and a chat-completion job is created with
`azure.ai.ml.finetuning.create_finetuning_job`. Serverless fine-tuning offers only a few knobs:
`HYPERPARAMETERS` maps ours to the service's names (those of the azure-ai-ml samples); any other input
is an error that says what to do instead.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maap_finetune.common.errors import ConfigErrors, UserError
from pipelines import maas_catalog
from pipelines.registry_models import REGISTRY_MODEL

# Our input -> the serverless job's hyperparameter (names as in the azureml-examples MaaS notebook and CLI sample).
HYPERPARAMETERS = {
    "epochs": "num_train_epochs",
    "learning_rate": "learning_rate",
    "per_device_train_batch_size": "per_device_train_batch_size",
}
# Pipeline inputs that only feed Data Prep: they run here, unchanged.
DATA_PREP_INPUTS = ("train_data", "train_folder", "validation_data", "test_data", "task", "on_invalid",
                    "validation_ratio", "test_ratio")
OUTPUT_NAME_INPUT = "registered_model_name"  # names the registered output model
# Why an input has no serverless counterpart, for the error message.
NOT_OFFERED = {
    "model_path": "give the base model with --model (a registry model id); the service loads it itself",
    "model_name": "give the base model with --model (a registry model id, not a Hugging Face id)",
    "chat_template": "the service renders conversations with the model's own chat template",
    "max_seq_length": "the service sets the sequence length for the model",
    "trust_remote_code": "the service runs the registry model's own code",
}


@dataclass
class MaasPlan:
    model: str
    data_prep_inputs: dict[str, Any]  # Data Prep's inputs set here (converted); the rest take the YAML defaults
    hyperparameters: dict[str, str]
    output_model_name_prefix: str
    experiment: str
    job_type: str = maas_catalog.CHAT_COMPLETION  # the serverless task (maas_catalog.TASKS)
    notes: list[str] = field(default_factory=list)


def _format(value: Any) -> str:
    return format(value, ".10g") if isinstance(value, float) else str(value)


def plan_job(args: argparse.Namespace) -> MaasPlan:
    """Check the CLI for a serverless job and map its inputs; collect every problem first. No network."""
    from pipelines.definition.inputs import input_spec, parse_set_options

    problems = _flag_problems(args)
    inputs, step_inputs = parse_set_options(args.set)
    data_prep_values, hyperparameters, prefix = _map_inputs(inputs, problems)
    problems += _data_prep_step_inputs(step_inputs, data_prep_values)
    task = data_prep_values.get("task") or input_spec("data_prep", "task").default
    problem = maas_catalog.task_problem(task)
    if problem:
        problems.append(problem)
    notes = _model_notes(args, problems)
    if prefix is None:
        prefix = input_spec("register", OUTPUT_NAME_INPUT).default
    if not data_prep_values.get("train_data") and not data_prep_values.get("train_folder"):
        # As for a pipeline submission: no silent training on the bundled sample.
        from pipelines.definition.inputs import NO_TRAINING_DATA, SAMPLE_DATA, convert_value

        if getattr(args, "sample_data", False):
            data_prep_values["train_data"] = convert_value("--sample-data", input_spec("data_prep", "train_data"),
                                                           str(SAMPLE_DATA))
        else:
            problems.append(NO_TRAINING_DATA)
    if problems:
        raise ConfigErrors(problems, header="cannot plan the serverless fine-tuning job")
    if not hyperparameters:
        notes.append("no epochs/learning_rate/per_device_train_batch_size set: the service picks its defaults for "
                     "the model")
    return MaasPlan(model=args.model, data_prep_inputs=data_prep_values, hyperparameters=hyperparameters,
                    output_model_name_prefix=prefix, experiment=args.experiment, job_type=maas_catalog.TASKS[task][0],
                    notes=notes)


def _flag_problems(args: argparse.Namespace) -> list[str]:
    """The submit.py flags that do not combine with --maas, and a missing or malformed --model."""
    problems: list[str] = []
    if getattr(args, "local", False) or getattr(args, "validate", False):
        problems.append("--maas runs Data Prep here and trains in Azure; it does not combine with --local or --validate")
    if not args.model:
        problems.append("--maas needs --model, a registry model id such as "
                        "azureml://registries/azureml/models/Phi-4-mini-instruct/labels/latest")
    elif not REGISTRY_MODEL.match(args.model):
        problems.append(f"--model {args.model!r} is not a registry model id; give "
                        "azureml://registries/<registry>/models/<name>/versions/<version> (the model card's asset id)")
    for flag, value in (("--compute", args.compute), ("--cpu-compute", args.cpu_compute)):
        if value:
            problems.append(f"{flag} does not apply to --maas: serverless fine-tuning runs on the service's GPUs")
    if args.instance_count != 1 or args.process_count_per_instance != 1:
        problems.append("--instance-count/--process-count-per-instance do not apply to --maas (the service scales it)")
    return problems


def _map_inputs(inputs: dict[str, Any], problems: list[str]) -> tuple[dict[str, Any], dict[str, str], Any]:
    """Pipeline inputs -> (Data Prep's values, the service's hyperparameters, the output name); problems appended."""
    from pipelines.definition.inputs import PIPELINE_INPUTS, check_local_input, convert_value, input_spec

    data_prep_values: dict[str, Any] = {}
    hyperparameters: dict[str, str] = {}
    prefix = None
    for name, raw in inputs.items():
        if name == "training_method":  # checked against maas_catalog.TRAINING_METHODS, which names more than sft/dpo
            problem = maas_catalog.method_problem(str(raw))
            if problem:
                problems.append(problem)
            continue
        if name not in PIPELINE_INPUTS:
            problems.append(f"--set {name}: no such pipeline input")
            continue
        step, component_input = PIPELINE_INPUTS[name][0]
        try:
            value = check_local_input(f"--set {name}", convert_value(f"--set {name}", input_spec(step, component_input), raw))
        except ValueError as err:
            problems.append(str(err))
            continue
        if name in DATA_PREP_INPUTS:
            data_prep_values[name] = value
        elif name in HYPERPARAMETERS:
            hyperparameters[HYPERPARAMETERS[name]] = _format(value)
        elif name == OUTPUT_NAME_INPUT:
            prefix = value
        else:
            why = NOT_OFFERED.get(name, "the service chooses how to train and runs no evaluate/register step")
            problems.append(f"--set {name}: serverless fine-tuning does not offer {name} ({why}); remove it, or drop "
                            f"--maas to run the pipeline on your own compute, where every input applies")
    return data_prep_values, hyperparameters, prefix


def _data_prep_step_inputs(step_inputs: dict[str, dict[str, Any]], data_prep_values: dict[str, Any]) -> list[str]:
    """`--set data_prep.<input>` into `data_prep_values`; any other step's inputs are refused."""
    from pipelines.definition.inputs import check_local_input, convert_value, load_step_component

    problems: list[str] = []
    for step, values in step_inputs.items():
        if step != "data_prep":
            problems.append(f"--set {step}.{', '.join(values)}: under --maas only Data Prep runs on your side; "
                            f"serverless fine-tuning takes only {', '.join(HYPERPARAMETERS)} and {OUTPUT_NAME_INPUT}")
            continue
        component = load_step_component("data_prep")
        for name, raw in values.items():
            if name not in component.inputs:
                problems.append(f"--set data_prep.{name}: Data Prep has no input {name!r}")
            elif name in ("model_path", "chat_template"):
                problems.append(f"--set data_prep.{name}: {NOT_OFFERED[name]}")
            else:
                try:
                    label = f"--set data_prep.{name}"
                    data_prep_values[name] = check_local_input(label, convert_value(label, component.inputs[name], raw))
                except ValueError as err:
                    problems.append(str(err))
    return problems


def _model_notes(args: argparse.Namespace, problems: list[str]) -> list[str]:
    """What the serverless table says of --model: a warning when it is not listed, a problem when it trains nowhere."""
    notes: list[str] = []
    if args.model and REGISTRY_MODEL.match(args.model):
        model_name = args.model.split("/")[5]
        entry = maas_catalog.lookup(model_name)
        if entry is None:
            notes.append(f"warning: {model_name} is not in the serverless fine-tuning table ({maas_catalog.SOURCE}); "
                         "the service decides whether and where it trains it")
        elif not entry.regions:
            problems.append(f"--model {args.model}: serverless fine-tuning trains {entry.name} in no region "
                            f"({maas_catalog.SOURCE}); models it trains: {', '.join(maas_catalog.fine_tunable())}; "
                            f"or fine-tune {model_name} on your own compute (--set model_path=...)")
    return notes


def data_prep_step(values: dict[str, Any]):
    """Data Prep with `values` as a one-node pipeline, planned by the local runner like any pipeline node."""
    from azure.ai.ml import dsl

    from pipelines.definition.inputs import load_step_component
    from pipelines.local.plan import plan_pipeline

    component = load_step_component("data_prep")

    @dsl.pipeline(name="maas_data_prep", display_name="Data Prep for serverless fine-tuning")
    def maas_data_prep():
        data_prep = component(**values)  # the DSL names the node after this variable
        return {"prepared_data": data_prep.outputs.prepared_data}

    (step,) = plan_pipeline(maas_data_prep())
    return step


def run_data_prep(maas_plan: MaasPlan, workdir: Path, tracking_uri: str) -> tuple[Path, Path]:
    """Data Prep through the local runner, as `--local` runs it; its log prints here. Returns train, validation."""
    from pipelines.local.processes import sigterm_unwinds
    from pipelines.local.step import StepFailed, run_step

    step = data_prep_step(maas_plan.data_prep_inputs)
    # A store named in the environment wins, as it does for Data Prep run by hand.
    env = {} if os.environ.get("MLFLOW_TRACKING_URI") else {"MLFLOW_TRACKING_URI": tracking_uri}
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"data prep (here, before anything is uploaded): {workdir}", flush=True)
    try:
        with sigterm_unwinds():
            result = run_step(step, workdir / step.name, {}, env=env, stream=True, out=sys.stdout)
    except StepFailed as err:
        raise UserError(f"Data Prep stopped (exit code {err.exit_code}; see above, log: {err.log_path}); nothing was "
                        "uploaded or submitted. Fix the data, or --set on_invalid=skip to drop the bad rows") from None
    prepared = result.outputs["prepared_data"]
    meta = json.loads((prepared / "metadata.json").read_text(encoding="utf-8"))
    splits = meta["splits"]
    if splits["validation"]["rows"] == 0:
        raise UserError("the validation split is empty; serverless fine-tuning needs one: keep validation_ratio "
                        "above 0 or give validation_data")
    if splits["test"]["rows"]:
        maas_plan.notes.append(f"the test split ({splits['test']['rows']} rows) is not sent: the serverless job has "
                               "no evaluate step (--set test_ratio=0 to train on those rows)")
    return prepared / splits["train"]["file"], prepared / splits["validation"]["file"]


def build_job(maas_plan: MaasPlan, training_data: str, validation_data: str, dataset_sha256: str):
    """The serverless fine-tuning job (`azure.ai.ml.finetuning.create_finetuning_job`) of the plan's task type."""
    import warnings

    from azure.ai.ml.finetuning import create_finetuning_job

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the SDK marks the API experimental on every call
        return create_finetuning_job(
            model=maas_plan.model,
            task=maas_plan.job_type,
            training_data=training_data,
            validation_data=validation_data,
            hyperparameters=maas_plan.hyperparameters or None,
            output_model_name_prefix=maas_plan.output_model_name_prefix,
            experiment_name=maas_plan.experiment,
            display_name=f"{maas_plan.output_model_name_prefix} (serverless)",
            tags={"created_by": "maap-finetune", "dataset_sha256": dataset_sha256},
        )


def rest_payload(job) -> dict:
    """What the service receives for `job` (the REST body of the create call)."""
    return job._to_rest_object().as_dict()


def file_sha256(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def upload(ml_client, path: Path, name: str, description: str) -> str:
    """A uri_file data asset versioned by content (re-running with the same data reuses it); its id."""
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.entities import Data

    asset = Data(name=name, version=file_sha256(path)[:16], path=str(path), type=AssetTypes.URI_FILE,
                 description=description)
    return ml_client.data.create_or_update(asset).id


def asset_name(prefix: str, split: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", f"{prefix}-{split}")


def run(args: argparse.Namespace, connect) -> int:
    """`submit.py --maas`: Data Prep here, then the serverless job (or, with --dry-run, its payload)."""
    from pipelines.azure_ml import azure_errors

    workdir = Path.cwd() / "runs" / f"maas-{time.strftime('%Y%m%d-%H%M%S')}"
    maas_plan = plan_job(args)
    # Absolute, as the local runner makes it: Data Prep runs in its snapshot folder, not here.
    from pipelines.local.tracking import DEFAULT_TRACKING_URI, absolute_tracking_uri

    tracking_uri = absolute_tracking_uri(args.tracking_uri or DEFAULT_TRACKING_URI, Path.cwd())
    ml_client = None
    if not args.dry_run:  # the model, regions and marketplace offer first: nothing runs or uploads for a refused job
        from pipelines.maas_workspace import check_workspace
        from pipelines.registry_models import parse

        ml_client = connect(args)
        with azure_errors("checking the model against the workspace"):
            model = check_workspace(ml_client, maas_plan.model)
        if parse(maas_plan.model).label and getattr(model, "id", None):
            maas_plan.model = str(model.id)  # the version the label names, as the job records it
    train, validation = run_data_prep(maas_plan, workdir, tracking_uri)
    sha = file_sha256(train, validation)
    for note in maas_plan.notes:
        print(note if note.startswith("warning: ") else f"note: {note}")
    if args.dry_run:
        job = build_job(maas_plan, str(train), str(validation), sha)
        print("serverless fine-tuning job (REST payload; the local files are uploaded as data assets on submit):")
        print(json.dumps(rest_payload(job), indent=2))
        return 0
    prefix = maas_plan.output_model_name_prefix
    with azure_errors("uploading the prepared data"):
        train_id = upload(ml_client, train, asset_name(prefix, "train"), "maap-finetune Data Prep train split")
        validation_id = upload(ml_client, validation, asset_name(prefix, "validation"),
                               "maap-finetune Data Prep validation split")
    job = build_job(maas_plan, train_id, validation_id, sha)
    with azure_errors("submitting the serverless fine-tuning job"):
        created = ml_client.jobs.create_or_update(job, experiment_name=maas_plan.experiment)
    print(f"submitted serverless fine-tuning job {created.name} to experiment {maas_plan.experiment!r}")
    print(f"studio_url: {created.studio_url}", flush=True)
    return 0
