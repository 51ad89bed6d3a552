"""Packaging and registering the fine-tuned model.

- `mlflow_model`: writes the MLflow transformers-flavor folder (Fine-Tune).
- `target`: Azure ML job or local run; the pipeline run id.
- `tags`, `model_info`: what a registered version carries, and what Register reports.
- `local`: the MLflow registry the tracking URI points at. `azure`: the workspace or an Azure ML registry.
"""
