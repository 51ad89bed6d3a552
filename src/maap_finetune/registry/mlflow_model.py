"""Write a model as an MLflow transformers-flavor folder that serves chat requests.

Fine-Tune calls `save_mlflow_model` on the merged model; Register imports it for models it
packages itself. The folder is written with `mlflow.transformers.save_model` (never the logged-models
API, which Azure ML's tracking server does not serve): `MLmodel`, `model/` (weights),
`components/tokenizer/` (tokenizer and chat template), a signature and an input example. The task
`llm/v1/chat` makes `mlflow.pyfunc.load_model(path).predict({"messages": [...]})` and Azure ML
online endpoints answer OpenAI-style chat requests.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

CHAT_TASK = "llm/v1/chat"
TEXT_TASK = "text-generation"
INPUT_EXAMPLE_CHAT = {
    "messages": [{"role": "user", "content": "What is the warranty on a new bike?"}],
    "max_tokens": 32,
    "temperature": 0.0,
}


def save_mlflow_model(
    model: Any,
    tokenizer: Any,
    path: str | Path,
    *,
    task: str = CHAT_TASK,
    metadata: Mapping[str, Any] | None = None,
    input_example: Any = None,
    pip_requirements: list[str] | None = None,
) -> Path:
    """Save `model` + `tokenizer` to `path` (which must be absent or empty) as an MLflow transformers model.

    An empty `path` stays where it is (MLflow writes into an existing empty folder): in Azure ML it is
    the output's mount point, which cannot be removed.

    `tokenizer.chat_template` must be set for the chat task: it is saved with the tokenizer and used
    by the served model to render requests. Returns `path`.
    """
    import mlflow.transformers

    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise FileExistsError(f"{path} is not empty; an MLflow model folder must be written into an empty folder")
    if task not in (CHAT_TASK, TEXT_TASK):
        raise ValueError(f"task must be {CHAT_TASK!r} or {TEXT_TASK!r}, got {task!r}")
    if task == CHAT_TASK and not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat_template; the llm/v1/chat task needs one to render requests")
    if input_example is None:
        input_example = INPUT_EXAMPLE_CHAT if task == CHAT_TASK else "What is the warranty on a new bike?"
    greedy_unless_configured(model)
    # Generation stops at the tokens the model's generation config names (Phi-3: <|end|> and EOS).
    model_config = {"max_new_tokens": 64}
    mlflow.transformers.save_model(
        transformers_model={"model": model, "tokenizer": tokenizer},
        path=str(path),
        task=task,
        input_example=input_example,
        metadata=dict(metadata or {}),
        model_config=model_config if task == TEXT_TASK else None,
        pip_requirements=pip_requirements or _default_requirements(),
    )
    return path


def greedy_unless_configured(model: Any) -> None:
    """Make greedy decoding the saved model's default unless its generation config chooses.

    transformers' text-generation pipeline (what the served MLflow model runs) samples with temperature 0.7
    when the model's generation config leaves `do_sample` unset, so the same request got a different answer
    each time, and `temperature: 0` (what chat clients send for a deterministic answer) raised "`temperature`
    has to be a strictly positive float". An explicit `do_sample=False` keeps `generate()`'s own default:
    greedy, and temperature 0 accepted. MLflow fixes the llm/v1/chat signature (no `do_sample` input, no
    params), so a request cannot switch to sampling; temperature, top_p and top_k then have no effect
    (transformers warns). A base model whose generation config sets `do_sample` keeps its choice."""
    config = getattr(model, "generation_config", None)
    if config is not None and config.do_sample is None:
        config.do_sample = False


def _default_requirements() -> list[str]:
    """Pin what the serving environment needs to the versions that wrote the model."""
    from importlib.metadata import PackageNotFoundError, version

    requirements = []
    for package in ("mlflow", "transformers", "torch", "tokenizers", "safetensors", "accelerate"):
        try:
            requirements.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return [r.split("+")[0] for r in requirements]  # local build tags (torch 2.x+cpu) are not on PyPI
