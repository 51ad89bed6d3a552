"""Scoring script for maap-finetune models on Azure ML managed online endpoints (azmlinfsrv).

Why not no-code deployment: Azure ML's generated MLflow scoring script
(azureml-assets `assets/inference/environments/mlflow-py312-inference/context/mlflow_score_script.py`)
fails at import for an MLflow `llm/v1/chat` model: its signature has array/object columns
(`messages`, `choices`), which that script's sample builders do not handle (UnboundLocalError in
`create_other_sample_io`, then "Failed to get pandas types" for the outputs). This script keeps that
script's request contract, so a request written for it works here unchanged:

    {"input_data": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 64},
     "params": {...optional, passed to predict(params=)...}}

and answers with the model's own output (for chat: an OpenAI-style chat completion).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

_logger = logging.getLogger(__name__)
model = None


def model_folder(root: str | os.PathLike) -> Path:
    """The MLflow model folder under AZUREML_MODEL_DIR: the root itself or the one child with an MLmodel."""
    root = Path(root)
    if (root / "MLmodel").exists():
        return root
    candidates = sorted(p.parent for p in root.glob("*/MLmodel"))
    if len(candidates) != 1:
        raise FileNotFoundError(f"expected one MLflow model (a folder with MLmodel) under {root}, found {len(candidates)}")
    return candidates[0]


def init() -> None:
    """Load the model once per worker; azmlinfsrv calls this before the first request."""
    global model
    import mlflow.pyfunc

    path = model_folder(os.environ["AZUREML_MODEL_DIR"])
    _logger.info("loading MLflow model from %s", path)
    model = mlflow.pyfunc.load_model(str(path))


def parse_request(raw_data: str | bytes) -> tuple[object, dict | None]:
    """(input_data, params) from the request body; ValueError names what is wrong."""
    try:
        body = json.loads(raw_data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"the request body is not JSON: {err}") from None
    if not isinstance(body, dict) or "input_data" not in body:
        raise ValueError('the request must be a JSON object with the key "input_data", e.g. '
                         '{"input_data": {"messages": [{"role": "user", "content": "Hi"}]}}')
    params = body.get("params")
    if params is not None and not isinstance(params, dict):
        raise ValueError('"params" must be a JSON object')
    return body["input_data"], params


def run(raw_data: str):
    """Score one request; a malformed request is HTTP 400 with the reason, never a stack trace."""
    from azureml_inference_server_http.api.aml_response import AMLResponse

    try:
        input_data, params = parse_request(raw_data)
    except ValueError as err:
        return AMLResponse({"error": str(err)}, 400, json_str=True)
    result = model.predict(input_data, params=params)
    if hasattr(result, "to_dict"):  # a pandas DataFrame/Series from non-chat models
        result = result.to_dict(orient="records") if hasattr(result, "columns") else result.to_list()
    return result
