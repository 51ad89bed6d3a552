"""string_check and text_similarity: the graders that compare two rendered strings, with no model.

string_check, as the RFT docs define its operations: eq / ne compare exactly (case-sensitive); like is
"input contains reference" (case-sensitive), ilike the same ignoring case. 1.0 when the check holds, else 0.0.

text_similarity, 0 to 1, each metric from a maintained library:
| metric            | computed with                                                              |
|-------------------|----------------------------------------------------------------------------|
| fuzzy_match       | rapidfuzz `fuzz.ratio` / 100 (normalized Indel similarity)                 |
| bleu              | sacrebleu `sentence_bleu` / 100, as Evaluate's corpus BLEU                 |
| gleu              | nltk `sentence_gleu` on whitespace tokens                                  |
| meteor            | nltk `meteor_score` (needs nltk's WordNet data; refused at load without it) |
| rouge_1..rouge_5, rouge_l | rouge-score F-measure, stemmed, as Evaluate's ROUGE                |
`cosine` needs an embedding model and is refused at load: use a score_model or python grader instead.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

STRING_OPERATIONS: dict[str, Callable[[str, str], bool]] = {
    "eq": lambda text, ref: text == ref,
    "ne": lambda text, ref: text != ref,
    "like": lambda text, ref: ref in text,
    "ilike": lambda text, ref: ref.lower() in text.lower(),
}


def string_check(operation: str, text: str, reference: str) -> float:
    return float(STRING_OPERATIONS[operation](text, reference))


def fuzzy_match(text: str, reference: str) -> float:
    from rapidfuzz import fuzz

    return float(fuzz.ratio(text, reference)) / 100.0


def bleu(text: str, reference: str) -> float:
    import sacrebleu

    return float(sacrebleu.sentence_bleu(text.strip(), [reference.strip()]).score) / 100.0


def gleu(text: str, reference: str) -> float:
    from nltk.translate.gleu_score import sentence_gleu

    return float(sentence_gleu([reference.split()], text.split()))


def meteor(text: str, reference: str) -> float:
    from nltk.translate.meteor_score import meteor_score

    return float(meteor_score([reference.split()], text.split()))


def rouge(name: str) -> Callable[[str, str], float]:
    from maap_finetune.evaluation.metrics import rouge_scorer_for

    scorer = rouge_scorer_for((name,))

    def score(text: str, reference: str) -> float:
        return float(scorer.score(reference, text)[name].fmeasure)

    return score


ROUGE = {f"rouge_{n}": f"rouge{n}" for n in range(1, 6)} | {"rouge_l": "rougeL"}
METRICS = ("fuzzy_match", "bleu", "gleu", "meteor", *ROUGE)
REFUSED = {"cosine": "needs an embedding model, which this project does not call; grade semantic closeness "
                     "with a score_model or python grader"}


def metric_problem(metric: str) -> str | None:
    """Why `metric` cannot be computed here, or None."""
    if metric in REFUSED:
        return f"evaluation_metric {metric!r} {REFUSED[metric]}"
    if metric not in METRICS:
        return f"evaluation_metric {metric!r} is not one of {', '.join(METRICS)}"
    if metric == "meteor" and not _wordnet_present():
        return ("evaluation_metric 'meteor' needs nltk's WordNet data, which is not installed "
                "(python -m nltk.downloader wordnet in the environment), or choose another metric")
    return None


@functools.cache
def _wordnet_present() -> bool:
    import nltk

    try:
        nltk.data.find("corpora/wordnet")
    except LookupError:
        try:
            nltk.data.find("corpora/wordnet.zip")
        except LookupError:
            return False
    return True


def similarity(metric: str) -> Callable[[str, str], float]:
    if metric in ROUGE:
        return rouge(ROUGE[metric])
    return {"fuzzy_match": fuzzy_match, "bleu": bleu, "gleu": gleu, "meteor": meteor}[metric]
