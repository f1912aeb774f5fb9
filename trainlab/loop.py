"""The training loop: forward pass, loss, backward pass, parameter update. Written once, for every paradigm.

A paradigm is an objective, `objective.loss(model, batch) -> (loss, metrics)`; the data is a stream of batches.
This file owns everything around those two: devices and precision, gradient accumulation and clipping, the
optimizer and LR schedule, validation, early stopping, checkpoints, exact resume, metrics and progress.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_model

from trainlab import checkpoint, config, data as data_lib, models, objectives
from trainlab.config import Config
from trainlab.errors import UserError
from trainlab.optim import build_optimizer, lr_factor, set_lr
from trainlab.runs import MetricLog, Progress, write_json


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"loop.device = '{name}' but CUDA is not available here", "use loop.device=auto or cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("loop.device = 'mps' but MPS is not available here", "use loop.device=auto or cpu")
    return torch.device(name)


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast on CUDA by default (no loss scaling needed, unlike fp16); fp32 elsewhere unless asked."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


# Dense bf16 peak FLOP/s from the vendors' data sheets, for MFU; other devices need loop.peak_flops.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 70e12}


def known_peak_flops(device: torch.device) -> float:
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), 0.0)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"]["key"].numpy().astype(np.uint32), state["numpy"]["pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve(cfg: Config, steps_per_epoch: int) -> Config:
    """Fill in the derived values once; they are written into the run's config.toml."""
    total = cfg.loop.steps or cfg.loop.epochs * steps_per_epoch
    if cfg.loop.max_steps:
        total = min(total, cfg.loop.max_steps)  # the LR schedule spans the capped run
    eval_every = cfg.loop.eval_every or min(steps_per_epoch, total)
    loop = cfg.loop.model_copy(update={"steps": total, "eval_every": eval_every,
                                       "checkpoint_every": cfg.loop.checkpoint_every or eval_every})
    return cfg.model_copy(update={"loop": loop})


