"""Data Prep: check a dataset row by row and write seeded splits in the prepared-data contract.

    python data_prep.py --train_data ../../data/sample/chat.jsonl --task chat --on_invalid fail \
        --validation_ratio 0.1 --test_ratio 0.1 --seed 42 --max_seq_length 2048 \
        --prepared_data /tmp/prepared --data_report /tmp/report

    python data_prep.py --train_data ../../data/sample/classification.csv --task classification \
        --on_invalid skip --validation_ratio 0.2 --test_ratio 0.2 --seed 1 --max_seq_length 512 \
        --prepared_data /tmp/prepared --data_report /tmp/report

Defaults live in spec.yaml; the default templates of each task in templates.yaml beside this file.
Output format: OUTPUT_CONTRACT.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maap_finetune.common.cli import StrictParser, bounded
from maap_finetune.common.errors import ConfigErrors, UserError, exit_on_user_error
from maap_finetune.data.tasks import TASKS

TEMPLATES_FILE = Path(__file__).resolve().parent / "templates.yaml"
KEY_FLAGS = ("messages_key", "prompt_key", "input_key", "completion_key", "text_key", "label_key", "token_key",
             "tag_key", "source_key", "target_key", "context_key", "question_key", "answers_key", "document_key",
             "summary_key", "chosen_key", "rejected_key")


@dataclass
class Config:
    task: str
    on_invalid: str
    validation_ratio: float
    test_ratio: float
    seed: int
    max_seq_length: int
    truncation: str
    max_too_long_ratio: float
    prepared_data: Path
    data_report: Path
    train_data: Path | None = None
    train_folder: Path | None = None
    validation_data: Path | None = None
    test_data: Path | None = None
    model_path: Path | None = None
    chat_template: Path | None = None
    templates_file: Path | None = None
    graders: Path | None = None
    keys: dict[str, str | None] = field(default_factory=dict)
    label_names: list[str] | None = None
    drop_columns: list[str] = field(default_factory=list)
    source_lang: str | None = None
    target_lang: str | None = None
    system_prompt: str | None = None
    prompt_template: str | None = None
    completion_template: str | None = None
    templates: dict[str, Any] = field(default_factory=dict)  # the task's templates after overrides


def build_parser() -> StrictParser:
    parser = StrictParser(description="Check a dataset and write train/validation/test splits.")
    for name in ("train_data", "train_folder", "validation_data", "test_data", "model_path", "chat_template",
                 "templates_file", "graders"):
        parser.add_argument(f"--{name}", type=Path, default=None)
    parser.add_argument("--task", choices=TASKS, required=True)
    parser.add_argument("--on_invalid", choices=("fail", "skip"), required=True)
    parser.add_argument("--validation_ratio", type=bounded(float, 0.0, 0.5), required=True)
    parser.add_argument("--test_ratio", type=bounded(float, 0.0, 0.5), required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--max_seq_length", type=bounded(int, 16), required=True)
    parser.add_argument("--truncation", choices=("prompt", "none"), required=True)
    parser.add_argument("--max_too_long_ratio", type=bounded(float, 0.0, 1.0), required=True)
    for name in (*KEY_FLAGS, "label_names", "drop_columns", "source_lang", "target_lang", "system_prompt", "prompt_template",
                 "completion_template"):
        parser.add_argument(f"--{name}", default=None)
    parser.add_argument("--prepared_data", type=Path, required=True)
    parser.add_argument("--data_report", type=Path, required=True)
    return parser


def _unescape(value: str | None) -> str | None:
    """Template inputs travel on one command line: `\\n` and `\\t` stand for a line break and a tab."""
    return None if value is None else value.replace("\\n", "\n").replace("\\t", "\t")


def _parse_label_names(value: str | None, problems: list[str]) -> list[str] | None:
    if value is None:
        return None
    text = value.strip()
    if text.startswith("["):
        try:
            names = json.loads(text)
        except ValueError as err:
            problems.append(f"label_names is not a valid JSON list ({err}); give a JSON list or comma-separated names")
            return None
        if not isinstance(names, list) or not all(isinstance(n, (str, int)) for n in names):
            problems.append("label_names must be a list of names")
            return None
        names = [str(n) for n in names]
    else:
        names = [n.strip() for n in text.split(",")]
    if not names or any(not n for n in names):
        problems.append(f"label_names {value!r} has an empty name; give names separated by commas")
        return None
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        problems.append(f"label_names repeats {', '.join(duplicated)}; each name must appear once")
        return None
    return names


def _templates_file(path: Path, task: str, defaults: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """Template overrides from a YAML file: the task's keys at the top level or under the task's name."""
    import yaml

    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        problems.append(f"templates_file {path}: cannot read it as YAML ({err})")
        return {}
    if isinstance(loaded, dict) and isinstance(loaded.get(task), dict):
        loaded = loaded[task]
    if not isinstance(loaded, dict):
        problems.append(f"templates_file {path}: expected a mapping of template names to strings")
        return {}
    allowed = set(defaults) | {"system"}
    unknown = sorted(set(loaded) - allowed)
    if unknown:
        problems.append(f"templates_file {path}: unknown template(s) {', '.join(unknown)} for task {task}; "
                        f"known: {', '.join(sorted(allowed))}")
    bad = sorted(k for k, v in loaded.items() if k in allowed and v is not None and not isinstance(v, str))
    if bad:
        problems.append(f"templates_file {path}: {', '.join(bad)} must be strings")
    return {k: v for k, v in loaded.items() if k in allowed and k not in bad}


def _task_templates(task: str, system_prompt: str | None, prompt_template: str | None,
                    completion_template: str | None, problems: list[str],
                    templates_file: Path | None = None) -> dict[str, Any]:
    import yaml

    from maap_finetune.data.tasks import TEMPLATE_FIELDS, template_placeholders

    defaults = yaml.safe_load(TEMPLATES_FILE.read_text(encoding="utf-8")) or {}
    templates = dict(defaults.get(task) or {})
    if templates_file is not None and templates_file.is_file():
        if task == "text":
            problems.append("templates_file does not apply to task text (raw text has no templates); remove it")
        else:
            templates.update(_templates_file(templates_file, task, templates, problems))
            if task in ("chat", "preference", "rft"):
                system_prompt = system_prompt if system_prompt is not None else templates.get("system")
    if task in ("chat", "text", "preference", "rft"):
        if prompt_template is not None or completion_template is not None:
            problems.append(f"prompt_template and completion_template do not apply to task {task} "
                            "(its rows are used as they are); remove them")
        if task == "text" and system_prompt is not None:
            problems.append("system_prompt does not apply to task text (raw text has no turns); remove it")
        return {"system": system_prompt} if task in ("chat", "preference", "rft") else {}
    if system_prompt is not None:
        templates["system"] = system_prompt
    if prompt_template is not None:
        for key in ("prompt", "prompt_with_input", "prompt_closed_book"):
            if key in templates:
                templates[key] = prompt_template
    if completion_template is not None:
        templates["completion"] = completion_template
    allowed = TEMPLATE_FIELDS[task]
    for key, fields in allowed.items():
        template = templates.get(key)
        if not isinstance(template, str):
            problems.append(f"templates.yaml: task {task} needs a string template {key!r}")
            continue
        try:
            used = template_placeholders(template)
        except ValueError as err:
            problems.append(f"template {key!r} of task {task} has unbalanced braces ({err}); write {{{{ and }}}} "
                            "for literal braces")
            continue
        unknown = sorted(used - set(fields))
        if unknown:
            problems.append(f"template {key!r} of task {task} uses {', '.join('{' + u + '}' for u in unknown)}; "
                            f"it may use {', '.join('{' + f + '}' for f in fields)}")
        if any(not name.isidentifier() for name in used):
            problems.append(f"template {key!r} of task {task}: placeholders must be plain names like {{text}}")
    return templates


def parse_args(argv: Sequence[str] | None = None) -> Config:
    from maap_finetune.data.tasks import KEY_INPUTS

    args = build_parser().parse_args(argv)
    problems: list[str] = []
    if (args.train_data is None) == (args.train_folder is None):
        problems.append("give exactly one of train_data (a file) or train_folder (a folder of shards)")
    for name in ("train_data", "train_folder", "validation_data", "test_data", "model_path", "chat_template",
                 "templates_file", "graders"):
        path = getattr(args, name)
        if path is not None and not path.exists():
            problems.append(f"{name} {path}: no such file or folder")
    if args.chat_template is not None and args.chat_template.is_file():
        problems += _chat_template_problems(args.chat_template)
    if args.templates_file is not None and args.templates_file.exists() and not args.templates_file.is_file():
        problems.append(f"templates_file {args.templates_file} must be a file")
    if args.model_path is not None and args.model_path.exists() and not args.model_path.is_dir():
        problems.append(f"model_path {args.model_path} must be a folder")
    explicit = {"validation": args.validation_data is not None, "test": args.test_data is not None}
    held_out = (0 if explicit["validation"] else args.validation_ratio) + (0 if explicit["test"] else args.test_ratio)
    if held_out >= 1.0:
        problems.append(f"validation_ratio + test_ratio = {held_out} leaves nothing to train on; keep it below 1")
    used_keys = set(KEY_INPUTS[args.task].values())
    keys = {}
    for name in KEY_FLAGS:
        value = getattr(args, name)
        if value is None:
            continue
        if name not in used_keys:
            tasks = [t for t, mapping in KEY_INPUTS.items() if name in mapping.values()]
            problems.append(f"{name} is not used by task {args.task} (it is for task {', '.join(tasks)}); remove it")
        elif not value.strip():
            problems.append(f"{name} is empty; give a column name or leave it unset")
        keys[name] = value
    if args.graders is not None and args.task != "rft":
        problems.append(f"graders is for task rft (the fields its templates read are checked per row), not "
                        f"{args.task}; remove it or set task rft")
    label_names = _parse_label_names(args.label_names, problems)
    if label_names is not None and args.task not in ("classification", "ner"):
        problems.append(f"label_names is for tasks classification and ner, not {args.task}; remove it")
    if args.task == "translation":
        for name in ("source_lang", "target_lang"):
            if not getattr(args, name):
                problems.append(f"task translation needs {name} (a language code as used in the data, e.g. en)")
        if args.source_lang and args.source_lang == args.target_lang:
            problems.append("source_lang and target_lang are the same; give two languages")
    else:
        for name in ("source_lang", "target_lang"):
            if getattr(args, name) is not None:
                problems.append(f"{name} is for task translation, not {args.task}; remove it")
    templates = _task_templates(args.task, _unescape(args.system_prompt), _unescape(args.prompt_template),
                                _unescape(args.completion_template), problems, args.templates_file)
    if problems:
        raise ConfigErrors(problems, header="invalid Data Prep inputs")
    return Config(
        task=args.task, on_invalid=args.on_invalid, validation_ratio=args.validation_ratio,
        test_ratio=args.test_ratio, seed=args.seed, max_seq_length=args.max_seq_length,
        truncation=args.truncation, max_too_long_ratio=args.max_too_long_ratio,
        drop_columns=[c.strip() for c in (args.drop_columns or "").split(",") if c.strip()],
        prepared_data=args.prepared_data, data_report=args.data_report, train_data=args.train_data,
        train_folder=args.train_folder, validation_data=args.validation_data, test_data=args.test_data,
        model_path=args.model_path, chat_template=args.chat_template, templates_file=args.templates_file,
        graders=args.graders, keys=keys,
        label_names=label_names, source_lang=args.source_lang,
        target_lang=args.target_lang, system_prompt=_unescape(args.system_prompt),
        prompt_template=_unescape(args.prompt_template), completion_template=_unescape(args.completion_template),
        templates=templates,
    )


def _chat_template_problems(path: Path) -> list[str]:
    """A template that does not even parse fails here, before any GPU time is spent on it."""
    from jinja2 import Environment, TemplateSyntaxError

    from maap_finetune.data.chat_template import load_chat_template

    try:
        Environment().parse(load_chat_template(path))
    except UserError as err:
        return [str(err)]
    except TemplateSyntaxError as err:
        return [f"chat_template {path}: line {err.lineno}: {err.message} (not a valid Jinja template)"]
    return []


def load_tokenizer(model_path: Path, chat_template: Path | None = None):
    """The base model's tokenizer from a Hugging Face or MLflow model folder (never downloads, no remote code)."""
    from transformers import AutoTokenizer

    from maap_finetune.models.source import resolve_model_source

    folder = str(model_path)
    if not (model_path / "tokenizer_config.json").is_file():
        folder = resolve_model_source(model_path=model_path, model_name=None).tokenizer
    from maap_finetune.data.chat_template import apply_chat_template_file

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise UserError(f"model_path {model_path}: cannot load a tokenizer from {folder} ({err})") from None
    apply_chat_template_file(tokenizer, chat_template)
    return tokenizer


