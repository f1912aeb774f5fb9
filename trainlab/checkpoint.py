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
from safetensors.torch import load_file, save_model
from torch import nn

from trainlab.errors import UserError, first_line

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


def linked_step(ckpt_root: Path, name: str = "last") -> int | None:
    """The step of the checkpoint a link points at (from its folder's name), None when there is none."""
    link = ckpt_root / name
    if not link.is_symlink():
        return None
    stem = os.readlink(link).split(".")[0]
    return int(stem[5:]) if stem.startswith("step-") and stem[5:].isdigit() else None


def repair_best(ckpt_root: Path, step: int, best: dict | None) -> None:
    """`last` and `best` move one after the other. A kill between the two moves (both due at one step) leaves
    `best` one evaluation behind; `last`'s state says which step is best, so when that is `last`'s own step,
    `best` is pointed at `last`'s folder here, before the resumed run reads either."""
    last, best_link = ckpt_root / "last", ckpt_root / "best"
    if best is None or best["step"] != step or not last.is_symlink():
        return
    if best_link.is_symlink() and best_link.resolve() == last.resolve():
        return
    _point(ckpt_root, "best", last.resolve())
    _fsync(ckpt_root)
    prune(ckpt_root)


def prune(ckpt_root: Path) -> None:
    """Delete step folders that no link points at, and leftovers of interrupted writes."""
    keep = {(ckpt_root / n).resolve() for n in ("last", "best") if (ckpt_root / n).is_symlink()}
    for p in ckpt_root.iterdir():
        if p.name.startswith(".tmp-") or (p.name.startswith("step-") and p.resolve() not in keep):
            shutil.rmtree(p, ignore_errors=True)


def load(path: Path, model: nn.Module, need_optimizer: bool = False, loop_state: bool = False) -> dict:
    """Load weights into `model` and return the rest of the state. Damage is a UserError, not a traceback.
    `loop_state`: validate the state as the training loop's (trainlab.files.LoopState)."""
    state = load_state(path, need=WEIGHTS, need_optimizer=need_optimizer, loop_state=loop_state)
    try:
        load_weights(model, path / WEIGHTS)
    except ValueError as e:
        raise UserError(f"checkpoint {path.resolve()} is corrupt or does not fit the model ({e})",
                        "delete the run folder to start over, or resume a run with an intact checkpoint") from None
    return state


def load_state(path: Path, need: str, need_optimizer: bool = False, loop_state: bool = False) -> dict:
    """state.pt of the checkpoint at `path` (weights_only: no code runs), once `need` is there beside it."""
    from trainlab import files

    missing = [name for name in (need, STATE) if not (path / name).exists()]
    if missing:
        where = f"{path} has no {' and no '.join(missing)}" if path.is_dir() else f"{path} does not exist"
        raise UserError(f"no complete checkpoint: {where}",
                        "resume needs a run folder whose training wrote a checkpoint; start without --resume")
    return files.read_state(path / STATE, need_optimizer, loop_state)


def load_weights(model: nn.Module, path: Path) -> None:
    """The safetensors file at `path` into `model`, every tensor by name and shape. A file that is damaged or
    belongs to another model raises ValueError with one line saying which tensors differ."""
    try:
        saved = load_file(str(path))
    except Exception as e:  # safetensors raises several types on damaged files
        raise ValueError(f"not a readable safetensors file: {first_line(e)}") from None
    own = model.state_dict()
    params = dict(model.named_parameters(remove_duplicate=False))
    # A tied tensor (GPT's head = embedding) is stored once: it counts as present when its twin is.
    tied = {n for n, p in params.items() if n not in saved and any(o in saved and q is p for o, q in params.items())}
    missing = [k for k in own if k not in saved and k not in tied]
    extra = [k for k in saved if k not in own]
    shapes = [f"{k} {tuple(saved[k].shape)} in the file, {tuple(own[k].shape)} in the model" for k in own
              if k in saved and saved[k].shape != own[k].shape]
    if missing or extra or shapes:
        parts = ([f"{len(shapes)} tensor(s) of another shape, e.g. {shapes[0]}"] if shapes else []) \
            + ([f"{len(missing)} missing, e.g. {missing[0]}"] if missing else []) \
            + ([f"{len(extra)} unexpected, e.g. {extra[0]}"] if extra else [])
        raise ValueError("; ".join(parts))
    model.load_state_dict({**saved, **{k: own[k] for k in tied}}, strict=True)

