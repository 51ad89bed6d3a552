"""Fetch a Hugging Face Hub base model once, up front, with errors a user can act on.

Every later `from_pretrained` then reads the local snapshot. Without this, a misspelt, gated or
unreachable model id surfaces as a page of retries and a traceback from deep inside transformers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from maap_finetune.common.errors import UserError
from maap_finetune.models.source import ModelSource

# Formats we never load: other frameworks' weights and exports.
_NEVER = ["*.onnx", "*.onnx_data", "onnx/*", "*.gguf", "*.msgpack", "*.h5", "*.ot", "*.tflite", "*.mlmodel", "coreml/*"]
_TORCH_PICKLES = ["*.bin", "*.pt", "*.pth"]

FIX = (
    "check the id's spelling; for a gated model accept its license on huggingface.co and pass a token "
    "(submit.py --hf-token-secret <Key Vault secret name>, or HF_TOKEN in the environment of a local run); "
    "or give the model as model_path (a local folder, azureml:<name>:<version> or a registry model)"
)


def fetch_hub_model(source: ModelSource) -> ModelSource:
    """Download `source` (a Hub id) into the Hugging Face cache; return it pointing at the snapshot.

    A local source is returned unchanged. safetensors weights are preferred: pickled torch weights are
    fetched only when the repo has no safetensors, so a model that ships both is not downloaded twice.
    """
    if source.is_local:
        return source
    from huggingface_hub import snapshot_download

    from maap_finetune.common.secrets import load_hf_token

    load_hf_token()
    with hub_errors(source.model):
        folder = snapshot_download(source.model, ignore_patterns=_NEVER + _TORCH_PICKLES)
        if not any(Path(folder).glob("*.safetensors")):  # an older repo with pickled weights only
            folder = snapshot_download(source.model, ignore_patterns=_NEVER)
    tokenizer = folder if source.tokenizer == source.model else source.tokenizer
    return replace(source, model=folder, tokenizer=tokenizer, hub_id=source.model)


@contextmanager
def hub_errors(model_id: str) -> Iterator[None]:
    """Turn the Hub's errors for `model_id` into one UserError line; anything else propagates."""
    try:
        yield
    except Exception as err:
        reason = describe_hub_error(err)
        if reason is None:
            raise
        raise UserError(f"cannot fetch base model {model_id!r} from the Hugging Face Hub: {reason}. Fix: {FIX}") from None


def describe_hub_error(err: BaseException) -> str | None:
    """Why the Hub refused, in a few words; None for errors that are not the Hub's (bugs keep their traceback)."""
    from huggingface_hub import errors

    if isinstance(err, errors.GatedRepoError):
        return "the model is gated and this token has not been granted access (or no token was given)"
    if isinstance(err, errors.RepositoryNotFoundError):
        return "no such model, or it is private or gated and no valid token was given"
    if isinstance(err, errors.RevisionNotFoundError):
        return "the revision does not exist"
    if isinstance(err, errors.OfflineModeIsEnabled) or (isinstance(err, errors.LocalEntryNotFoundError) and "disabled" in str(err)):
        return "HF_HUB_OFFLINE is set and the model is not in the local cache"
    if isinstance(err, errors.LocalEntryNotFoundError):  # snapshot_download's wrapper for connection failures
        return "the Hub cannot be reached (no network?) and the model is not in the local cache"
    if isinstance(err, errors.HfHubHTTPError):
        status = getattr(getattr(err, "response", None), "status_code", None)
        return f"HTTP {status}" if status else str(err).splitlines()[0]
    return None
