"""`Graders`: a checked graders file, grading completions against their data rows.

    graders = load_graders("graders.json")
    problems = graders.row_problems(row, "train.jsonl:12")       # before any model loads
    grades = graders.grade([Sample("<answer>42</answer>")], [row])
    grades[0].score, grades[0].scores                            # the top grader's, and each named one's
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from maap_finetune.common.errors import ConfigErrors, UserError
from maap_finetune.graders import score_model, text
from maap_finetune.graders.python_runner import PythonSource, run_python_graders
from maap_finetune.graders.spec import GraderSpec, check_grader, read_graders_file
from maap_finetune.graders.templates import missing, render

PYTHON_TIME_LIMIT_S = 10.0  # per row and python grader; the RFT service allows a grader 2 minutes a batch
SCORE_MODEL_THREADS = 8


@dataclass(frozen=True)
class Sample:
    """One completion: its text, and its JSON when the output is structured (parsed from the text if None)."""

    output_text: str
    output_json: Any = None

    def as_dict(self) -> dict[str, Any]:
        output_json = self.output_json
        if output_json is None:
            try:
                output_json = json.loads(self.output_text)
            except ValueError:
                output_json = None
        return {"output_text": self.output_text, "output_json": output_json}


@dataclass(frozen=True)
class Grade:
    score: float
    scores: dict[str, float] = field(default_factory=dict)


class Graders:
    def __init__(self, top: GraderSpec, file: str, python_time_limit_s: float,
                 client_factory: Callable[[str], Any] | None):
        self.top = top
        self.file = file
        self.name = top.key
        self.python_time_limit_s = python_time_limit_s
        self._client_factory = client_factory or score_model.default_client
        self._clients: dict[str, Any] = {}
        self.leaves: list[GraderSpec] = list(top.children.values()) if top.type == "multi" else [top]
        self.item_paths = sorted({(ref.path, leaf.key) for leaf in self.leaves for ref in leaf.refs
                                  if ref.namespace == "item"})
        self.item_fields = frozenset(path[0] for path, _ in self.item_paths)

    @property
    def grader_names(self) -> tuple[str, ...]:
        """Every name in a Grade's scores: the sub-graders of a multi, then the top grader."""
        return tuple(leaf.key for leaf in self.leaves if leaf is not self.top) + (self.name,)

    @property
    def types(self) -> dict[str, str]:
        return {leaf.key: leaf.type for leaf in self.leaves} | {self.name: self.top.type}

    def row_problems(self, row: Mapping[str, Any], where: str) -> list[str]:
        """'<where>: field 'x' missing, read by grader 'g'' for each template field the row lacks."""
        return [f"{where}: field {'.'.join(path)!r} missing, read by grader {key!r} ({self.file}); add it to "
                "every row, or change the grader's template"
                for path, key in self.item_paths if missing(row, path)]

    def grade(self, samples: Sequence[Sample], items: Sequence[Mapping[str, Any]],
              where: Sequence[str] | None = None) -> list[Grade]:
        """A Grade per (sample, item) pair; `where[i]` names row i in errors (default 'row i+1')."""
        return self._grade(samples, items, where, judge=True)

    def preflight(self, items: Sequence[Mapping[str, Any]], where: Sequence[str] | None = None) -> None:
        """Grade an empty completion against every row before any model loads, so a python grader that raises
        or times out on a row (or a formula that fails) stops the run there, naming the row. score_model
        graders are not called (each row would bill the deployment): their score is their range's low end."""
        self._grade([Sample("")] * len(items), items, where, judge=False)

    def _grade(self, samples, items, where, judge: bool) -> list[Grade]:
        if len(samples) != len(items):
            raise ValueError(f"{len(samples)} samples for {len(items)} items")
        where = list(where) if where is not None else [f"row {i + 1}" for i in range(len(items))]
        rows = [{"sample": s.as_dict(), "item": dict(item)} for s, item in zip(samples, items)]
        scores = self._leaf_scores(rows, where, judge)
        if self.top.type == "multi":
            scores[self.name] = [self._combine(i, scores, where) for i in range(len(rows))]
        names = self.grader_names
        return [Grade(score=scores[self.name][i], scores={n: scores[n][i] for n in names}) for i in range(len(rows))]

    def _leaf_scores(self, rows: list[dict], where: list[str], judge: bool) -> dict[str, list[float]]:
        python = [PythonSource(leaf.key, leaf.spec["source"]) for leaf in self.leaves if leaf.type == "python"]
        scores = run_python_graders(python, rows, where, self.python_time_limit_s, self.file)
        for leaf in self.leaves:
            if leaf.type == "string_check":
                scores[leaf.key] = [text.string_check(leaf.spec["operation"], *self._texts(leaf, row, w))
                                    for row, w in zip(rows, where)]
            elif leaf.type == "text_similarity":
                metric = text.similarity(leaf.spec["evaluation_metric"])
                scores[leaf.key] = [metric(*self._texts(leaf, row, w)) for row, w in zip(rows, where)]
            elif leaf.type == "score_model":
                low = float(leaf.spec.get("range", [0, 1])[0])
                scores[leaf.key] = self._judge(leaf, rows, where) if judge else [low] * len(rows)
        return scores

    def _render(self, leaf: GraderSpec, template: str, row: dict, where: str) -> str:
        try:
            return render(template, row["item"], row["sample"])
        except KeyError as err:
            raise UserError(f"{where}: field {err.args[0].removeprefix('item.')!r} missing, read by grader "
                            f"{leaf.key!r} ({self.file})") from None

    def _texts(self, leaf: GraderSpec, row: dict, where: str) -> tuple[str, str]:
        return (self._render(leaf, leaf.spec["input"], row, where),
                self._render(leaf, leaf.spec["reference"], row, where))

    def _judge(self, leaf: GraderSpec, rows: list[dict], where: list[str]) -> list[float]:
        if not rows:
            return []
        endpoint = score_model.endpoint_of(leaf.spec)
        if endpoint not in self._clients:
            self._clients[endpoint] = self._client_factory(endpoint)
        client = self._clients[endpoint]
        low, high = leaf.spec.get("range", [0, 1])
        params = score_model.request_params(leaf.spec.get("sampling_params"))

        def one(i: int) -> float:
            messages = [{"role": m["role"], "content": self._render(leaf, m["content"], rows[i], where[i])}
                        for m in leaf.spec["input"]]
            try:
                content = client.complete(leaf.spec["model"], messages, params)
            except score_model.ScoreModelHTTPError as err:
                if err.status_code not in (400, 401, 403, 404):
                    raise
                raise UserError(f"{where[i]}: score_model grader {leaf.key!r} ({self.file}): {err}; check "
                                f"the endpoint {endpoint}, the deployment named by model, and that this job's "
                                "identity holds the Cognitive Services OpenAI User role on it") from None
            try:
                return score_model.parse_score(content, low, high)
            except ValueError as err:
                raise UserError(f"{where[i]}: score_model grader {leaf.key!r} ({self.file}): {err}") from None

        with ThreadPoolExecutor(max_workers=SCORE_MODEL_THREADS) as pool:
            return list(pool.map(one, range(len(rows))))

    def _combine(self, i: int, scores: Mapping[str, list[float]], where: list[str]) -> float:
        values = {key: scores[key][i] for key in self.top.children}
        try:
            value = self.top.formula.evaluate(values)
        except (ZeroDivisionError, ValueError, OverflowError) as err:
            raise UserError(f"{where[i]}: multi grader {self.name!r} ({self.file}): calculate_output "
                            f"{self.top.formula.text!r} fails on scores {values}: {err}") from None
        if not math.isfinite(value):
            raise UserError(f"{where[i]}: multi grader {self.name!r} ({self.file}): calculate_output gives {value}")
        return value


def load_graders(path: Path | str, *, python_time_limit_s: float = PYTHON_TIME_LIMIT_S,
                 score_model_client: Callable[[str], Any] | None = None) -> Graders:
    """The graders file at `path`, checked (ConfigErrors naming the file and each grader's problem).

    `score_model_client(endpoint)` builds the chat client score_model graders call (default: azure-core
    REST with the job's identity); tests pass an autospec'd fake."""
    path = Path(path)
    raw = read_graders_file(path)
    problems: list[str] = []
    top = check_grader(raw, None, str(path), problems)
    if problems or top is None:
        raise ConfigErrors(problems, header=f"{path}: graders refused")
    graders = Graders(top, str(path), python_time_limit_s, score_model_client)
    graders.preflight([])  # runs each python grader's source once (no rows): a failing import fails here
    return graders


__all__ = ["Grade", "Graders", "Sample", "load_graders"]
