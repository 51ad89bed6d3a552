"""What the machine offers: CUDA, bf16 support, optional packages. Detected once, passed around,
so the preflight check and the builders agree and tests can describe a GPU machine on a CPU one."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class Environment:
    cuda: bool
    bf16_supported: bool
    bitsandbytes: bool
    deepspeed: bool
    flash_attn: bool
    triton: bool = False
    liger_kernel: bool = False
    vllm_version: str | None = None  # the installed vllm's version (None: not installed)
    vllm_import_error: str | None = None  # with CUDA and vllm installed: why `import vllm` failed (None: it imports)

    @classmethod
    def detect(cls) -> "Environment":
        import torch

        cuda = torch.cuda.is_available()
        vllm_version = _version("vllm")
        return cls(
            cuda=cuda,
            bf16_supported=bool(cuda and torch.cuda.is_bf16_supported()),
            bitsandbytes=_installed("bitsandbytes"),
            deepspeed=_installed("deepspeed"),
            flash_attn=_installed("flash_attn"),
            triton=_installed("triton"),
            liger_kernel=_installed("liger_kernel"),
            vllm_version=vllm_version,
            # Only where vLLM could run: importing it takes seconds, and TRL imports it next anyway.
            vllm_import_error=_import_error("vllm") if cuda and vllm_version else None,
        )


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def _import_error(module: str) -> str | None:
    """Why `module` fails to import (its first line), or None when it imports."""
    try:
        importlib.import_module(module)
    except Exception as err:  # a build for another CUDA or torch fails in many ways; the reason is reported
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
    return None
