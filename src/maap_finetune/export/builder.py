"""ONNX Runtime GenAI's model builder (`onnxruntime_genai.models.builder`), checked before it runs.

The builder reads one Hugging Face folder (config, weights, tokenizer) and writes `model.onnx`,
its external data, `genai_config.json` and the tokenizer files. Fine-Tune's MLflow model keeps the
weights (`model/`) and the tokenizer (`components/tokenizer/`) apart, so `stage_hf_folder` links
both into one folder. Everything the builder would refuse late (an architecture it has no
exporter for, a precision the execution provider cannot run) is refused here, before any weight
is read, with the supported choices listed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from maap_finetune.common.errors import UserError

# Valid precision per execution provider (the builder prints this table; fp16 on CPU is not in it).
PRECISIONS = {"cpu": ("int4", "fp32"), "cuda": ("int4", "fp16", "fp32")}
INT4_BLOCK_SIZES = (16, 32, 64, 128, 256)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json",
                   "chat_template.jinja", "chat_template.json", "added_tokens.json", "vocab.json", "merges.txt")


def supported_architectures() -> list[str]:
    """The `architectures[0]` values the installed builder has an exporter for (read from its source).

    Read as text, not imported: importing the builder imports torch, transformers and onnx (about 430 MB),
    which this process would then hold beside the build child's peak for the whole build."""
    import importlib.util

    spec = importlib.util.find_spec("onnxruntime_genai.models.builder")
    source = Path(spec.origin).read_text(encoding="utf-8") if spec and spec.origin else ""
    dispatch = source[source.find("def create_model("):]
    found = re.findall(r'config\.architectures\[0\] == "(\w+)"', dispatch[:dispatch.find("\ndef ", 1)])
    if not found:  # a builder whose dispatch we cannot read: say so rather than refuse every model
        raise RuntimeError("cannot read the supported architectures from onnxruntime_genai.models.builder")
    return sorted(set(found))


def check_architecture(config_path: Path) -> str:
    """The model's architecture, or a UserError listing the supported ones."""
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{config_path}: cannot read the model config ({err})") from None
    architectures = config.get("architectures") or []
    supported = supported_architectures()
    if not architectures or architectures[0] not in supported:
        found = architectures[0] if architectures else "none recorded"
        raise UserError(
            f"{config_path}: architecture {found!r} cannot be exported by onnxruntime-genai's model builder; "
            f"supported: {', '.join(supported)}"
        )
    return architectures[0]


def cuda_available() -> bool:
    import onnxruntime_genai as og

    return bool(og.is_cuda_available())


def check_provider(execution_provider: str, precision: str, cuda: bool | None = None) -> None:
    """Refuse a precision the provider cannot run, or CUDA on a node without it, with the fix."""
    allowed = PRECISIONS[execution_provider]
    if precision not in allowed:
        others = [p for p, precisions in PRECISIONS.items() if precision in precisions]
        raise UserError(
            f"precision {precision} does not run on execution_provider {execution_provider} (it supports "
            f"{', '.join(allowed)}); set precision to one of those"
            + (f", or execution_provider to {' or '.join(others)}" if others else "")
        )
    if execution_provider == "cuda" and not (cuda_available() if cuda is None else cuda):
        raise UserError(
            f"execution_provider cuda with precision {precision} needs a CUDA GPU and onnxruntime-genai-cuda on "
            "this node, and this node has none (onnxruntime_genai.is_cuda_available() is False); set "
            "execution_provider=cpu (precision int4 or fp32), or run export_onnx on a GPU compute with an "
            "environment that installs onnxruntime-genai-cuda"
        )


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    try:
        return config.is_file() and bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
    except ValueError:
        return False


