"""The README's GRPO local run end to end: rft sample prompts, graders, GRPO on the CPU, Evaluate's grader
scores, Register, and Export ONNX checked against the tuned model's own greedy completions and registered.

rft rows hold no reference answer, so Evaluate's parity reference continues each test prompt with the tuned
model's greedy tokens, and Export ONNX's teacher-forced agreement and loss are computed on those tokens.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from maap_finetune.evaluation.parity_reference import ON_GREEDY_TOKENS, REFERENCE_FILE
from tests.helpers import run_local_pipeline

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE = REPO_ROOT / "data" / "sample"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rft_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("local-rft")
    stdout = run_local_pipeline(workdir, "task=rft", "training_method=grpo", f"train_data={SAMPLE / 'rft.jsonl'}",
                                f"graders={SAMPLE / 'graders.json'}")
    match = re.search(r"^run_dir: (\S+)$", stdout, flags=re.MULTILINE)
    assert match, stdout[-2000:]
    return Path(match.group(1)), stdout


def test_rft_run_registers_the_merged_and_the_onnx_model(rft_run):
    _, stdout = rft_run
    assert re.search(r"^model_uri: models:/maap-finetuned/1$", stdout, flags=re.MULTILINE), stdout[-2000:]
    assert re.search(r"^onnx_model: models:/maap-finetuned-onnx/1$", stdout, flags=re.MULTILINE), stdout[-2000:]


def test_onnx_checks_ran_on_the_tuned_models_greedy_completions(rft_run):
    run_dir, _ = rft_run
    reference = json.loads((run_dir / "evaluate" / "outputs" / "evaluation" / REFERENCE_FILE).read_text())
    assert reference["teacher_forced_on"] == ON_GREEDY_TOKENS
    for generated, forced in zip(reference["generation"], reference["teacher_forced"], strict=True):
        assert forced["ids"] == generated["prompt_ids"] + generated["tokens"]
    report = json.loads((run_dir / "export_onnx" / "outputs" / "export_report" / "export_report.json").read_text())
    assert report["passed"] and report["reference"]["teacher_forced_on"] == ON_GREEDY_TOKENS
    forced_tokens = sum(len(g["tokens"]) for g in reference["generation"])
    assert report["agreement"]["teacher_forced"]["scored_tokens"] == forced_tokens > 0
    assert report["fp32_parity"]["teacher_forced"]["scored_tokens"] == forced_tokens
    markdown = (run_dir / "export_onnx" / "outputs" / "export_report" / "export_report.md").read_text()
    assert f"over {forced_tokens} tokens of the tuned model's greedy test completions" in markdown