@torch.no_grad()
def evaluate(model, objective, batches, device, amp) -> dict[str, float]:
    """Example-weighted means of the loss and the objective's metrics over `batches`, in eval mode."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    n = 0
    for batch in batches:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        b = len(next(iter(batch.values())))
        with amp:
            loss, metrics = objective.loss(model, batch)
        for k, v in {"loss": loss, **metrics}.items():
            sums[k] = sums.get(k, 0.0) + float(v) * b
        n += b
    model.train(was_training)
    return {k: v / max(n, 1) for k, v in sums.items()}


def _improved(value: float, best: dict | None, mode: str) -> bool:
    if best is None:
        return True
    return value < best["value"] if mode == "min" else value > best["value"]


def train(cfg: Config, run_dir: Path, resume: bool = False) -> dict:
    """Train the recipe `cfg` into `run_dir`; return the summary (also written to summary.json)."""
    seed_everything(cfg.run.seed)
    device = pick_device(cfg.loop.device)
    amp = autocast_for(device, cfg.loop.precision)
    data = data_lib.build(cfg.data)
    batches = data.train_batches(cfg.run.seed)
    cfg = resolve(cfg, max(1, batches.batches_per_epoch // cfg.loop.grad_accum))
    L = cfg.loop

    model = models.build(cfg.model, data.info).to(device)
    objective = objectives.build(cfg.objective, data.info, cfg.model.kind)
    # The compiled module runs the steps; `model` (same parameters) is what gets saved.
    fast = torch.compile(model) if L.compile else model
    optimizer = build_optimizer(cfg.optim, model)
    ckpt_root = run_dir / "checkpoints"

    step, best, evals_since_best, wall_before, last_ckpt = 0, None, 0, 0.0, None
    if resume:
        saved = config.load_resolved(run_dir / "config.toml")
        if saved != cfg:
            diff = [k for k in config.all_keys() if _get(saved, k) != _get(cfg, k)]
            raise UserError(f"--resume with a recipe that differs from the run's config.toml in {', '.join(diff)}",
                            f"resume with the same recipe and overrides, or start a new run")
        state = checkpoint.load(ckpt_root / "last", model)
        optimizer.load_state_dict(state["optimizer"])
        batches.load_state_dict(state["batches"])
        set_rng_state(state["rng"])
        step, last_ckpt = state["step"], state["step"]
        best, evals_since_best, wall_before = state["best"], state["evals_since_best"], state["wall_s"]
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        config.save(cfg, run_dir / "config.toml")
    log = MetricLog(run_dir, resume_step=step if resume else None)

    n_params = models.num_parameters(model)
    sizes = data.info["split_sizes"]
    print(f"trainlab: {cfg.run.name} | {n_params:,} parameters | train/val/test {sizes['train']:,}/{sizes['val']:,}/"
          f"{sizes['test']:,} | {L.steps} steps x {batches.batch_size * L.grad_accum} examples | "
          f"{device.type} {'bf16' if not isinstance(amp, nullcontext) else 'fp32'} | {run_dir}"
          + (f" | resuming at step {step}" if resume else ""), flush=True)
    summary = {"status": "running", "recipe": cfg.run.name, "steps": step, "wall_s": wall_before,
               "parameters": n_params, "device": device.type, "metrics": {}, "best": None}
    write_json(run_dir / "summary.json", summary)

    def loop_state() -> dict:
        return {"step": step, "optimizer": optimizer.state_dict(), "batches": batches.state_dict(),
                "rng": rng_state(), "best": best, "evals_since_best": evals_since_best,
                "wall_s": wall_before + time.time() - t_start, "version": 1}

    val = evaluate(model, objective, data.eval_batches("val", L.eval_batches), device, amp) if step == 0 else {}
    if val:
        log.log(0, "val", val)
        _check_monitor(L.monitor, val)

    progress = Progress(L.steps, step, data.unit)
    peak = L.peak_flops or (known_peak_flops(device) if not isinstance(amp, nullcontext) else 0.0)
    flops_per_unit = model.flops_per_token() if data.unit == "tok" and hasattr(model, "flops_per_token") else 0.0
    params = [p for p in model.parameters() if p.requires_grad]
    t_start = t_window = time.time()
    window: dict[str, float] = {}
    window_steps, window_examples, status = 0, 0, "completed"
    model.train()
    while step < L.steps:
        set_lr(optimizer, lr := cfg.optim.lr * lr_factor(step, L.steps, cfg.schedule))
        if hasattr(objective, "step"):
            objective.step = step  # objectives with their own schedules (a VAE's KL warm-up) read it
        step_metrics: dict[str, float] = {}
        for _ in range(L.grad_accum):
            batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
            with amp:
                loss, metrics = objective.loss(fast, batch)  # 1. forward pass, 2. loss
            (loss / L.grad_accum).backward()  # 3. backward pass: gradients summed over micro-batches
            for k, v in {"loss": loss.detach(), **metrics}.items():
                step_metrics[k] = step_metrics.get(k, 0.0) + float(v) / L.grad_accum
            window_examples += data.count(batch)
        # Clip by the global norm (max_norm=inf only measures it); the norm is logged every step.
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, L.clip_grad_norm or math.inf))
        for what, value in (("loss", step_metrics["loss"]), ("gradient norm", grad_norm)):
            if not math.isfinite(value):  # stop before the update: the weights and checkpoints stay finite
                _diverged(what, value, step + 1, last_ckpt, run_dir, summary, log, progress)
        optimizer.step()  # 4. parameter update
        optimizer.zero_grad(set_to_none=True)
        step += 1

        row = {**step_metrics, "grad_norm": grad_norm, "lr": lr}
        for k, v in row.items():
            window[k] = window.get(k, 0.0) + v
        window_steps += 1
        if step % L.log_every == 0 or step == L.steps:
            now = time.time()
            shown = {k: v / window_steps for k, v in window.items()}
            shown.update(throughput=window_examples / max(now - t_window, 1e-9), epoch=batches.epoch)
            if peak and flops_per_unit:  # model FLOPs utilization: achieved training FLOP/s over the peak
                shown["mfu"] = shown["throughput"] * flops_per_unit / peak
            row.update({k: shown[k] for k in ("throughput", "epoch", "mfu") if k in shown})
            summary["metrics"]["train"] = {k: v for k, v in shown.items() if k not in ("lr",)}
            progress.update(step, {k: shown[k] for k in shown if k not in ("epoch", "grad_norm")})
            window, window_steps, window_examples, t_window = {}, 0, 0, now
        log.log(step, "train", row)

        # Once in a while: validate, keep the best, maybe stop early, checkpoint.
        is_eval = step % L.eval_every == 0 or step == L.steps
        is_best = stop = False
        if is_eval:
            val = evaluate(model, objective, data.eval_batches("val", L.eval_batches), device, amp)
            log.log(step, "val", val)
            if not math.isfinite(val["loss"]):
                _diverged("validation loss", val["loss"], step, last_ckpt, run_dir, summary, log, progress)
            _check_monitor(L.monitor, val)
            if _improved(val[L.monitor], best, L.monitor_mode):
                best, evals_since_best, is_best = {"step": step, "metric": L.monitor, "value": val[L.monitor],
                                                   "metrics": val}, 0, True
            else:
                evals_since_best += 1
            stop = bool(L.patience) and evals_since_best >= L.patience
            progress.write(f"step {step}: val " + "  ".join(f"{k} {v:.4g}" for k, v in val.items())
                           + ("  (best)" if is_best else "") + ("  early stop" if stop else ""))
        links = (("last",) if step % L.checkpoint_every == 0 or step == L.steps or stop else ()) \
            + (("best",) if is_best else ())
        if links:
            checkpoint.save(ckpt_root, step, model, loop_state(), links)
            last_ckpt = step if "last" in links else last_ckpt
        if stop:
            status = "early_stopped"
            break
    progress.close()

    if L.restore_best and best is not None and best["step"] != step:
        checkpoint.load(ckpt_root / "best", model)  # the weights worth keeping, not the last ones
        val = best["metrics"]
    if not val:  # a resumed run that had nothing left to do
        val = evaluate(model, objective, data.eval_batches("val", L.eval_batches), device, amp)
    _export(run_dir / "model", model, cfg, data, step)
    log.close()
    summary.update(status=status, steps=step, wall_s=round(wall_before + time.time() - t_start, 3))
    summary["metrics"]["val"] = val
    summary["best"] = {k: best[k] for k in ("step", "metric", "value")} if best else None
    write_json(run_dir / "summary.json", summary)
    print(f"done: {status} after {step} steps in {summary['wall_s']:.1f}s | val "
          + "  ".join(f"{k} {v:.4g}" for k, v in val.items()) + f" | {run_dir}", flush=True)
    return summary


def _diverged(what: str, value: float, step: int, last_ckpt: int | None, run_dir: Path, summary: dict,
              log: MetricLog, progress: Progress) -> None:
    """Record the failure in summary.json and stop with a UserError; checkpoints are left as they are."""
    summary.update(status="failed", steps=step, error=f"{what} {value} at step {step}")
    write_json(run_dir / "summary.json", summary)
    log.close()
    progress.close()
    kept = f"the last good checkpoint (step {last_ckpt}) is intact" if last_ckpt else "no checkpoint was written"
    raise UserError(f"the {what} became {value} at step {step}; training stopped, {kept}",
                    "lower optim.lr, set loop.clip_grad_norm, or look for extreme values in the data")


def _check_monitor(monitor: str, val: dict) -> None:
    if monitor not in val:
        raise UserError(f"loop.monitor = '{monitor}' is not a validation metric of this objective; it reports "
                        f"{sorted(val)}", f"set loop.monitor to one of {sorted(val)}")


def _get(cfg: Config, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _export(model_dir: Path, model, cfg: Config, data, step: int) -> None:
    """model/: the weights and what is needed to rebuild and feed the model (`trainlab.models.load`)."""
    tmp = model_dir.with_name("model.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    meta = {"model": cfg.model.model_dump(mode="json"), "info": data.info, "recipe": cfg.run.name, "step": step}
    (tmp / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
    data.export(tmp)  # e.g. the tokenizer
    old = model_dir.with_name("model.old")
    shutil.rmtree(old, ignore_errors=True)
    if model_dir.exists():
        os.rename(model_dir, old)
    os.rename(tmp, model_dir)
    shutil.rmtree(old, ignore_errors=True)
