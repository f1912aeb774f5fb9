"""Checkpoints that survive a kill at any moment, and resume exactly.

    checkpoints/step-0000200/model.safetensors   weights (safetensors: no pickle)
    checkpoints/step-0000200/state.pt            optimizer, RNG, data position, loop state (loaded weights_only)
    checkpoints/last -> step-0000200             symlinks, swapped atomically with os.replace
    checkpoints/best -> step-0000150

A sharded (FSDP) run writes shards/ (torch.distributed.checkpoint: every rank its part of the weights and
optimizer state) instead of model.safetensors, and state.pt without the optimizer (see trainlab.distributed).

A checkpoint is written whole into a temporary folder, fsynced, renamed into place, and only then do the links
move; so `last` always points at a complete checkpoint, and older step folders are deleted only after that.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from trainlab.errors import UserError

WEIGHTS, STATE, SHARDS = "model.safetensors", "state.pt", "shards"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(ckpt_root: Path, step: int, model: nn.Module, state: dict, links: tuple[str, ...] = ("last",)) -> Path:
    ckpt_root.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_root / f".tmp-{step:07d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, str(tmp / WEIGHTS))
    torch.save(state, tmp / STATE)
    return commit(ckpt_root, tmp, step, links)


def commit(ckpt_root: Path, tmp: Path, step: int, links: tuple[str, ...]) -> Path:
    """Make the complete checkpoint written in `tmp` durable, give it its step name, then move the links."""
    for f in tmp.rglob("*"):
        if f.is_file():
            _fsync(f)
    _fsync(tmp)
    final, n = ckpt_root / f"step-{step:07d}", 1
    while final.exists():  # e.g. best and last at one step written separately, or a resumed run
        n += 1
        final = ckpt_root / f"step-{step:07d}.{n}"
    os.rename(tmp, final)
    for name in links:
        _point(ckpt_root, name, final)
    _fsync(ckpt_root)
    prune(ckpt_root)
    return final


def _point(ckpt_root: Path, name: str, target: Path) -> None:
    link_tmp = ckpt_root / f".{name}.tmp"
    if link_tmp.is_symlink() or link_tmp.exists():
        link_tmp.unlink()
    os.symlink(target.name, link_tmp)
    os.replace(link_tmp, ckpt_root / name)  # atomic: readers see the old target or the new one


def prune(ckpt_root: Path) -> None:
    """Delete step folders that no link points at, and leftovers of interrupted writes."""
    keep = {(ckpt_root / n).resolve() for n in ("last", "best") if (ckpt_root / n).is_symlink()}
    for p in ckpt_root.iterdir():
        if p.name.startswith(".tmp-") or (p.name.startswith("step-") and p.resolve() not in keep):
            shutil.rmtree(p, ignore_errors=True)


def load(path: Path, model: nn.Module) -> dict:
    """Load weights into `model` and return the rest of the state. Damage is a UserError, not a traceback."""
    state = load_state(path, need=WEIGHTS)
    try:
        load_model(model, str(path / WEIGHTS))
    except Exception as e:  # safetensors raises several types on damaged or mismatched files
        raise UserError(f"checkpoint {path.resolve()} is corrupt or does not fit the model ({first_line(e)})",
                        "delete the run folder to start over, or resume a run with an intact checkpoint") from None
    return state


def load_state(path: Path, need: str) -> dict:
    """state.pt of the checkpoint at `path` (weights_only: no code runs), once `need` is there beside it."""
    if not (path / need).exists() or not (path / STATE).is_file():
        raise UserError(f"no complete checkpoint at {path}" + (f" (it has no {need})" if path.is_dir() else ""),
                        "resume needs a run folder whose training wrote a checkpoint; start without --resume")
    try:
        return torch.load(path / STATE, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"checkpoint state {path.resolve() / STATE} is corrupt ({first_line(e)})",
                        "delete the run folder to start over, or resume a run with an intact checkpoint") from None


def first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