def stage_hf_folder(model_dir: Path, tokenizer_dir: Path, dest: Path) -> Path:
    """One folder with the weights and the tokenizer (symlinks), as the builder reads it."""
    if not (tokenizer_dir / "tokenizer_config.json").is_file() or not (
        (tokenizer_dir / "tokenizer.json").is_file() or (tokenizer_dir / "tokenizer.model").is_file()
    ):
        raise UserError(
            f"{tokenizer_dir}: no tokenizer (tokenizer_config.json with tokenizer.json or tokenizer.model); "
            "the ONNX model needs one to chat; give Fine-Tune's mlflow_model output, which carries it"
        )
    if not _has_chat_template(tokenizer_dir):
        raise UserError(
            f"{tokenizer_dir}: the tokenizer has no chat template (chat_template.jinja or tokenizer_config.json's "
            "chat_template); the parity prompts and the exported model's users render chats with it"
        )
    dest.mkdir(parents=True, exist_ok=True)
    for source in sorted(model_dir.iterdir()):
        if source.is_file() and source.name not in TOKENIZER_FILES:
            (dest / source.name).symlink_to(source.resolve())
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            (dest / name).symlink_to((tokenizer_dir / name).resolve())
    return dest


class BuildChild:
    """One spawned child process for the export's builds and the graph check's PyTorch side.

    A child, because the builder's peak (the weights as saved plus its fp32 graph, about 7 bytes per
    parameter) stays in this process's heap after it returns (the allocator keeps it), and the parity checks
    that follow then add to it: measured at 443M parameters, 4.50 GB for the step against 3.73 GB for the
    builder alone. The child's memory goes back to the system when it exits; its errors are raised here.
    One child for every job: its start and imports (torch, transformers, the builder; about 10 s on 2 cores)
    are paid once, and the full build reuses the heap the graph check's job freed there.
    """

    def __init__(self):
        self._pool = None

    def __enter__(self) -> BuildChild:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def submit(self, function, *args):
        """`function(*args)` in the child (a Future); jobs run one at a time, in the order submitted."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        if self._pool is None:
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        return self._pool.submit(function, *args)

    def build(self, hf_folder: Path, output: Path, precision: str, execution_provider: str, cache_dir: Path,
              int4_block_size: int, int4_accuracy_level: int | None) -> Path:
        self.submit(_build_here, str(hf_folder), str(output), precision, execution_provider, str(cache_dir),
                    int4_block_size, int4_accuracy_level).result()
        return _built(output)

    def close(self, wait: bool = True) -> None:
        """End the child (its memory goes back to the system); a later job starts a new one. Without `wait`,
        jobs not started are cancelled and the child exits on its own (its interpreter's teardown, about 1 s
        on 2 cores, then overlaps what this process does next)."""
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=not wait)
            self._pool = None


def build(hf_folder: Path, output: Path, precision: str, execution_provider: str, cache_dir: Path,
          int4_block_size: int, int4_accuracy_level: int | None, in_child: bool = True) -> Path:
    """Run the model builder, in a child process of its own (`in_child`, see BuildChild) or here;
    returns `output` (genai_config.json, model.onnx, ...)."""
    if in_child:
        with BuildChild() as child:
            return child.build(hf_folder, output, precision, execution_provider, cache_dir, int4_block_size,
                               int4_accuracy_level)
    _build_here(str(hf_folder), str(output), precision, execution_provider, str(cache_dir), int4_block_size,
                int4_accuracy_level)
    return _built(output)


def _built(output: Path) -> Path:
    if not (output / "genai_config.json").is_file():
        raise RuntimeError(f"the model builder finished without writing {output / 'genai_config.json'}")
    return output


def _build_here(hf_folder: str, output: str, precision: str, execution_provider: str, cache_dir: str,
                int4_block_size: int, int4_accuracy_level: int | None) -> None:
    from onnxruntime_genai.models.builder import create_model, parse_extra_options

    options = {"hf_token": "false"}  # a local folder: never ask the Hugging Face Hub for anything
    if precision == "int4":
        options["block_size"] = str(int4_block_size)
        if int4_accuracy_level is not None:
            options["accuracy_level"] = str(int4_accuracy_level)
    argv = [f"{k}={v}" for k, v in options.items()]
    extra = parse_extra_options(None, hf_folder, output, precision, execution_provider, cache_dir, argv)
    create_model(None, hf_folder, output, precision, execution_provider, cache_dir, **extra)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
