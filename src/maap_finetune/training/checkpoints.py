"""Preemption-proof checkpoints: only complete ones count, and a rerun resumes from the latest.

The HF Trainer writes `checkpoint-<step>/` in several files; a job killed halfway leaves a partial
folder. After the Trainer finishes a checkpoint (every rank done, via a barrier), rank 0 writes a
`COMPLETE` marker by atomic rename. On start, folders without the marker are removed (they can only
be the remains of an interrupted save) and training resumes from the highest complete step.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from transformers import TrainerCallback

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def _checkpoints(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _CHECKPOINT.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).is_file() and (folder / "trainer_state.json").is_file()


def latest_complete_checkpoint(root: str | Path) -> Path | None:
    complete = [path for _, path in _checkpoints(Path(root)) if is_complete(path)]
    return complete[-1] if complete else None


def remove_partial_checkpoints(root: str | Path) -> list[Path]:
    """Delete checkpoint folders that never got their marker; return what was removed."""
    removed = []
    for _, path in _checkpoints(Path(root)):
        if not is_complete(path):
            shutil.rmtree(path)
            removed.append(path)
            log.warning("removed partial checkpoint %s (its save was interrupted)", path)
    return removed


def write_marker(folder: Path) -> None:
    tmp = folder / f".{MARKER}.tmp"
    tmp.write_text("ok\n")
    os.replace(tmp, folder / MARKER)


class CompleteMarkerCallback(TrainerCallback):
    """Mark each checkpoint complete once every rank has finished writing it."""

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                write_marker(folder)
        return control
