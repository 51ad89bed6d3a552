"""lm-evaluation-harness on a local task: real lm-eval, the real tiny model, a hand count to check it against."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from maap_finetune.evaluation import benchmarks
from tests.evaluate.lmeval_tasks import CHOICE_ROWS, prompt, write_choice_task

TASK = "maap_choice"
TUNE_STEPS = 5


@pytest.fixture(scope="module")
def base_and_tuned(tiny_model_dir):
    """The tiny model, and a fine-tune of it: a few seeded steps on each row's prompt and right answer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tuned = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(tuned.parameters(), lr=1e-2)
    texts = [tokenizer.encode(prompt(row) + " " + row["choices"][row["label"]]) for row in CHOICE_ROWS]
    for _ in range(TUNE_STEPS):
        for ids in texts:
            batch = torch.tensor([ids])
            tuned(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return base, tuned.eval(), tokenizer


def hand_count(model, tokenizer, rows) -> dict[str, float]:
    """acc and acc_norm from a plain forward pass: sum log p(" " + choice | prompt), argmax against the label."""
    import torch

    hits = {"acc": 0, "acc_norm": 0}
    for row in rows:
        scores = []
        for choice in row["choices"]:
            context = tokenizer.encode(prompt(row))
            whole = tokenizer.encode(prompt(row) + " " + choice)
            with torch.no_grad():
                logits = model(torch.tensor([whole])).logits[0].float()
            logp = torch.log_softmax(logits[:-1], dim=-1)
            scores.append(sum(logp[i - 1, whole[i]].item() for i in range(len(context), len(whole))))
        best = max(range(len(scores)), key=scores.__getitem__)
        best_norm = max(range(len(scores)), key=lambda i: scores[i] / len(row["choices"][i]))
        hits["acc"] += best == row["label"]
        hits["acc_norm"] += best_norm == row["label"]
    return {name: count / len(rows) for name, count in hits.items()}


def test_lm_eval_scores_match_a_hand_count_for_base_and_tuned(base_and_tuned, tmp_path, monkeypatch):
    import datasets

    base, tuned, tokenizer = base_and_tuned
    include = str(write_choice_task(tmp_path / "tasks"))
    # no datasets cache in the home folder: a cache path that cannot be created would fail the load
    (tmp_path / "home-cache").write_text("a file, not a folder")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "home-cache" / "datasets")
    # and no network at all
    monkeypatch.setattr(socket.socket, "connect", lambda *a: pytest.fail(f"network access: {a[1:]}"))

    assert benchmarks.task_problems([TASK], include) == []
    scores = {}
    for name, model in (("base", base), ("tuned", tuned)):
        for limit in (None, 3):
            result = benchmarks.run(model, tokenizer, [TASK], limit, include, batch_size=4)
            expected = hand_count(model, tokenizer, CHOICE_ROWS[:limit])
            assert result == {TASK: pytest.approx(expected)}, (name, limit)
            scores[name, limit] = result[TASK]
    # tuning on the right answers shows in the benchmark
    assert scores["tuned", None]["acc"] > scores["base", None]["acc"]
    # same examples on every call: a second run repeats the first exactly
    assert benchmarks.run(base, tokenizer, [TASK], None, include, batch_size=2) == {TASK: scores["base", None]}
    assert benchmarks.primary_metric(scores["base", None]) == ("acc_norm", scores["base", None]["acc_norm"])


def test_run_leaves_the_callers_tokenizer_alone(base_and_tuned, tmp_path):
    base, _, tokenizer = base_and_tuned
    include = str(write_choice_task(tmp_path / "tasks"))
    padless = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    padless.pad_token = None
    benchmarks.run(base, padless, [TASK], 2, include, batch_size=2)
    assert padless.pad_token is None


def test_a_model_on_another_device_is_refused(base_and_tuned, tmp_path):
    base, _, tokenizer = base_and_tuned
    with pytest.raises(ValueError, match="not on cuda"):
        benchmarks.run(base, tokenizer, [TASK], 2, str(write_choice_task(tmp_path / "tasks")), device="cuda")


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        ({"acc": 0.4, "acc_norm": 0.6}, ("acc_norm", 0.6)),
        ({"acc": 0.4, "f1": 0.9}, ("acc", 0.4)),
        ({"exact_match/strict-match": 0.2, "exact_match/flexible-extract": 0.3}, ("exact_match/strict-match", 0.2)),
        ({"bleu": 12.0, "rouge1": 0.3}, ("bleu", 12.0)),
    ],
)
def test_primary_metric(result, expected):
    assert benchmarks.primary_metric(result) == expected


def test_a_local_task_with_a_hub_dataset_needs_the_hub(tmp_path, monkeypatch):
    include = write_choice_task(tmp_path / "tasks")
    (include / "hub_copy.yaml").write_text("include: maap_choice.yaml\ntask: hub_copy\ndataset_path: allenai/ai2_arc\n")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    problems = benchmarks.task_problems([TASK, "hub_copy"], str(include))
    assert len(problems) == 1
    assert problems[0].startswith("general_eval_tasks: task hub_copy downloads its dataset from the Hugging Face Hub")

    # online (the probe answering yes), the same task is fine
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", lambda address, timeout: _Connected())
    assert benchmarks.task_problems([TASK, "hub_copy"], str(include)) == []


def test_the_hub_probe_fails_fast_when_nothing_answers(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: refused at once
    assert benchmarks.hub_reachable() is False
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert benchmarks.hub_reachable() is False


def test_a_missing_data_file_and_a_missing_folder_are_named(tmp_path):
    include = write_choice_task(tmp_path / "tasks")
    (include / f"{TASK}.jsonl").unlink()
    problems = benchmarks.task_problems([TASK], str(include))
    assert len(problems) == 1 and f"{TASK}.jsonl" in problems[0] and "dataset_kwargs.data_files" in problems[0]
    assert benchmarks.task_problems([TASK], str(tmp_path / "nowhere"))[0].startswith(
        f"general_eval_include: {tmp_path / 'nowhere'} is not a folder")


@pytest.mark.slow  # indexes lm-eval's ~15k built-in task files once (tens of seconds)
def test_built_in_tasks_unknown_names_and_the_hub(tmp_path, monkeypatch):
    include = str(write_choice_task(tmp_path / "tasks"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    problems = benchmarks.task_problems(["arc_easy", "hellaswagg", "maap_choise", TASK], include)
    assert problems[0].startswith("general_eval_tasks: unknown lm-eval task 'hellaswagg'")
    assert "did you mean hellaswag" in problems[0]
    assert "did you mean maap_choice" in problems[1]
    assert problems[2].startswith("general_eval_tasks: task arc_easy downloads its dataset from the Hugging Face Hub")
    assert len(problems) == 3
    # a tag expands to its tasks, each named
    problems = benchmarks.task_problems(["ai2_arc"], include)  # the index built above, not a second one
    assert [p.split(" downloads")[0] for p in problems] == [
        "general_eval_tasks: task arc_challenge (in ai2_arc)", "general_eval_tasks: task arc_easy (in ai2_arc)"]


class _Connected:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_tasks_importing_evaluate_get_hugging_faces_package_not_our_entry_script(tmp_path, monkeypatch):
    """Evaluate's script is evaluate.py and its folder leads sys.path, as when Azure ML runs `python evaluate.py`."""
    import sys

    (tmp_path / "evaluate.py").write_text("raise RuntimeError('the entry script was imported')\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "evaluate", raising=False)
    benchmarks._import_hf_evaluate()
    import evaluate

    assert Path(evaluate.__file__).parent.name == "evaluate" and str(tmp_path) in sys.path