def run(config: Config) -> dict[str, Any]:
    from maap_finetune.common import tracking
    from maap_finetune.data.prepare import InputSpec, prepare
    from maap_finetune.data.prepared import write_metadata
    from maap_finetune.data.report import build_report, write_problems, write_report
    from maap_finetune.data.tasks import TaskAdapter

    inputs = [InputSpec("train_data" if config.train_data else "train_folder",
                        config.train_data or config.train_folder, "train")]
    if config.validation_data is not None:
        inputs.append(InputSpec("validation_data", config.validation_data, "validation"))
    if config.test_data is not None:
        inputs.append(InputSpec("test_data", config.test_data, "test"))
    tokenizer = load_tokenizer(config.model_path, config.chat_template) if config.model_path is not None else None
    graders = _load_graders(config)
    adapter = TaskAdapter(config.task, config.keys, config.templates, label_names=config.label_names,
                          source_lang=config.source_lang, target_lang=config.target_lang,
                          system_prompt=config.templates.get("system") if config.task in ("chat", "preference", "rft")
                          else None, drop_columns=config.drop_columns, graders=graders)
    with tracking.step_run():
        tracking.log_params({"task": config.task, "on_invalid": config.on_invalid,
                             "validation_ratio": config.validation_ratio, "test_ratio": config.test_ratio,
                             "seed": config.seed, "max_seq_length": config.max_seq_length,
                         "truncation": config.truncation, "max_too_long_ratio": config.max_too_long_ratio,
                             **{spec.name: spec.path for spec in inputs}})

        def on_problems(problems) -> None:
            path = write_problems(config.data_report, problems)
            tracking.log_metrics({"rows_rejected": problems.total})
            tracking.log_artifact(path, "data_report")

        result = prepare(inputs, adapter, config.prepared_data, validation_ratio=config.validation_ratio,
                         test_ratio=config.test_ratio, seed=config.seed, on_invalid=config.on_invalid,
                         tokenizer=tokenizer, max_seq_length=config.max_seq_length, on_problems=on_problems,
                         tokenizer_name=str(config.chat_template or config.model_path),
                         truncation=config.truncation, max_too_long_ratio=config.max_too_long_ratio)
        splits = {name: {"file": f"{name}.jsonl", "rows": result.split_stats[name].rows}
                  for name in ("train", "validation", "test")}
        templates_used = {k: v for k, v in config.templates.items() if v is not None}
        write_metadata(
            config.prepared_data,
            task=config.task,
            format=adapter.output_format,
            splits=splits,
            label_set=result.label_set,
            templates=templates_used,
            source={
                "inputs": result.inputs,
                "layout": result.layout,
                "columns": result.columns,
                "rows_read": result.rows_read,
                "rows_rejected": result.rows_rejected,
                "duplicates_removed": sum(result.duplicates.values()),
                "on_invalid": config.on_invalid,
                "seed": config.seed,
                "validation_ratio": None if config.validation_data else config.validation_ratio,
                "test_ratio": None if config.test_data else config.test_ratio,
            },
            entity_types=adapter.entity_types() if config.task == "ner" else None,
            languages={"source": config.source_lang, "target": config.target_lang}
            if config.task == "translation" else None,
            text_chunking=result.text_chunking,
            max_seq_length=config.max_seq_length,
            graders=None if graders is None else {"file": config.graders.name, "name": graders.name,
                                                  "item_fields": sorted(graders.item_fields)},
        )
        tokenizer_name = str(config.model_path) if config.model_path is not None else None
        report = build_report(result, task=config.task, on_invalid=config.on_invalid,
                              max_seq_length=config.max_seq_length, tokenizer_name=tokenizer_name)
        write_report(config.data_report, report, result, config.max_seq_length)
        tracking.log_metrics(_report_metrics(report))
        tracking.log_artifacts(config.data_report, "data_report")
        tracking.log_artifact(config.prepared_data / "metadata.json", "data_report")
    written = report["rows"]["written"]
    from maap_finetune.data.report import column_notes

    for line in column_notes(report):
        if line:
            print(f"data prep: {line[2:]}")
    if report["text_chunking"] and report["text_chunking"].get("documents"):
        chunking = report["text_chunking"]
        print("data prep: split by document, then chunked: " + ", ".join(
            f"{name} {chunking['documents'][name]} documents / {chunking['chunks'][name]} chunks"
            for name in ("train", "validation", "test")))
    if config.model_path is None and adapter.output_format == "messages":
        print("data prep: no model_path, so lengths are counted in characters: rows longer than max_seq_length "
              "are neither found nor shortened here; give model_path to check them")
    print(f"data prep ({config.task}): {result.rows_read} rows read, {result.rows_rejected} rejected, "
          f"{report['rows']['duplicates_removed']} duplicates removed; train {written['train']}, "
          f"validation {written['validation']}, test {written['test']} -> {config.prepared_data}")
    return report


