"""Preemption-proof checkpoints: only complete ones count, and a rerun resumes from the latest.

The HF Trainer writes `checkpoint-<step>/` in several files; a job killed halfway leaves a partial
folder. After the Trainer finishes a checkpoint (every rank done, via a barrier), rank 0 writes a
`COMPLETE` marker by atomic rename. On start, folders without the marker are removed (they can only
be the remains of an interrupted save) and training resumes from the highest complete step.

A checkpoint damaged after it was marked (a disk error, a truncated copy) is caught before resuming:
`checkpoint_damage` reads every file's structure (safetensors header and sizes, JSON, the zip archive of
torch files with its CRCs); a damaged one is moved aside (`checkpoint-<step>.damaged`, never deleted)
and the run resumes from the newest checkpoint that passes, or from scratch.

Old checkpoints are deleted here, after the marker, never by the Trainer (whose rotation runs before
the new checkpoint is marked, so a kill in between could leave no complete one, or lose the best).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import zipfile
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


def _safetensors_damage(path: Path) -> str | None:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return f"{size} bytes, shorter than a safetensors header"
        (header_len,) = struct.unpack("<Q", head)
        if 8 + header_len > size:
            return f"its header claims {header_len} bytes but the file has {size}"
        try:
            header = json.loads(f.read(header_len))
        except ValueError as err:
            return f"its header is not JSON ({err})"
    data = size - 8 - header_len
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    if max(ends, default=0) != data:
        return f"its tensors need {max(ends, default=0)} bytes of data, the file holds {data}"
    return None


def _torch_zip_damage(path: Path) -> str | None:
    if not zipfile.is_zipfile(path):
        return "not a complete torch archive (zip)"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        return f"a damaged torch archive ({err})"
    return f"a damaged torch archive (CRC of {bad})" if bad else None


def checkpoint_damage(folder: str | Path) -> str | None:
    """'<file>: <what is wrong>' for the first damaged file of a checkpoint, or None when every file reads."""
    for path in sorted(Path(folder).rglob("*")):
        if not path.is_file():
            continue
        try:
            if path.suffix == ".safetensors":
                problem = _safetensors_damage(path)
            elif path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
                problem = None
            elif path.suffix in (".pt", ".pth", ".bin"):
                problem = _torch_zip_damage(path)
            else:
                continue
        except (ValueError, UnicodeDecodeError) as err:
            problem = f"not valid JSON ({err})"
        except OSError as err:
            problem = f"unreadable ({err.strerror or err})"
        if problem:
            return f"{path}: {problem}"
    return None


def move_aside(folder: Path) -> Path:
    """Rename a damaged checkpoint to checkpoint-<step>.damaged[-n]: kept for inspection, never resumed."""
    target = folder.with_name(f"{folder.name}.damaged")
    n = 1
    while target.exists():
        n += 1
        target = folder.with_name(f"{folder.name}.damaged-{n}")
    folder.rename(target)
    return target


def latest_sound_checkpoint(root: str | Path, move: bool = True) -> Path | None:
    """The newest complete checkpoint whose files all read; damaged newer ones are moved aside (with `move`)."""
    for _, path in reversed(_checkpoints(Path(root))):
        if not is_complete(path):
            continue
        problem = checkpoint_damage(path)
        if problem is None:
            return path
        where = move_aside(path) if move else path
        log.warning("checkpoint %s is damaged: %s; moved it to %s, resuming from an older one", path.name, problem,
                    where)
    return None


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


def rotate_checkpoints(root: str | Path, keep: int, protect: str | None = None) -> list[Path]:
    """Delete complete checkpoints older than the newest `keep`, except the one named `protect` (the best).

    Partial folders are left alone: the one being written is never touched, remains of a killed save
    are removed on the next start."""
    complete = [path for _, path in _checkpoints(Path(root)) if is_complete(path)]
    removed = []
    for path in complete[: max(0, len(complete) - keep)]:
        if path.name != protect:
            shutil.rmtree(path)
            removed.append(path)
    return removed


def checkpoint_name(step: int | None) -> str | None:
    return f"checkpoint-{step}" if step else None


class CompleteMarkerCallback(TrainerCallback):
    """Mark each checkpoint complete once every rank has finished writing it, then rotate old ones.

    With `keep_best`, the checkpoint of the best evaluation (`state.best_global_step`) is never rotated
    away, and on resume the Trainer is pointed at it inside this run's output folder (a preempted job may
    get its output folder mounted at another path; the Trainer would otherwise drop the recorded one)."""

    def __init__(self, save_total_limit: int, keep_best: bool = False):
        self.save_total_limit = save_total_limit
        self.keep_best = keep_best

    def on_train_begin(self, args, state, control, **kwargs):
        best = checkpoint_name(state.best_global_step)
        if self.keep_best and best and is_complete(Path(args.output_dir) / best):
            state.best_model_checkpoint = str(Path(args.output_dir) / best)
        return control

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                write_marker(folder)
            protect = checkpoint_name(state.best_global_step) if self.keep_best else None
            for path in rotate_checkpoints(args.output_dir, self.save_total_limit, protect):
                log.info("deleted %s (save_total_limit %d)", path.name, self.save_total_limit)
        return control
