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

Limits (the deployment's environment variables, set by pipelines/deploy.py):
- MAAP_MAX_REQUEST_BYTES (default 1000000): a longer body is HTTP 413 before it is read or parsed.
- SCORING_TIMEOUT_MS (azmlinfsrv's own setting; deploy.py sets the deployment's request_timeout_ms):
  generation stops there (transformers' max_time) and the answer is HTTP 504. The server's own alarm
  cannot stop a request in a worker thread, so this script enforces it.
- MAAP_MAX_PENDING_REQUESTS (default 20): requests running or waiting; one more is HTTP 503. Requests
  are scored one at a time (the model's memory is sized for one); the server's other threads
  (GUNICORN_CMD_ARGS="--threads N") answer the liveness and readiness probes meanwhile.
A chat request is checked before predict: every field named, typed and bounded; prompt tokens plus
max_tokens must fit the model's context. A malformed request is HTTP 400 naming the field and the
reason; the server log keeps the detail of any failure, the client never gets a traceback.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from pathlib import Path

from azureml_inference_server_http.api.aml_request import rawhttp
from azureml_inference_server_http.api.aml_response import AMLResponse

_logger = logging.getLogger(__name__)
model = None
limits = None

MAX_BYTES_ENV, DEFAULT_MAX_BYTES = "MAAP_MAX_REQUEST_BYTES", 1_000_000
TIMEOUT_ENV, DEFAULT_TIMEOUT_MS = "SCORING_TIMEOUT_MS", 180_000  # Azure's maximum request_timeout_ms
PENDING_ENV, DEFAULT_PENDING = "MAAP_MAX_PENDING_REQUESTS", 20
ROLES = ("system", "user", "assistant")
MESSAGE_FIELDS = ("role", "content", "name")
# The llm/v1/chat fields that reach generation (MLflow's chat signature; n, stream and tools are not served).
GENERATION_FIELDS = ("max_tokens", "temperature", "top_p", "top_k", "stop")
CHAT_FIELDS = ("messages", *GENERATION_FIELDS)


class BadRequest(ValueError):
    """A request the client must fix: HTTP 400 with `field: reason`."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}" if field else reason)


class Limits:
    """The deployment's limits and the one-at-a-time scoring lock."""

    def __init__(self, environ=os.environ):
        self.max_bytes = _int_setting(environ, MAX_BYTES_ENV, DEFAULT_MAX_BYTES)
        self.timeout_ms = _int_setting(environ, TIMEOUT_ENV, DEFAULT_TIMEOUT_MS)
        self.pending = threading.BoundedSemaphore(_int_setting(environ, PENDING_ENV, DEFAULT_PENDING))
        self.scoring = threading.Lock()


def _int_setting(environ, name: str, default: int) -> int:
    raw = environ.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"environment variable {name}={raw!r}: must be a positive integer (default {default})")
    return value


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
    global model, limits
    import mlflow.pyfunc

    limits = Limits()
    path = model_folder(os.environ["AZUREML_MODEL_DIR"])
    _logger.info("loading MLflow model from %s (limits: %d bytes, %d ms)", path, limits.max_bytes, limits.timeout_ms)
    model = mlflow.pyfunc.load_model(str(path))


def _chat_pipeline(loaded):
    """The transformers pipeline behind an llm/v1/chat MLflow model, or None for other models."""
    impl = getattr(loaded, "_model_impl", None)
    if getattr(impl, "llm_inference_task", None) != "llm/v1/chat":
        return None
    return getattr(impl, "pipeline", None)


def context_length(pipeline) -> int:
    """The model's context in tokens: its position embeddings, or the tokenizer's limit when smaller."""
    lengths = [getattr(pipeline.model.config, "max_position_embeddings", None),
               getattr(pipeline.tokenizer, "model_max_length", None)]
    lengths = [n for n in lengths if isinstance(n, int) and 0 < n < 10**8]
    if not lengths:
        raise RuntimeError("the model declares no context length (max_position_embeddings)")
    return min(lengths)


def prompt_tokens(pipeline, messages: list[dict]) -> int:
    """Tokens of the rendered chat prompt, as MLflow's chat pipeline counts them."""
    text = pipeline.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(pipeline.tokenizer(text, add_special_tokens=False)["input_ids"])


def _reject_constant(name: str):
    raise BadRequest("", f"{name} is not JSON (numbers must be finite)")


def parse_request(raw_data: str | bytes) -> tuple[object, dict | None]:
    """(input_data, params) from the request body; BadRequest names what is wrong."""
    try:
        body = json.loads(raw_data, parse_constant=_reject_constant)
    except RecursionError:
        raise BadRequest("", "the request body is nested too deeply") from None
    except UnicodeDecodeError as err:
        raise BadRequest("", f"the request body is not UTF-8: {err.reason} at byte {err.start}") from None
    except BadRequest:
        raise
    except (TypeError, ValueError) as err:
        raise BadRequest("", f"the request body is not JSON: {err}") from None
    if not isinstance(body, dict) or "input_data" not in body:
        raise BadRequest("", 'the request must be a JSON object with the key "input_data", e.g. '
                             '{"input_data": {"messages": [{"role": "user", "content": "Hi"}]}}')
    params = body.get("params")
    if params is not None and not isinstance(params, dict):
        raise BadRequest("params", "must be a JSON object")
    return body["input_data"], params


def _text(value, field: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(field, f"must be a string, got {_kind(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise BadRequest(field, f"is not valid Unicode ({err.reason} at character {err.start})") from None
    return value


def _kind(value) -> str:
    return "null" if value is None else {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
                                         list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def _number(value, field: str, low: float, high: float, *, integer: bool = False, open_low: bool = False):
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise BadRequest(field, f"must be {'an integer' if integer else 'a number'}, got {_kind(value)} {value!r}")
    if not math.isfinite(value) or value < low or value > high or (open_low and value == low):
        bounds = f"{'more than' if open_low else 'at least'} {low} and at most {high}"
        raise BadRequest(field, f"must be {bounds}, got {value!r}")
    return value


def check_chat(input_data, params) -> dict:
    """The chat request for predict: every field checked, params merged under input_data's own fields."""
    if not isinstance(input_data, dict):
        raise BadRequest("input_data", f'must be an object such as {{"messages": [{{"role": "user", "content": "Hi"}}]}}, '
                                       f"got {_kind(input_data)}")
    for where, fields, allowed in (("input_data", input_data, CHAT_FIELDS), ("params", params or {}, GENERATION_FIELDS)):
        for key in fields:
            if key not in allowed:
                raise BadRequest(f"{where}.{_text(key, where)}", f"unknown field; allowed: {', '.join(allowed)}")
    request = {**(params or {}), **input_data}
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("input_data.messages", f"must be a non-empty list of messages, got {_kind(messages)}"
                                                f"{' (empty)' if messages == [] else ''}")
    for i, message in enumerate(messages):
        field = f"input_data.messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(field, f'must be an object {{"role": ..., "content": ...}}, got {_kind(message)}')
        for key in message:
            if key not in MESSAGE_FIELDS:
                raise BadRequest(f"{field}.{_text(key, field)}", f"unknown field; allowed: {', '.join(MESSAGE_FIELDS)}")
        for key in ("role", "content"):
            if key not in message:
                raise BadRequest(f"{field}.{key}", "is missing")
            _text(message[key], f"{field}.{key}")
        if message["role"] not in ROLES:
            raise BadRequest(f"{field}.role", f"must be one of {', '.join(ROLES)}, got {message['role']!r}")
        if "name" in message:
            _text(message["name"], f"{field}.name")
    if messages[-1]["role"] != "user":
        raise BadRequest(f"input_data.messages[{len(messages) - 1}].role",
                         f"the conversation must end with a user message for the model to answer, got "
                         f"{messages[-1]['role']!r}")
    if "temperature" in request:
        _number(request["temperature"], "input_data.temperature", 0, 2)
    if "top_p" in request:
        _number(request["top_p"], "input_data.top_p", 0, 1, open_low=True)
    if "top_k" in request:
        _number(request["top_k"], "input_data.top_k", 1, 10**6, integer=True)
    if "stop" in request:
        stop = request["stop"]
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not stops:
            raise BadRequest("input_data.stop", f"must be a string or a non-empty list of strings, got {_kind(stop)}")
        for i, item in enumerate(stops):
            _text(item, f"input_data.stop[{i}]")
    if "max_tokens" in request:
        _number(request["max_tokens"], "input_data.max_tokens", 1, 10**9, integer=True)
    return request


def check_context(request: dict, pipeline) -> None:
    """The prompt plus max_tokens fit the model's context (run under the scoring lock: the tokenizer is shared)."""
    context = context_length(pipeline)
    prompt = prompt_tokens(pipeline, request["messages"])
    room = context - prompt
    if room < 1:
        raise BadRequest("input_data.messages", f"the prompt is {prompt} tokens; the model's context is {context} "
                                                f"tokens: shorten the conversation")
    if "max_tokens" in request:
        max_tokens = request["max_tokens"]
        if max_tokens > room:
            raise BadRequest("input_data.max_tokens", f"the prompt is {prompt} tokens and max_tokens is {max_tokens}: "
                                                      f"together more than the model's context of {context} tokens; "
                                                      f"max_tokens can be at most {room}")


def _error(status: int, message: str) -> AMLResponse:
    _logger.info("answered %d: %s", status, message[:2000])  # the server log keeps what the client was told
    return AMLResponse({"error": message}, status, json_str=True)


def _read_body(request) -> bytes:
    """The body, at most limits.max_bytes; BodyTooLarge before reading when the client declares more."""
    if request.content_length is not None and request.content_length > limits.max_bytes:
        raise BodyTooLarge(request.content_length)
    data = request.stream.read(limits.max_bytes + 1)
    if len(data) > limits.max_bytes:
        raise BodyTooLarge(None)
    return data


class BodyTooLarge(Exception):
    def __init__(self, size: int | None):
        self.size = size


@rawhttp
def run(request):
    """Score one request: 400 for a malformed one, 413 for a body over the limit, 503 when too many wait,
    504 at the timeout; never a stack trace."""
    started = time.monotonic()
    if request.method != "POST":
        return _error(405, "send the request as POST with a JSON body")
    try:
        raw = _read_body(request)
    except BodyTooLarge as err:
        size = f"{err.size} bytes" if err.size is not None else "more"
        return _error(413, f"the request body is {size}; this deployment takes at most {limits.max_bytes} bytes "
                           f"({MAX_BYTES_ENV})")
    if not limits.pending.acquire(blocking=False):
        return _error(503, "too many requests are waiting; retry later")
    try:
        try:
            input_data, params = parse_request(raw)
            pipeline = _chat_pipeline(model)
            if pipeline is not None:
                input_data, params = check_chat(input_data, params), None
        except BadRequest as err:
            return _error(400, str(err))
        return _score(input_data, params, pipeline, started)
    finally:
        limits.pending.release()


def _score(input_data, params, pipeline, started: float):
    budget_s = limits.timeout_ms / 1000 - (time.monotonic() - started)
    if budget_s <= 0 or not limits.scoring.acquire(timeout=budget_s):
        return _error(504, f"scoring did not start within the request timeout of {limits.timeout_ms} ms "
                           f"({TIMEOUT_ENV}); retry later")
    try:
        if pipeline is not None:
            try:
                check_context(input_data, pipeline)
            except BadRequest as err:
                return _error(400, str(err))
        remaining = limits.timeout_ms / 1000 - (time.monotonic() - started)
        config = pipeline.model.generation_config if pipeline is not None else None
        if config is not None:
            config.max_time = max(remaining, 0.001)  # transformers stops generating there
        try:
            result = model.predict(input_data, params=params)
        finally:
            if config is not None:
                config.max_time = None
    finally:
        limits.scoring.release()
    if time.monotonic() - started >= limits.timeout_ms / 1000:
        _logger.warning("scoring stopped at the request timeout of %d ms", limits.timeout_ms)
        return _error(504, f"scoring stopped at the request timeout of {limits.timeout_ms} ms ({TIMEOUT_ENV}): "
                           f"ask for fewer max_tokens")
    if hasattr(result, "to_dict"):  # a pandas DataFrame/Series from non-chat models
        result = result.to_dict(orient="records") if hasattr(result, "columns") else result.to_list()
    return result
