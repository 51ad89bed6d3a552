"""Task metrics: which ones each task gets, which way is better, and how they are computed.

Every task gets `loss` and `perplexity` (lower is better). Tasks with a checkable answer also get
metrics computed on greedy generations:

| task           | metrics                                         | computed with            |
|----------------|-------------------------------------------------|--------------------------|
| qa             | exact_match, token_f1 (SQuAD normalization)     | the SQuAD v1.1 rules     |
| classification | accuracy, macro_f1 over the recorded label set  | scikit-learn             |
| ner            | entity_precision, entity_recall, entity_f1      | scikit-learn (micro P/R/F1 over entity sets) |
| translation    | bleu, chrf (0-100, sacrebleu's scale)           | sacrebleu                |
| summarization  | rouge1, rouge2, rougeL (F-measure, 0-1)         | rouge-score              |
| rft            | grader_score (the top grader's mean; no loss)   | the graders file         |

chat, instruction and text get loss/perplexity plus sample generations in the report. preference
gets loss/perplexity of the chosen answers plus how the model ranks chosen against rejected
(`maap_finetune.evaluation.preference`).

Completions are read back with the templates Data Prep recorded in metadata.json (`templates`):
the literal text around `{label}`, `{answer}`, `{target}`, `{summary}` or `{entities}` in the
`completion` template is stripped before scoring. NER completions join one `entity` template per
entity (default `{type}: {text}`) with `entity_separator` (default a newline) and say
`no_entities` (default `none`) when there is none; entities are compared as (type, text) pairs,
case-insensitively, with inner whitespace collapsed.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MetricInfo:
    name: str
    higher_is_better: bool
    description: str


METRICS: dict[str, MetricInfo] = {
    m.name: m
    for m in (
        MetricInfo("loss", False, "mean cross-entropy per target token (nats)"),
        MetricInfo("perplexity", False, "exp(loss)"),
        MetricInfo("exact_match", True, "share of answers equal to the reference after SQuAD normalization"),
        MetricInfo("token_f1", True, "mean token-overlap F1 with the reference (SQuAD)"),
        MetricInfo("accuracy", True, "share of predicted labels equal to the reference label"),
        MetricInfo("macro_f1", True, "F1 averaged over the recorded label set"),
        MetricInfo("entity_precision", True, "share of predicted (type, entity) pairs that are in the reference"),
        MetricInfo("entity_recall", True, "share of reference (type, entity) pairs that were predicted"),
        MetricInfo("entity_f1", True, "harmonic mean of entity precision and recall"),
        MetricInfo("bleu", True, "corpus BLEU (sacrebleu, 0-100)"),
        MetricInfo("chrf", True, "corpus chrF (sacrebleu, 0-100)"),
        MetricInfo("rouge1", True, "mean ROUGE-1 F-measure (rouge-score, stemmed)"),
        MetricInfo("rouge2", True, "mean ROUGE-2 F-measure (rouge-score, stemmed)"),
        MetricInfo("rougeL", True, "mean ROUGE-L F-measure (rouge-score, stemmed)"),
        MetricInfo("grader_score", True, "mean score of the graders file's top grader over the test prompts (rft)"),
        MetricInfo("preference_accuracy", True, "share of test pairs where log p(chosen) > log p(rejected)"),
        MetricInfo("preference_accuracy_normalized", True,
                   "share of test pairs where the mean log p per token of chosen > that of rejected"),
        MetricInfo("implicit_reward_accuracy", True,
                   "share of test pairs DPO's implicit reward (tuned vs base) ranks right; ties half, base 0.5"),
        MetricInfo("preference_margin", True, "mean log p(chosen) - log p(rejected) over test pairs (nats)"),
        MetricInfo("chosen_logp", True, "mean summed log-probability of the chosen answers"),
        MetricInfo("rejected_logp", False, "mean summed log-probability of the rejected answers"),
    )
}

LOSS_METRICS = ("loss", "perplexity")
TASK_GENERATION_METRICS: dict[str, tuple[str, ...]] = {
    "chat": (),
    "instruction": (),
    "text": (),
    "qa": ("exact_match", "token_f1"),
    "classification": ("accuracy", "macro_f1"),
    "ner": ("entity_precision", "entity_recall", "entity_f1"),
    "translation": ("bleu", "chrf"),
    "summarization": ("rouge1", "rouge2", "rougeL"),
    "preference": (),  # ranked, not generated: see PAIR_METRICS
    "rft": ("grader_score",),  # graded by the graders file: maap_finetune.evaluation.grading
}
NO_LOSS_TASKS = ("rft",)  # prompts without a reference answer: nothing to score a loss on
TASKS = tuple(TASK_GENERATION_METRICS)
PAIR_METRICS: dict[str, tuple[str, ...]] = {
    "preference": ("implicit_reward_accuracy", "preference_accuracy", "preference_accuracy_normalized",
                   "preference_margin", "chosen_logp", "rejected_logp"),
}


def task_metrics(task: str) -> tuple[str, ...]:
    """All metrics measured for `task`, loss first (none for rft)."""
    loss = () if task in NO_LOSS_TASKS else LOSS_METRICS
    return loss + TASK_GENERATION_METRICS[task] + PAIR_METRICS.get(task, ())


def higher_is_better(metric: str) -> bool:
    return METRICS[metric].higher_is_better


COMPLETION_FIELD = {"qa": "answer", "classification": "label", "translation": "target", "summarization": "summary",
                    "ner": "entities"}


def generation_metrics(
    task: str,
    predictions: Sequence[str],
    references: Sequence[str],
    label_set: Sequence[str] | None = None,
    templates: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """The generation-based metrics of `task` (an empty dict for chat, instruction and text)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if task not in TASK_GENERATION_METRICS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    if task == "rft":
        raise ValueError("rft completions are scored by their graders file (maap_finetune.evaluation.grading)")
    if not TASK_GENERATION_METRICS[task] or not references:
        return {}
    templates = dict(templates or {})
    template = templates.get("completion")
    predictions = [completion_field(p, template, COMPLETION_FIELD[task]) for p in predictions]
    references = [completion_field(r, template, COMPLETION_FIELD[task]) for r in references]
    if task == "qa":
        return qa_metrics(predictions, references)
    if task == "classification":
        return classification_metrics(predictions, references, label_set)
    if task == "ner":
        return ner_metrics(predictions, references, EntityFormat.from_templates(templates))
    if task == "translation":
        return translation_metrics(predictions, references)
    return summarization_metrics(predictions, references)


