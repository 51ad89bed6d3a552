"""Evaluate: the base and the fine-tuned model side by side on the test split, and the quality gate.

    python evaluate.py --test_data prepared/ --mlflow_model mlflow_model/ --model_path base/ \
        --trust_remote_code False --max_eval_samples 200 --max_new_tokens 64 --max_seq_length 2048 \
        --eval_batch_size 8 --sample_generations 8 --gate_metric loss --gate_min_improvement 0 \
        --parity_prompts 8 --parity_max_new_tokens 32 --evaluation out/

On rft data (Data Prep's task rft) give --graders, the file Fine-Tune trained with: each model's
completions are scored by it (no loss: the rows hold no answer), and metrics.json gains "graders",
each grader's distribution for base and fine-tuned (maap_finetune.evaluation.grading).

Writes to --evaluation: metrics.json ({"task", "base", "finetuned", "deltas", "lineage", ...}),
decision.json ({"passed", "metric", "values", "reason"}), generations.jsonl, report.md,
report.html and charts/*.png; logs metrics, the gate and the folder to the step's MLflow run. With
parity_prompts > 0 also parity_reference.json: the fine-tuned model's side of Export ONNX's parity checks,
computed while it is loaded here (maap_finetune.evaluation.parity_reference); on rft data it is
teacher-forced on the model's own greedy tokens, the rows holding no answer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from maap_finetune.common.cli import StrictParser, bounded, str2bool
from maap_finetune.common.errors import ConfigErrors, UserError, exit_on_user_error


@dataclass(frozen=True)
class Config:
    test_data: Path
    mlflow_model: Path
    model_path: Path | None
    model_name: str | None
    trust_remote_code: bool
    max_eval_samples: int
    max_new_tokens: int
    max_seq_length: int
    eval_batch_size: int
    sample_generations: int
    gate_metric: str
    gate_threshold: float | None
    gate_min_improvement: float | None
    parity_prompts: int
    parity_max_new_tokens: int
    general_max_new_tokens: int
    max_general_drift: float | None
    general_data: Path | None
    general_eval_tasks: str | None
    general_eval_limit: int
    general_eval_include: Path | None
    max_benchmark_drop: float | None
    evaluation: Path
    graders: Path | None = None

    @property
    def benchmark_tasks(self) -> list[str]:
        return [task.strip() for task in (self.general_eval_tasks or "").split(",") if task.strip()]


def build_parser() -> StrictParser:
    from maap_finetune.evaluation.gate import GATE_AUTO, GATE_OFF
    from maap_finetune.evaluation.metrics import METRICS

    parser = StrictParser(description="Evaluate the base and the fine-tuned model on the test split.")
    parser.add_argument("--test_data", type=Path, required=True)
    parser.add_argument("--mlflow_model", type=Path, required=True)
    parser.add_argument("--model_path", type=Path, default=None)
    parser.add_argument("--model_name", type=str, default=None)
    parser.add_argument("--trust_remote_code", type=str2bool, required=True)
    parser.add_argument("--max_eval_samples", type=bounded(int, 1), required=True)
    parser.add_argument("--max_new_tokens", type=bounded(int, 1, 4096), required=True)
    parser.add_argument("--max_seq_length", type=bounded(int, 16), required=True)
    parser.add_argument("--eval_batch_size", type=bounded(int, 1, 1024), required=True)
    parser.add_argument("--sample_generations", type=bounded(int, 0, 1000), required=True)
    parser.add_argument("--gate_metric", choices=[*METRICS, GATE_OFF, GATE_AUTO], required=True)
    parser.add_argument("--gate_threshold", type=float, default=None)
    parser.add_argument("--gate_min_improvement", type=float, default=None)
    parser.add_argument("--parity_prompts", type=bounded(int, 0, 1000), required=True)
    parser.add_argument("--parity_max_new_tokens", type=bounded(int, 1, 1024), required=True)
    parser.add_argument("--general_max_new_tokens", type=bounded(int, 0, 512), required=True)
    parser.add_argument("--max_general_drift", type=bounded(float, 0), default=None)
    parser.add_argument("--general_data", type=Path, default=None)
    parser.add_argument("--general_eval_tasks", type=str, default=None)
    parser.add_argument("--general_eval_limit", type=bounded(int, 1, 100000), required=True)
    parser.add_argument("--general_eval_include", type=Path, default=None)
    parser.add_argument("--max_benchmark_drop", type=bounded(float, 0), default=None)
    parser.add_argument("--evaluation", type=Path, required=True)
    parser.add_argument("--graders", type=Path, default=None)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> Config:
    args = build_parser().parse_args(argv)
    config = Config(**vars(args))
    problems = []
    if not config.test_data.is_dir():
        problems.append(f"--test_data {config.test_data} is not a folder (give Data Prep's output)")
    if not (config.mlflow_model / "MLmodel").is_file():
        problems.append(f"--mlflow_model {config.mlflow_model} is not an MLflow model folder (MLmodel is missing)")
    if bool(config.model_path) == bool(config.model_name):
        problems.append("give exactly one base model: --model_path (a folder) or --model_name (a Hugging Face id)")
    if config.max_new_tokens >= config.max_seq_length:
        problems.append(
            f"--max_new_tokens {config.max_new_tokens} leaves no room for the prompt within --max_seq_length "
            f"{config.max_seq_length}; lower it or raise max_seq_length"
        )
    if config.parity_prompts and config.parity_max_new_tokens >= config.max_seq_length:
        problems.append(
            f"--parity_max_new_tokens {config.parity_max_new_tokens} leaves no room for the prompt within "
            f"--max_seq_length {config.max_seq_length}; lower it or raise max_seq_length"
        )
    if config.graders is not None and not config.graders.is_file():
        problems.append(f"--graders {config.graders}: no such file (give the graders JSON Fine-Tune trained with)")
    problems += _general_problems(config)
    if problems:
        raise ConfigErrors(problems, header="evaluate: invalid inputs")
    return config


def _general_problems(config: Config) -> list[str]:
    """The general-ability inputs, checked before any model loads."""
    from maap_finetune.evaluation import general

    problems = []
    if config.general_data is not None:
        try:
            general.general_data_format(config.general_data)
        except UserError as err:
            problems.append(str(err))
    if config.benchmark_tasks:
        from maap_finetune.evaluation import benchmarks

        include = str(config.general_eval_include) if config.general_eval_include else None
        problems += benchmarks.task_problems(config.benchmark_tasks, include)
    return problems


def evaluate_model(label: str, model_dir: str, tokenizer_dir: str, examples, generate_rows, config, prepared,
                   pairs=None, while_loaded=None, graders=None) -> dict:
    """Loss, generations and task metrics of one model (with `pairs`, how it ranks them; with `graders`, rft:
    the graders' scores instead of loss). Each hook of `while_loaded` ({name: hook(loaded)}) runs before the
    model is freed; their results are returned as "while_loaded" ({name: result})."""
    import gc

    import torch

    from maap_finetune.evaluation import generation, metrics, tool_calls

    print(f"[evaluate] {label}: loading {model_dir}", flush=True)
    loaded = generation.load_model(model_dir, tokenizer_dir, config.trust_remote_code)
    loss = None if graders is not None else generation.compute_loss(
        loaded, examples, config.max_seq_length, config.eval_batch_size)
    chosen = [examples[i] for i in generate_rows]
    outputs, references = generation.generate(
        loaded, chosen, config.max_new_tokens, config.max_seq_length, config.eval_batch_size
    )
    grades = None
    if graders is not None:
        from maap_finetune.evaluation import grading

        grades = grading.grade_outputs(graders, outputs, chosen, prepared.split_path("test"))
        values = grading.grade_values(graders, grades)
    else:
        values = {"loss": loss.loss, "perplexity": loss.perplexity}
        values.update(
            metrics.generation_metrics(prepared.task, outputs, references, prepared.label_set, prepared.templates)
        )
    called = [(out, ex.reference_calls) for out, ex in zip(outputs, chosen) if ex.reference_calls is not None]
    values.update(tool_calls.tool_call_metrics([o for o, _ in called], [r for _, r in called]))
    prompts = [generation.prompt_text(ex, loaded.tokenizer) for ex in chosen]
    logps = None
    if pairs is not None:
        from maap_finetune.evaluation import preference

        logps = preference.pair_logps(loaded, pairs, config.max_seq_length, config.eval_batch_size)
        values.update(preference.preference_metrics(logps))
    import time

    extra, hook_cost = {}, {}
    for name, hook in (while_loaded or {}).items():
        wall, cpu = time.perf_counter(), time.process_time()
        extra[name] = hook(loaded)
        hook_cost[name] = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
    del loaded
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    print(f"[evaluate] {label}: " + ", ".join(f"{k}={v:.4f}" for k, v in values.items()), flush=True)
    return {
        "metrics": values,
        "loss_details": {
            "scored_tokens": loss.scored_tokens,
            "truncated_examples": loss.truncated_examples,
            "skipped_examples": loss.skipped_examples,
        } if loss is not None else {},
        "per_example_loss": loss.per_example_loss if loss is not None else [],
        "grades": grades,
        "outputs": outputs,
        "references": references,
        "prompts": prompts,
        "pair_logps": logps,
        "while_loaded": extra,
        "hook_cost": hook_cost,
    }


def run(config: Config) -> dict:
    from maap_finetune.common import tracking
    from maap_finetune.data.prepared import load_prepared
    from maap_finetune.evaluation import gate, generation, lineage, metrics, report
    from maap_finetune.evaluation.tool_calls import TOOL_METRICS
    from maap_finetune.models.hub import fetch_hub_model
    from maap_finetune.models.source import resolve_model_source

    prepared = load_prepared(config.test_data)
    if prepared.task not in metrics.TASKS:
        raise UserError(f"{prepared.root / 'metadata.json'}: task {prepared.task!r} is not one of {', '.join(metrics.TASKS)}")
    gate_metric = gate.resolve_metric(config.gate_metric, prepared.task)
    quality_gate = gate.Gate(gate_metric, config.gate_threshold, config.gate_min_improvement)
    problems = gate.gate_problems(quality_gate, prepared.task)
    if problems:
        raise ConfigErrors(problems, header="evaluate: invalid quality gate")
    graders = _graders(config, prepared)
    base_source = fetch_hub_model(resolve_model_source(config.model_path, config.model_name))
    tuned_source = resolve_model_source(config.mlflow_model, None)
    # Preference rows are examples whose reference is the chosen answer, and pairs to rank.
    examples = generation.read_examples(prepared.split_path("test"), prepared.format, config.max_eval_samples)
    pairs = None
    if prepared.format == "preference":
        from maap_finetune.evaluation import preference

        pairs = preference.read_pairs(prepared.split_path("test"), config.max_eval_samples)
    if graders is not None:
        from maap_finetune.evaluation import grading

        grading.check_rows(graders, examples, prepared.split_path("test"))
    if not examples:
        raise UserError(
            f"{prepared.split_path('test')}: the test split is empty; give Data Prep a test_ratio above 0 "
            "(or more rows) so there is something to evaluate"
        )
    if metrics.TASK_GENERATION_METRICS[prepared.task]:
        generate_rows = list(range(len(examples)))
    else:  # sample generations, and every row whose reference is a tool call (it is scored)
        shown = min(config.sample_generations, len(examples))
        generate_rows = [i for i, ex in enumerate(examples) if i < shown or ex.reference_calls is not None]
    # With function calling, the base model is prompted with the template Fine-Tune trained with (saved
    # with the fine-tuned tokenizer): a base template that drops tools would make the comparison meaningless.
    uses_tools = any(ex.tools or ex.reference_calls or any(m["role"] == "tool" for m in ex.messages or ())
                     for ex in examples)
    base_tokenizer = tuned_source.tokenizer if uses_tools else base_source.tokenizer

    reference = None
    if config.parity_prompts:
        from maap_finetune.evaluation import parity_reference

        parity_examples = generation.read_examples(prepared.split_path("test"), prepared.format, config.parity_prompts)

        def reference(loaded):  # Export ONNX's PyTorch side, from the merged weights it builds from
            print(f"[evaluate] fine-tuned: parity reference for {len(parity_examples)} prompts", flush=True)
            return parity_reference.build_reference(
                loaded, parity_examples, tuned_source.model, tuned_source.tokenizer, prepared.split_path("test"),
                config.parity_max_new_tokens, config.max_seq_length)

    general_hooks = general_ability_hooks(config)
    results = {"base": evaluate_model("base", base_source.model, base_tokenizer, examples, generate_rows, config,
                                      prepared, pairs, while_loaded=general_hooks["base"], graders=graders)}
    tuned_hooks = {**general_hooks["finetuned"], **({"parity": reference} if reference is not None else {})}
    results["finetuned"] = evaluate_model("fine-tuned", tuned_source.model, tuned_source.tokenizer, examples,
                                          generate_rows, config, prepared, pairs, while_loaded=tuned_hooks,
                                          graders=graders)
    base_values, tuned_values = results["base"]["metrics"], results["finetuned"]["metrics"]
    reward = None
    if pairs is not None:
        from maap_finetune.evaluation import preference

        base_scores, tuned_scores = results["base"]["pair_logps"], results["finetuned"]["pair_logps"]
        reward = preference.implicit_reward(base_scores, tuned_scores,
                                            lineage.model_metadata(config.mlflow_model).get("dpo_beta"))
        base_values["implicit_reward_accuracy"] = preference.implicit_reward(base_scores, base_scores, None)["accuracy"]
        tuned_values["implicit_reward_accuracy"] = reward["accuracy"]
    summary = {
        "task": prepared.task,
        "rows_in_test_split": prepared.split_rows["test"],
        "rows_evaluated": len(examples),
        "rows_generated": len(generate_rows),
        "max_new_tokens": config.max_new_tokens,
        "base": base_values,
        "finetuned": tuned_values,
        "deltas": {k: tuned_values[k] - v for k, v in base_values.items() if k in tuned_values},
        "higher_is_better": {k: k in TOOL_METRICS or metrics.METRICS[k].higher_is_better for k in base_values
                             if k in metrics.METRICS or k in TOOL_METRICS},
        "loss_details": {side: results[side]["loss_details"] for side in results},
        "lineage": {
            "base_model": base_source.display_name,
            "task": prepared.task,
            "dataset_sha256": lineage.dataset_sha256(prepared),
            **{k: v for k, v in lineage.model_metadata(config.mlflow_model).items() if k in ("peft_method", "merged")},
        },
    }
    if reward is not None:
        summary["implicit_reward"] = reward
    if graders is not None:
        from maap_finetune.evaluation import grading

        summary["graders"] = grading.grader_summary(graders, results["base"]["grades"], results["finetuned"]["grades"])
    summary["general"] = general_summary(config, results)
    decision = gate.decide(quality_gate, base_values, tuned_values, summary["loss_details"])
    decision = gate.apply_general_limits(decision, summary["general"], config.max_general_drift,
                                         config.max_benchmark_drop)
    samples = [
        {
            "line": examples[i].line,
            "prompt": results["base"]["prompts"][n],
            "reference": results["base"]["references"][n],
            "base_output": results["base"]["outputs"][n],
            "finetuned_output": results["finetuned"]["outputs"][n],
            **_sample_scores(graders, examples[i], results, n),
        }
        for n, i in enumerate(generate_rows)
    ]
    out = config.evaluation
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(_json_safe(summary), indent=2) + "\n", encoding="utf-8")
    gate.write_decision(out, _json_safe(decision))
    if "parity" in results["finetuned"]["while_loaded"]:
        from maap_finetune.evaluation.parity_reference import write_reference

        write_reference(out, results["finetuned"]["while_loaded"]["parity"])
    with open(out / "generations.jsonl", "w", encoding="utf-8") as handle:
        for sample in samples:
            handle.write(json.dumps(sample, ensure_ascii=False) + "\n")
    shown = samples[: config.sample_generations]
    report.write_charts(
        out / "charts", summary, {side: results[side]["per_example_loss"] for side in results}
    )
    report.write_markdown(out / "report.md", summary, decision, shown)
    report.write_html(out / "report.html", summary, decision, shown)

    with tracking.step_run():
        tracking.log_params(
            {
                "task": prepared.task,
                "rows_evaluated": len(examples),
                "base_model": base_source.display_name,
                "gate_metric": gate_metric,
                "gate_threshold": config.gate_threshold,
                "gate_min_improvement": config.gate_min_improvement,
                "max_new_tokens": config.max_new_tokens,
            }
        )
        flat = {f"base_{k}": v for k, v in base_values.items()}
        flat.update({f"finetuned_{k}": v for k, v in tuned_values.items()})
        flat.update({f"delta_{k}": v for k, v in summary["deltas"].items()})
        flat["quality_gate_passed"] = 1.0 if decision["passed"] else 0.0
        flat.update(general_metrics(summary["general"]))
        if "graders" in summary:
            from maap_finetune.evaluation.grading import distribution_metrics

            flat.update(distribution_metrics(summary["graders"]))
        if "implicit_reward" in summary:  # its accuracy is logged as finetuned_implicit_reward_accuracy
            flat["implicit_reward_margin"] = summary["implicit_reward"]["mean_margin"]
        tracking.log_metrics({k: v for k, v in flat.items() if math.isfinite(v)})
        if tracking.is_main_process():
            import mlflow

            mlflow.set_tag("quality_gate", decision["reason"][:5000])
        tracking.log_artifacts(out, artifact_path="evaluation")
    print(f"[evaluate] {decision['reason']}", flush=True)
    return summary


def general_ability_hooks(config: Config) -> dict[str, dict]:
    """What each model runs while it is loaded for the general-ability figures: the base writes the drift
    reference and both score it; both run the user's general_data and the lm-eval tasks."""
    from maap_finetune.evaluation import general, generation

    hooks: dict[str, dict] = {"base": {}, "finetuned": {}}
    if config.general_max_new_tokens:
        prompts = general.read_prompts(general.prompts_path(Path(__file__).resolve().parent))
        shared: dict[str, general.DriftReference] = {}
        budget = config.eval_batch_size * config.max_seq_length  # tokens per batch, as the loss batches

        def base_drift(loaded):
            shared["reference"] = general.base_reference(loaded, prompts, config.general_max_new_tokens, budget)
            return shared["reference"].base_scores

        hooks["base"]["drift"] = base_drift
        hooks["finetuned"]["drift"] = lambda loaded: general.score(loaded, shared["reference"], budget)
    if config.general_data is not None:
        rows = generation.read_examples(config.general_data, general.general_data_format(config.general_data),
                                        config.max_eval_samples)
        for side in hooks:
            hooks[side]["general_data"] = lambda loaded: generation.compute_loss(
                loaded, rows, config.max_seq_length, config.eval_batch_size).loss
    if config.benchmark_tasks:
        from maap_finetune.evaluation import benchmarks

        include = str(config.general_eval_include) if config.general_eval_include else None
        for side in hooks:
            hooks[side]["benchmarks"] = lambda loaded: benchmarks.run(
                loaded.model, loaded.tokenizer, config.benchmark_tasks, config.general_eval_limit, include,
                batch_size=config.eval_batch_size, device=str(loaded.device))
    return hooks


def general_summary(config: Config, results: dict) -> dict:
    """metrics.json's "general" section: drift, general_data loss and benchmark scores, base vs fine-tuned."""
    from maap_finetune.evaluation import general

    base, tuned = results["base"]["while_loaded"], results["finetuned"]["while_loaded"]
    spent = [cost for side in ("base", "finetuned") for name, cost in results[side]["hook_cost"].items()
             if name in GENERAL_HOOKS]  # not the parity reference
    cost = {kind: sum(item[kind] for item in spent) for kind in ("wall_s", "cpu_s")}
    summary: dict = {"prompts_max_new_tokens": config.general_max_new_tokens, "cost": cost}
    if "drift" in base:
        summary["drift"] = general.drift_summary(base["drift"], tuned["drift"])
    if "general_data" in base:
        summary["general_data"] = {"file": str(config.general_data), "base_loss": base["general_data"],
                                   "finetuned_loss": tuned["general_data"],
                                   "delta": tuned["general_data"] - base["general_data"]}
    if "benchmarks" in base:
        from maap_finetune.evaluation import benchmarks

        summary["benchmarks"] = {}
        for task, scores in base["benchmarks"].items():
            metric, base_value = benchmarks.primary_metric(scores)
            tuned_value = tuned["benchmarks"].get(task, {}).get(metric, math.nan)
            summary["benchmarks"][task] = {"metric": metric, "base": base_value, "finetuned": tuned_value,
                                           "drop": base_value - tuned_value,
                                           "limit": config.general_eval_limit}
    return summary


GENERAL_HOOKS = ("drift", "general_data", "benchmarks")  # what general_ability_hooks may add


def general_metrics(general: dict) -> dict[str, float]:
    """The general-ability figures as MLflow metrics."""
    flat = {}
    drift = general.get("drift")
    if drift:
        flat.update({"general_drift_loss_base": drift["base_drift_loss"],
                     "general_drift_loss_finetuned": drift["finetuned_drift_loss"],
                     "general_drift_relative": drift["drift_relative"], "general_agreement": drift["agreement"]})
    if "general_data" in general:
        flat["general_data_loss_base"] = general["general_data"]["base_loss"]
        flat["general_data_loss_finetuned"] = general["general_data"]["finetuned_loss"]
    for task, score in general.get("benchmarks", {}).items():
        flat[f"benchmark_{task}_{score['metric']}_base"] = score["base"]
        flat[f"benchmark_{task}_{score['metric']}_finetuned"] = score["finetuned"]
    return flat


def _graders(config: Config, prepared):
    """rft data is graded by the graders file; any other data has no use for one."""
    if prepared.format == "rft" and config.graders is None:
        raise UserError(f"{prepared.root / 'metadata.json'}: the test data is rft (prompts without answers); give "
                        "graders, the graders file Fine-Tune trained with, to score the completions")
    if prepared.format != "rft" and config.graders is not None:
        raise UserError(f"--graders applies to rft data, but {prepared.root} holds task {prepared.task!r}; remove it")
    if config.graders is None:
        return None
    from maap_finetune.graders import load_graders

    return load_graders(config.graders)


def _sample_scores(graders, example, results, n: int) -> dict:
    """rft: the reference fields the graders read, and each model's scores, for the side-by-side table."""
    if graders is None:
        return {}
    fields = {name: example.row[name] for name in sorted(graders.item_fields) if name in example.row}
    return {"reference": json.dumps(fields, ensure_ascii=False) if fields else "",
            **{f"{side}_scores": {k: v[n] for k, v in results[side]["grades"].items()} for side in results}}


def _json_safe(value):
    """NaN/inf are not JSON: write them as strings ("nan", "inf") rather than invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> dict:
    return run(parse_args(argv))


if __name__ == "__main__":
    exit_on_user_error(main)
