"""Evaluation of a base and a fine-tuned model: loss, task metrics, sample generations, quality gate.

- `metrics`: which metrics each task gets, their direction, and their computation (sacrebleu,
  rouge-score, scikit-learn).
- `generation`: test examples from the prepared data, token-weighted loss, batched greedy decoding.
- `gate`: the quality gate that decides whether Register may register the model (decision.json).
- `report`: the Markdown/HTML report and PNG charts.
"""