def completion_field(text: str, template: str | None, field_name: str) -> str:
    """`text` without the literal prefix/suffix its completion template puts around `{field_name}`."""
    text = text.strip()
    placeholder = "{" + field_name + "}"
    if not template or template.count(placeholder) != 1:
        return text
    prefix, suffix = (part.strip() for part in template.split(placeholder))
    if prefix and text.lower().startswith(prefix.lower()):
        text = text[len(prefix) :].strip()
    if suffix and text.lower().endswith(suffix.lower()):
        text = text[: -len(suffix)].strip()
    return text


# --- qa: the SQuAD v1.1 evaluation rules (normalize, exact match, token F1) -----------------------
# Written out here because the `evaluate` library fetches its squad metric script from the Hub at
# run time, which jobs and tests must not do; these are the official script's few lines.

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _token_f1(prediction: str, reference: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    ref_tokens = normalize_answer(reference).split()
    if not pred_tokens or not ref_tokens:
        return float(pred_tokens == ref_tokens)
    common = Counter(pred_tokens) & Counter(ref_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


def qa_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    exact = [float(normalize_answer(p) == normalize_answer(r)) for p, r in zip(predictions, references)]
    f1 = [_token_f1(p, r) for p, r in zip(predictions, references)]
    return {"exact_match": sum(exact) / len(exact), "token_f1": sum(f1) / len(f1)}


# --- classification ------------------------------------------------------------------------------

INVALID_LABEL = "<not a label>"


def match_label(prediction: str, labels: Sequence[str]) -> str:
    """The label a generation names: its first line compared case-insensitively, else INVALID_LABEL."""
    lines = prediction.strip().splitlines()
    first = lines[0].strip().strip(" .\"'").lower() if lines else ""
    for label in labels:
        if first == label.lower():
            return label
    return INVALID_LABEL


def classification_metrics(
    predictions: Sequence[str], references: Sequence[str], label_set: Sequence[str] | None
) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    labels = list(label_set) if label_set else sorted(set(r.strip() for r in references))
    refs = [match_label(r, labels) for r in references]
    unknown = sorted({r for r, m in zip(references, refs) if m == INVALID_LABEL})
    if unknown:
        raise ValueError(f"reference labels not in the label set {labels}: {unknown[:5]}")
    preds = [match_label(p, labels) for p in predictions]
    return {
        "accuracy": float(accuracy_score(refs, preds)),
        "macro_f1": float(f1_score(refs, preds, labels=labels, average="macro", zero_division=0)),
        "invalid_predictions": float(sum(p == INVALID_LABEL for p in preds)),
    }


# --- ner -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EntityFormat:
    """How an NER completion writes its entities (Data Prep's `entity`, `entity_separator`, `no_entities`)."""

    entity: str = "{type}: {text}"
    separator: str = "\n"
    no_entities: str = "none"

    @classmethod
    def from_templates(cls, templates: Mapping[str, Any]) -> EntityFormat:
        default = cls()
        return cls(
            entity=templates.get("entity") or default.entity,
            separator=templates.get("entity_separator") or default.separator,
            no_entities=templates.get("no_entities") or default.no_entities,
        )

    def pattern(self) -> re.Pattern:
        parts = re.split(r"(\{type\}|\{text\})", self.entity)
        regex = "".join(
            "(?P<type>.+?)" if part == "{type}" else "(?P<text>.+?)" if part == "{text}" else re.escape(part.strip())
            for part in parts
        )
        return re.compile(r"^\s*" + regex + r"\s*$", re.DOTALL)


def parse_entities(text: str, fmt: EntityFormat | None = None) -> set[tuple[str, str]]:
    """A completion -> {(type, entity)}; pieces that do not match the entity template name no entity."""
    fmt = fmt or EntityFormat()
    if text.strip().lower() in {"", fmt.no_entities.strip().lower()}:
        return set()
    pieces = text.splitlines() if not fmt.separator.strip() else text.split(fmt.separator.strip())
    pattern = fmt.pattern()
    entities = set()
    for piece in pieces:
        match = pattern.match(piece.strip().lstrip("-*• ").strip())
        if not match:
            continue
        kind = " ".join(match.group("type").split()).lower()
        entity = " ".join(match.group("text").split()).lower()
        if kind and entity:
            entities.add((kind, entity))
    return entities


def ner_metrics(
    predictions: Sequence[str], references: Sequence[str], fmt: EntityFormat | None = None
) -> dict[str, float]:
    """Micro precision/recall/F1 over (type, entity) pairs, each row's entities a label set."""
    from sklearn.metrics import precision_recall_fscore_support
    from sklearn.preprocessing import MultiLabelBinarizer

    pred_sets = [sorted(f"{k}\t{e}" for k, e in parse_entities(p, fmt)) for p in predictions]
    ref_sets = [sorted(f"{k}\t{e}" for k, e in parse_entities(r, fmt)) for r in references]
    binarizer = MultiLabelBinarizer()
    binarizer.fit(pred_sets + ref_sets)
    if not len(binarizer.classes_):
        # No entity anywhere, predicted or expected: every row is right.
        return {"entity_precision": 1.0, "entity_recall": 1.0, "entity_f1": 1.0}
    precision, recall, f1, _ = precision_recall_fscore_support(
        binarizer.transform(ref_sets), binarizer.transform(pred_sets), average="micro", zero_division=0
    )
    return {"entity_precision": float(precision), "entity_recall": float(recall), "entity_f1": float(f1)}


# --- translation, summarization ------------------------------------------------------------------


def translation_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    import sacrebleu

    preds = [p.strip() for p in predictions]
    refs = [[r.strip() for r in references]]
    return {
        "bleu": float(sacrebleu.corpus_bleu(preds, refs).score),
        "chrf": float(sacrebleu.corpus_chrf(preds, refs).score),
    }


def rouge_scorer_for(names: Sequence[str]):
    """The one ROUGE setup of this project (stemmed F-measure), shared with the text_similarity grader."""
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(names), use_stemmer=True)


def summarization_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    names = ("rouge1", "rouge2", "rougeL")
    scorer = rouge_scorer_for(names)
    totals = dict.fromkeys(names, 0.0)
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(reference, prediction)
        for name in names:
            totals[name] += scores[name].fmeasure
    return {name: totals[name] / len(references) for name in names}
