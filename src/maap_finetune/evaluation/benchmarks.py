"""General-ability benchmarks through lm-evaluation-harness (the `lm-eval` package, as a library).

`task_problems` checks the inputs before any model loads: every name must be an lm-eval task,
group or tag (built in, or a YAML under `include_path`), and a task whose dataset comes from the
Hugging Face Hub needs the Hub to be reachable. `run` scores an already loaded model with
`lm_eval.simple_evaluate` on the first `limit` documents of each task, with lm-eval's fixed
seeds, so base and tuned see the same examples. `primary_metric` picks the figure a gate reads.

A task is local when its `dataset_path` is one of the datasets packaged builders (json, csv,
parquet, text, arrow) with local `dataset_kwargs.data_files`, or an existing local folder, or when
it builds its own dataset (`custom_dataset`). Everything else (arc_easy, hellaswag, gsm8k, every
Python-class task) downloads from the Hub on first use.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import functools
import os
import socket
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

LOCAL_BUILDERS = frozenset({"json", "csv", "parquet", "text", "arrow"})
HUB_PROBE_TIMEOUT_S = 3.0
PRIMARY_ORDER = ("acc_norm", "acc", "exact_match")
# lm-eval's own defaults, written out so that a change of default upstream cannot change which
# few-shot examples or sampled answers a run sees
SEEDS = dict(random_seed=0, numpy_random_seed=1234, torch_random_seed=1234, fewshot_random_seed=1234)


def task_problems(tasks: Sequence[str], include_path: str | None) -> list[str]:
    """One line per problem with `tasks` (general_eval_tasks) and `include_path` (general_eval_include)."""
    if include_path and not Path(include_path).is_dir():
        return [f"general_eval_include: {include_path} is not a folder; give the folder that holds your "
                "lm-eval task YAML files"]
    manager = _manager_for(tasks, include_path)
    index = manager.task_index
    problems = []
    for name in tasks:
        if name not in index:
            problems.append(_unknown_task(name, manager.all_tasks, include_path))
    hub_tasks: list[str] = []
    for name in (n for n in tasks if n in index):
        for leaf, cfg in _leaf_configs(name, index):
            source = _dataset_source(cfg)
            if source == "hub":
                hub_tasks.append(leaf if leaf == name else f"{leaf} (in {name})")
            elif source.startswith("missing:"):
                problems.append(f"general_eval_tasks: task {leaf!r} reads {source[8:]}, which does not exist; "
                                "fix dataset_kwargs.data_files in its YAML (a relative path is read from the "
                                "working folder)")
    if hub_tasks and not hub_reachable():
        for task in dict.fromkeys(hub_tasks):
            problems.append(f"general_eval_tasks: task {task} downloads its dataset from the Hugging Face Hub, "
                            "which cannot be reached here; run where the Hub is reachable (an Azure ML cluster) "
                            "or use a local task YAML under general_eval_include")
    return problems


def run(model, tokenizer, tasks: Sequence[str], limit: int | None, include_path: str | None,
        batch_size: int = 8, device: str = "cpu") -> dict[str, dict[str, float]]:
    """Per task (and group) its metric values, stderr left out: {"arc_easy": {"acc": 0.5, "acc_norm": 0.5}}."""
    _import_hf_evaluate()
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    if model.device.type != _device_type(device):
        raise ValueError(f"the model is on {model.device}, not on {device}: move it before running benchmarks")
    manager = _manager_for(tasks, include_path)
    lm = HFLM(pretrained=model, tokenizer=_with_pad_token(tokenizer), batch_size=batch_size)
    # local tasks: a throwaway datasets cache, nothing looked up online; hub tasks: datasets' own cache
    local = not _any_hub_task(tasks, manager.task_index)
    with tempfile.TemporaryDirectory(prefix="lm-eval-datasets-") as cache, \
            _datasets_offline_in(Path(cache) if local else None), _without_env_report():
        output = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), limit=limit, task_manager=manager,
                                         bootstrap_iters=0, log_samples=False, device=device, **SEEDS)
    return {task: _metric_values(values) for task, values in output["results"].items()}


def _import_hf_evaluate() -> None:
    """Import Hugging Face's `evaluate` package before lm-eval's tasks do: Evaluate's entry script is
    evaluate.py, and its folder is first on sys.path, so a task's `import evaluate` would load the script."""
    import sys

    saved = sys.path[:]
    sys.path[:] = [entry for entry in saved if not (Path(entry or ".") / "evaluate.py").is_file()]
    try:
        import evaluate  # noqa: F401
    finally:
        sys.path[:] = saved


def primary_metric(result: Mapping[str, float]) -> tuple[str, float]:
    """The figure to gate on: acc_norm, else acc, else exact_match (any filter), else the first number."""
    for wanted in PRIMARY_ORDER:
        for name, value in result.items():
            if name == wanted or name.startswith(f"{wanted}/"):
                return name, value
    for name, value in result.items():
        return name, value
    raise ValueError("the benchmark result holds no metric")


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """False under HF_HUB_OFFLINE / HF_DATASETS_OFFLINE, else whether a TCP connect to the Hub succeeds."""
    if any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
           for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


