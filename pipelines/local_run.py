"""`submit.py --local`: the local defaults applied to the settings, the pipeline built, and run on this machine.

It sits above both halves: it builds with `definition/` and runs with `local/` (which never import each
other's upper layers), so the local runner takes any PipelineJob.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from pipelines.definition.build import build_pipeline
from pipelines.definition.inputs import FINETUNE_STEP, REPO_ROOT, SAMPLE_DATA
from pipelines.definition.settings import PipelineSettings, resolve
from pipelines.definition.sweep import swept_inputs
from pipelines.local import defaults, runner
from pipelines.local.summary import print_summary
from pipelines.local.tracking import DEFAULT_TRACKING_URI, absolute_tracking_uri


def run_local(args: argparse.Namespace, settings: PipelineSettings) -> int:
    """Run `settings` here: no clusters, the sample data and the tiny model unless given, LOCAL_PROFILE with it."""
    workdir = Path.cwd()
    settings = dataclasses.replace(settings, compute=None, cpu_compute=None)  # no clusters on this machine
    inputs, step_inputs = dict(settings.inputs), settings.step_inputs
    if str(inputs.get("model_path") or "").startswith("models:/"):  # chaining: a model this registry holds
        uri = inputs["model_path"]
        tracking_uri = absolute_tracking_uri(args.tracking_uri or DEFAULT_TRACKING_URI, workdir)
        inputs["model_path"] = str(defaults.registered_model_folder(uri, tracking_uri, workdir / defaults.REGISTERED_MODELS_DIR))
        print(f"base model: {uri} from {tracking_uri}, at {inputs['model_path']}")
    uses_tiny_model = not inputs.get("model_path") and not inputs.get("model_name")
    applied: dict = {}
    if uses_tiny_model:  # LOCAL_PROFILE suits the tiny random model only; a real base model gets the YAML defaults
        swept = swept_inputs(settings.sweep)  # LOCAL_PROFILE leaves the swept inputs alone
        method_profile = defaults.LOCAL_METHOD_PROFILE.get(str(inputs.get("training_method")), {})
        profile = {k: v for k, v in {**defaults.LOCAL_PROFILE, **method_profile}.items()
                   if k not in swept | {f"{FINETUNE_STEP}.{n}" for n in swept}}
        inputs, step_inputs, applied = defaults.apply_local_profile(inputs, step_inputs, profile)
    if not inputs.get("train_data") and not inputs.get("train_folder"):
        inputs["train_data"] = str(SAMPLE_DATA)
        print(f"training data: {SAMPLE_DATA.relative_to(REPO_ROOT)} (the sample; --set train_data=... to change)")
    resolve(dataclasses.replace(settings, inputs=inputs, step_inputs=step_inputs))  # every problem, before the tiny model
    if args.compute or args.cpu_compute:
        print("note: --compute/--cpu-compute are ignored by --local")
    if applied:
        profile = ", ".join(f"{k}={v}" for k, v in applied.items())
        print(f"local profile (LOCAL_PROFILE in pipelines/local/defaults.py; --set overrides): {profile}")
    step_env = _step_environment(inputs, uses_tiny_model, workdir)
    job = build_pipeline(dataclasses.replace(settings, inputs=inputs, step_inputs=step_inputs, require_base_model=True))
    result = runner.run_pipeline(
        job,
        workdir=workdir,
        tracking_uri=args.tracking_uri or DEFAULT_TRACKING_URI,
        experiment_name=args.experiment,
        stream=args.stream,
        env=step_env,
    )
    print_summary(result)
    return 0


def _step_environment(inputs: dict, uses_tiny_model: bool, workdir: Path) -> dict[str, str]:
    """Build the tiny model when it is the base (into `inputs`); the variables every step gets, printed."""
    step_env: dict[str, str] = {}
    if uses_tiny_model:
        inputs["model_path"] = str(defaults.ensure_tiny_model(workdir / defaults.TINY_MODEL_DIR))
        print(f"base model: tiny Phi-3 at {inputs['model_path']}")
        step_env.update(defaults.TINY_MODEL_ENV)
    if not inputs.get("model_name"):
        # The base model is a local folder: nothing needs the Hugging Face Hub, and libraries that look
        # things up there anyway (model cards, licenses) would wait through retries without network.
        step_env["HF_HUB_OFFLINE"] = "1"
    step_env = {k: v for k, v in step_env.items() if k not in os.environ}
    if step_env:
        print("step environment: " + ", ".join(f"{k}={v}" for k, v in step_env.items()))
    return step_env