def _load_graders(config: Config):
    """rft: the graders whose templates every row must satisfy (None without a graders file)."""
    if config.task != "rft":
        return None
    if config.graders is None:
        print("data prep: no graders file, so rows are not checked for the fields graders read; give graders "
              "(the file Fine-Tune's grpo uses) to refuse such rows here")
        return None
    from maap_finetune.graders import load_graders

    return load_graders(config.graders)


def _report_metrics(report: dict[str, Any]) -> dict[str, float]:
    rows = report["rows"]
    metrics: dict[str, float] = {
        "rows_read": rows["read"], "rows_rejected": rows["rejected"], "duplicates_removed": rows["duplicates_removed"],
        **{f"rows_{name}": count for name, count in rows["written"].items()},
        **{f"rejected_{kind}": count for kind, count in report["rejected_by_reason"].items()},
        **{f"prompt_overlap_{name}": count for name, count in report["prompt_overlap_with_train"].items()},
        "estimated_training_tokens_per_epoch": report["estimated_training_tokens_per_epoch"]["tokens"],
    }
    if report.get("preference") and report["preference"]["per_split"]["train"]["pairs"]:
        metrics["train_chosen_longer_ratio"] = report["preference"]["per_split"]["train"]["chosen_longer_ratio"]
    unit = report["lengths"]["unit"]
    train = report["lengths"]["per_split"]["train"]["tokens" if unit == "tokens" else "characters"]
    if train and train.get("count"):
        prefix = "train_tokens" if unit == "tokens" else "train_chars"
        for stat in ("mean", "p50", "p95", "p99", "max"):
            metrics[f"{prefix}_{stat}"] = train[stat]
        if "over_max_seq_length" in train:
            metrics["train_rows_over_max_seq_length"] = train["over_max_seq_length"]
    return metrics


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return run(parse_args(argv))


if __name__ == "__main__":
    exit_on_user_error(main)