@functools.lru_cache(maxsize=4)
def _manager(include_path: str | None, include_defaults: bool):
    # indexing lm-eval's ~15k built-in task YAMLs takes tens of seconds; local-only runs skip it
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, include_defaults=include_defaults)


def _manager_for(tasks: Sequence[str], include_path: str | None):
    """A TaskManager over include_path alone when it holds every task asked for, else with lm-eval's own."""
    if include_path:
        local = _manager(include_path, False)
        index = local.task_index
        if all(name in index and all(cfg is not None for _, cfg in _leaf_configs(name, index)) for name in tasks):
            return local
    return _manager(include_path, True)


def _leaf_configs(name: str, index: Mapping[str, Any], seen: frozenset = frozenset()) -> Iterator[tuple[str, dict | None]]:
    """(task name, its config) for each task that `name` (a task, group or tag) runs; None when not indexed."""
    from lm_eval.tasks._index import Kind

    entry = index.get(name)
    if entry is None or name in seen:
        yield name, None
        return
    seen = seen | {name}
    if entry.kind is Kind.TAG:
        for member in sorted(entry.tags):
            yield from _leaf_configs(member, index, seen)
    elif entry.kind is Kind.GROUP:
        members = entry.cfg.get("task") or []
        for member in members if isinstance(members, list) else [members]:
            if isinstance(member, str):
                yield from _leaf_configs(member, index, seen)
            elif isinstance(member.get("task"), str) and member["task"] in index:
                for leaf, cfg in _leaf_configs(member["task"], index, seen):
                    yield leaf, None if cfg is None else {**cfg, **member}
            else:
                yield str(member.get("task") or member.get("group")), member
    else:
        yield name, entry.cfg or {}


def _dataset_source(cfg: Mapping[str, Any]) -> str:
    """'local', 'hub', or 'missing:<path>' for a task config."""
    if cfg.get("custom_dataset"):
        return "local"
    path = cfg.get("dataset_path")
    if path in LOCAL_BUILDERS:
        files = _data_files((cfg.get("dataset_kwargs") or {}).get("data_files"))
        if not files or any("://" in f for f in files):
            return "hub"
        missing = [f for f in files if not Path(f).expanduser().exists() and not any(c in f for c in "*?[")]
        return f"missing:{missing[0]}" if missing else "local"
    if path and Path(str(path)).expanduser().is_dir():
        return "local"
    return "hub"


def _data_files(spec) -> list[str]:
    if spec is None:
        return []
    if isinstance(spec, Mapping):
        return [f for value in spec.values() for f in _data_files(value)]
    if isinstance(spec, (list, tuple)):
        return [str(f) for f in spec]
    return [str(spec)]


def _any_hub_task(tasks: Sequence[str], index: Mapping[str, Any]) -> bool:
    return any(cfg is None or _dataset_source(cfg) == "hub" for name in tasks for _, cfg in _leaf_configs(name, index))


@contextlib.contextmanager
def _datasets_offline_in(folder: Path | None) -> Iterator[None]:
    """With `folder`: datasets stays offline and caches there (not in the home folder) for the call."""
    if folder is None:
        yield
        return
    import datasets

    # datasets reads HF_HUB_OFFLINE and HF_DATASETS_CACHE once at import; its config is what it reads per call
    saved = datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_CACHE = True, folder
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_CACHE = saved


@contextlib.contextmanager
def _without_env_report() -> Iterator[None]:
    """simple_evaluate describes the machine for its results file (torch's collect_env: `pip list` and other
    subprocesses, seconds per call) and we write no such file; skip that part only."""
    import lm_eval.evaluator

    saved = lm_eval.evaluator.add_env_info
    lm_eval.evaluator.add_env_info = lambda storage: None
    try:
        yield
    finally:
        lm_eval.evaluator.add_env_info = saved


def _unknown_task(name: str, known: Sequence[str], include_path: str | None) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    where = f"lm-eval's built-in tasks or {include_path}" if include_path else "lm-eval's built-in tasks"
    return (f"general_eval_tasks: unknown lm-eval task {name!r} (not in {where}); {hint}"
            "fix the name (`lm_eval ls tasks` lists them) or add its YAML under general_eval_include")


def _metric_values(values: Mapping[str, Any]) -> dict[str, float]:
    """lm-eval's {"acc,none": 0.5, "acc_stderr,none": 0.1, "alias": ...} as {"acc": 0.5}; a filter other
    than `none` stays in the name (gsm8k's "exact_match/strict-match")."""
    out = {}
    for key, value in values.items():
        metric, _, filter_name = key.partition(",")
        if not filter_name or "_stderr" in metric or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[metric if filter_name == "none" else f"{metric}/{filter_name}"] = float(value)
    return out


def _with_pad_token(tokenizer):
    # HFLM sets a missing pad token on the tokenizer it is given; keep the caller's untouched
    return tokenizer if tokenizer.pad_token_id is not None else copy.deepcopy(tokenizer)


def _device_type(device: str) -> str:
    import torch

    return torch.device(device).type
