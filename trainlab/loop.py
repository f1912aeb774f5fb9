"""The training loop: forward pass, loss, backward pass, parameter update. Written once, for every paradigm.

A paradigm is an objective, `objective.loss(model, batch) -> (loss, metrics)`; the data is a stream of batches.
This file owns everything around those two: devices and precision, gradient accumulation and clipping, the
optimizer and LR schedule, validation, early stopping, checkpoints, exact resume, metrics and progress.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trainlab import config, data as data_lib, distributed, models, objectives
from trainlab.config import Config
from trainlab.distributed import Dist
from trainlab.errors import UserError
from trainlab.optim import build_optimizer, lr_factor, set_lr
from trainlab.policy import Policy
from trainlab.runs import MetricLog, Progress, RunWriter


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


def _improved(value: float, best: dict | None, mode: str) -> bool:
    if best is None:
        return True
    return value < best["value"] if mode == "min" else value > best["value"]


def train(cfg: Config, run_dir: Path, resume: bool = False, ctx: Dist | None = None) -> dict:
    """Train the recipe `cfg` into `run_dir`; return the summary (also written to summary.json).
    `ctx`: this process's place in a distributed run (trainlab.distributed.session); None: a single process."""
    if ctx is None:
        with distributed.session(cfg.loop) as ctx:
            return train(cfg, run_dir, resume, ctx)
    seed_everything(cfg.run.seed)
    device = ctx.device
    amp = autocast_for(device, cfg.loop.precision)
    cfg = models.resolve_init(cfg, ctx.print)  # model.init_from: the architecture (and tokenizer) of the finished run
    data = ctx.local_first(lambda: data_lib.build(cfg.data))  # one process per machine packs a corpus cache
    cfg = resolve(cfg, max(1, data.batches_per_epoch // cfg.loop.grad_accum))
    L = cfg.loop
    plan = ctx.plan(data.batch_size, L.grad_accum)

    model = models.build(cfg.model, data.info)
    if getattr(cfg.model, "init_from", "") and not resume:
        fresh = models.load_initial_weights(model, cfg.model.init_from, cfg.model.init_skip)
        ctx.print(f"initialized from {cfg.model.init_from}" + (f"; fresh: {', '.join(fresh)}" if fresh else ""))
    freeze(model, cfg.optim.freeze)
    model = model.to(device)
    ctx.seed(cfg.run.seed)
    objective = objectives.build(cfg.objective, data.info, cfg.model.kind)
    # `forward` runs the model and the loss (compiled, DDP- or FSDP-wrapped as asked); `model` is what gets saved.
    forward = ctx.wrap(model, objective, L.compile)
    optimizer = build_optimizer(cfg.optim, model)
    # The source is created after the model: online sources (rollouts, generations) run it through `policy`.
    policy = Policy(model, forward, device, amp, ctx)
    stream = data.stream(cfg.run.seed, policy, plan)
    ckpt_root = run_dir / "checkpoints"
    writer = ctx.main_only(RunWriter, run_dir)

    step, best, evals_since_best, wall_before, last_ckpt = 0, None, 0, 0.0, None
    if resume:
        saved = config.load_resolved(run_dir / "config.toml")
        if saved != cfg:
            raise UserError(f"--resume with a recipe that differs from the run's config.toml in "
                            f"{', '.join(config.diff(saved, cfg))}",
                            "resume with the same recipe and overrides, or start a new run")
        state = ctx.load_checkpoint(ckpt_root / "last", model, optimizer)
        stream.load_state_dict(state["batches"])
        step, last_ckpt = state["step"], state["step"]
        if (rng := ctx.pick_rng(state, cfg.run.seed, step)) is not None:
            set_rng_state(rng)
        best, evals_since_best, wall_before = state["best"], state["evals_since_best"], state["wall_s"]
    else:
        writer.config(cfg)
    log = ctx.main_only(MetricLog, run_dir, resume_step=step if resume else None)

    n_params = models.num_parameters(model)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    sizes = data.info["split_sizes"]
    ctx.print(f"trainlab: {cfg.run.name} | {n_params:,} parameters"
              + (f" ({trained:,} trained)" if trained != n_params else "")
              + f" | train/val/test {sizes['train']:,}/{sizes['val']:,}/{sizes['test']:,} | {L.steps} steps x "
              f"{plan.global_batch} examples | {device.type} {'bf16' if not isinstance(amp, nullcontext) else 'fp32'}"
              f" | {run_dir}" + (f" | resuming at step {step}" if resume else ""))
    if ctx.world > 1 or plan.accum > 1:
        ctx.print(ctx.describe(plan, "sequences" if data.unit == "tok" else "examples"))
    summary = {"status": "running", "recipe": cfg.run.name, "steps": step, "wall_s": wall_before,
               "parameters": n_params, "device": device.type, "metrics": {}, "best": None}
    if getattr(cfg.model, "init_from", ""):
        summary["init_from"] = cfg.model.init_from
    if ctx.world > 1:
        summary.update(processes=ctx.world, parallel=L.parallel)
    writer.summary(summary)

    def loop_state() -> dict:
        return {"step": step, "batches": stream.state_dict(), **ctx.rng_states(rng_state()), "best": best,
                "evals_since_best": evals_since_best, "wall_s": wall_before + time.time() - t_start, "version": 1}

    val = data.validate(policy, L.eval_batches) if step == 0 else {}
    if val:
        log.log(0, "val", val)
        _check_monitor(L.monitor, val)

    progress = ctx.main_only(Progress, L.steps, step, data.unit)
    peak = L.peak_flops or (known_peak_flops(device) if not isinstance(amp, nullcontext) else 0.0)
    flops_per_unit = model.flops_per_token() if data.unit == "tok" and hasattr(model, "flops_per_token") else 0.0
    params = [p for group in optimizer.param_groups for p in group["params"]]  # FSDP: the sharded ones
    before_step = getattr(objective, "before_step", None)  # the objective's optional hook (trainlab.objectives)
    t_start = t_window = time.time()
    # Rows still on the device: (step, keys, values, values computed on the host)
    pending: list[tuple[int, list[str], torch.Tensor, dict]] = []
    window: list[dict[str, float]] = []
    window_examples, status = 0, "completed"

    def flush() -> list[dict[str, float]]:
        """Write the rows kept on the device since the last flush: one transfer for all of them."""
        if not pending:
            return []
        values = torch.cat([v for _, _, v, _ in pending]).tolist()
        rows, i = [], 0
        for at, keys, v, host in pending:
            row = {**dict(zip(keys, values[i:i + len(keys)])), **host}
            i += len(keys)
            log.log(at, "train", row)
            rows.append(row)
        pending.clear()
        return rows

    model.train()
    while step < L.steps:
        set_lr(optimizer, lr := cfg.optim.lr * lr_factor(step, L.steps, cfg.schedule))
        if before_step is not None:
            before_step(step)
        sums: dict[str, torch.Tensor] = {}
        for i, batch in enumerate(stream.next_step()):
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            # Gradients are summed over micro-batches; processes average them once, after the last one.
            with ctx.accumulate(forward, sync=i == plan.accum - 1):
                with amp:
                    loss, metrics = forward(batch)  # 1. forward pass, 2. loss
                (loss / plan.accum).backward()  # 3. backward pass
            for k, v in {"loss": loss, **metrics}.items():  # kept on the device: no wait here
                sums[k] = sums.get(k, 0.0) + torch.as_tensor(v, device=device).detach().float() / plan.accum
            window_examples += data.count(batch) * ctx.world
        keys = list(sums)
        means = ctx.mean_tensor(torch.stack([sums[k] for k in keys]))  # every rank sees the same numbers
        # Clip by the global norm (max_norm=inf only measures it); the norm is logged every step.
        grad_norm = ctx.grad_norm(params, L.clip_grad_norm or math.inf)
        # The one wait for the device per step: a non-finite loss or norm must stop the run before the update.
        if not bool(torch.isfinite(means[0] + grad_norm)):
            for what, value in (("loss", float(means[0])), ("gradient norm", float(grad_norm))):
                if not math.isfinite(value):  # the weights and checkpoints stay finite
                    _diverged(what, value, step + 1, last_ckpt, writer, summary, log, progress)
        optimizer.step()  # 4. parameter update
        optimizer.zero_grad(set_to_none=True)
        step += 1

        row = torch.cat([means, grad_norm.detach().reshape(1).to(means), torch.tensor([lr], device=means.device,
                                                                                       dtype=means.dtype)])
        keys = keys + ["grad_norm", "lr"]
        extra = stream.on_step(step, dict(zip(keys, row)))  # online sources: refresh rollouts, sync a target...
        if extra:
            names = sorted(extra)  # the same keys on every rank, reduced in the same order
            vals = ctx.mean_tensor(torch.stack([torch.as_tensor(extra[k], dtype=means.dtype).to(means.device)
                                                for k in names]))
            row, keys = torch.cat([row, vals]), keys + names
        pending.append((step, keys, row, {}))

        is_eval = step % L.eval_every == 0 or step == L.steps
        if step % L.log_every == 0 or step == L.steps:
            now = time.time()
            # The row of a logging step also carries the window's throughput (and MFU).
            shown = {"throughput": window_examples / max(now - t_window, 1e-9), "epoch": stream.epoch}
            if peak and flops_per_unit:  # model FLOPs utilization: achieved training FLOP/s over the peak
                shown["mfu"] = shown["throughput"] * flops_per_unit / (peak * ctx.world)
            pending[-1][3].update(shown)
            window += flush()
            averages = {k: sum(r[k] for r in window) / len(window) for k in window[-1] if k not in shown}
            summary["metrics"]["train"] = {k: v for k, v in {**averages, **shown}.items() if k != "lr"}
            progress.update(step, {k: v for k, v in {**averages, **shown}.items() if k not in ("epoch", "grad_norm")})
            window, window_examples, t_window = [], 0, now
        elif is_eval or step % L.checkpoint_every == 0:
            window += flush()  # rows up to a checkpoint are on disk before it

        # Once in a while: validate, keep the best, maybe stop early, checkpoint.
        is_best = stop = False
        if is_eval:
            val = data.validate(policy, L.eval_batches)
            log.log(step, "val", val)
            watched = "loss" if "loss" in val else L.monitor
            if watched in val and not math.isfinite(val[watched]):
                _diverged(f"validation {watched}", val[watched], step, last_ckpt, writer, summary, log, progress)
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
            window += flush()
            ctx.save_checkpoint(ckpt_root, step, model, optimizer, loop_state(), links)
            last_ckpt = step if "last" in links else last_ckpt
        if stop:
            status = "early_stopped"
            break
    flush()
    progress.close()

    if L.restore_best and best is not None and best["step"] != step:
        ctx.load_checkpoint(ckpt_root / "best", model)  # the weights worth keeping, not the last ones
        val = best["metrics"]
    if not val:  # a resumed run that had nothing left to do
        val = data.validate(policy, L.eval_batches)
    writer.model(ctx.full_model(model, lambda: models.build(cfg.model, data.info)), cfg, data, step)
    log.close()
    summary.update(status=status, steps=step, wall_s=round(wall_before + time.time() - t_start, 3))
    summary["metrics"]["val"] = val
    summary["best"] = {k: best[k] for k in ("step", "metric", "value")} if best else None
    writer.summary(summary)
    ctx.print(f"done: {status} after {step} steps in {summary['wall_s']:.1f}s | val "
              + "  ".join(f"{k} {v:.4g}" for k, v in val.items()) + f" | {run_dir}")
    ctx.barrier()  # rank 0 has written model/ and summary.json when every process returns
    return summary


def freeze(model: nn.Module, prefixes: list[str]) -> None:
    """optim.freeze: parameters whose names start with one of `prefixes` are not trained."""
    names = [n for n, _ in model.named_parameters()]
    unused = [p for p in prefixes if not any(n.startswith(p) for n in names)]
    if unused:
        raise UserError(f"optim.freeze names {unused}, which match no parameter of this model",
                        f"use prefixes of parameter names; its top-level modules are {sorted({n.split('.')[0] for n in names})}")
    for n, p in model.named_parameters():
        if any(n.startswith(pre) for pre in prefixes):
            p.requires_grad_(False)
    if prefixes and not any(p.requires_grad for p in model.parameters()):
        raise UserError(f"optim.freeze = {prefixes} freezes every parameter: nothing would train",
                        "freeze fewer prefixes")


def _diverged(what: str, value: float, step: int, last_ckpt: int | None, writer: RunWriter, summary: dict,
              log: MetricLog, progress: Progress) -> None:
    """Record the failure in summary.json and stop with a UserError; checkpoints are left as they are."""
    summary.update(status="failed", steps=step, error=f"{what} {value} at step {step}")
    writer.summary(summary)
    log.close()
    progress.close()
    kept = f"the last good checkpoint (step {last_ckpt}) is intact" if last_ckpt else "no checkpoint was written"
    raise UserError(f"the {what} became {value} at step {step}; training stopped, {kept}",
                    "lower optim.lr, set loop.clip_grad_norm, or look for extreme values in the data")


def _check_monitor(monitor: str, val: dict) -> None:
    if monitor not in val:
        raise UserError(f"loop.monitor = '{monitor}' is not a validation metric of this run; validation reports "
                        f"{sorted(val)}", f"set loop.monitor to one of {sorted(val)}")


def _get(cfg: Config, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node
