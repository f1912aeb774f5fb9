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

from trainlab import checkpoint, config, data as data_lib, distributed, files, models, objectives, runs
from trainlab.config import Config
from trainlab.data import replay
from trainlab.models import lora
from trainlab.distributed import Dist
from trainlab.errors import UserError
from trainlab.optim import Unfreezer, build_optimizer, lr_factor, set_lr
from trainlab.policy import Policy
from trainlab.runs import MetricLog, Progress, RunWriter


def autocast_for(device: torch.device, precision: str):
    """bf16 autocast on CUDA by default (no loss scaling needed, unlike fp16); fp32 elsewhere unless asked."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def known_peak_flops(device: torch.device) -> float:
    """Dense peak FLOP/s of a known GPU, from the vendors' data sheets (trainlab.scaling.accelerators), for MFU;
    other devices need loop.peak_flops."""
    if device.type != "cuda":
        return 0.0
    from trainlab.scaling.accelerators import for_device

    chip = for_device(torch.cuda.get_device_name(device))
    return chip.flops if chip and chip.precision.startswith("bf16") else 0.0  # the loop autocasts to bf16


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


def resolve(cfg: Config, steps_per_epoch: int, planned: int = 0) -> Config:
    """Fill in the derived values once; they are written into the run's config.toml. `planned`: the steps a
    source derives from its own length (an environment source's data.env_steps), used when loop.steps is 0."""
    total = cfg.loop.steps or planned or cfg.loop.epochs * steps_per_epoch
    if cfg.loop.max_steps:
        total = min(total, cfg.loop.max_steps)  # the LR schedule spans the capped run
    eval_every = cfg.loop.eval_every or min(steps_per_epoch, total)
    loop = cfg.loop.model_copy(update={"steps": total, "eval_every": eval_every,
                                       "checkpoint_every": cfg.loop.checkpoint_every or eval_every})
    return cfg.model_copy(update={"loop": loop})


def _compare(value: float, best: dict | None, mode: str) -> int:
    """1: better than the best so far; 0: as good (a tie: the later step becomes the best, since a small
    validation split often scores the same accuracy at many steps, but patience keeps counting); -1: worse."""
    if best is None:
        return 1
    if value == best["value"]:
        return 0
    return 1 if (value < best["value"]) == (mode == "min") else -1


def train(cfg: Config, run_dir: Path, resume: bool = False, ctx: Dist | None = None, *,
          model: nn.Module | None = None, objective=None) -> dict:
    """Train the recipe `cfg` into `run_dir`; return the summary (also written to summary.json).
    `ctx`: this process's place in a distributed run (trainlab.distributed.session); None: a single process.
    `model`, `objective`: your own nn.Module and objective (model.kind = "module", objective.kind = "custom";
    trainlab.api.train sets those up) instead of the recipe's."""
    if ctx is None:
        with distributed.session(cfg.loop) as ctx:
            return train(cfg, run_dir, resume, ctx, model=model, objective=objective)
    own_model = model
    threads = set_threads(cfg.loop.threads)
    seed_everything(cfg.run.seed)
    device = ctx.device
    amp = autocast_for(device, cfg.loop.precision)
    cfg = models.resolve_init(cfg, ctx.print)  # model.init_from: the architecture (and tokenizer) of the finished run
    data = ctx.local_first(lambda: data_lib.build(cfg.data))  # one process per machine packs a corpus cache
    data = replay.wrap(data, cfg)  # data.replay_fraction: pre-training text mixed into fine-tuning
    # A source whose epochs and planned length count optimizer steps already (a DQN round's gradient steps, a
    # self-play iteration's steps) says so; otherwise they count batches, loop.grad_accum of them per step.
    per_step = 1 if getattr(data, "counts_steps", False) else cfg.loop.grad_accum
    cfg = resolve(cfg, max(1, data.batches_per_epoch // per_step), getattr(data, "planned_steps", 0) // per_step)
    L = cfg.loop
    plan = ctx.plan(data.batch_size, L.grad_accum)

    _check_memory(data, plan, device)
    model = own_model if own_model is not None else models.build(cfg.model, data.info)
    if own_model is not None and ctx.sharded and ctx.world > 1:
        import copy

        unsharded = copy.deepcopy(own_model)  # FSDP shards the module in place; the export gathers into this
    if getattr(cfg.model, "init_from", "") and not resume:
        notes = models.load_initial_weights(model, cfg.model.init_from, cfg.model.init_skip)
        ctx.print(f"initialized from {cfg.model.init_from}" + "".join(f"; {n}" for n in notes))
    elif getattr(cfg.model, "init_from", "") and lora.layers(model):
        # A resumed LoRA run: the checkpoint overwrites every weight, but which tensors train beside the adapters
        # (those the base did not have) is decided by loading the base, as at the start.
        models.load_initial_weights(model, cfg.model.init_from, cfg.model.init_skip)
    freeze(model, cfg.optim.freeze)
    model = model.to(device)
    ctx.seed(cfg.run.seed)
    objective = objective if objective is not None else objectives.build(cfg.objective, data.info, cfg.model.kind)
    # `forward` runs the model and the loss (compiled, DDP- or FSDP-wrapped as asked); `model` is what gets saved.
    forward = ctx.wrap(model, objective, L.compile)
    optimizer = build_optimizer(cfg.optim, model)
    unfreeze = None
    if cfg.optim.unfreeze_every:
        if ctx.world > 1:
            raise UserError("optim.unfreeze_every changes which parameters train during the run, which DDP and FSDP "
                            "cannot follow", "run gradual unfreezing in one process, or set optim.unfreeze_every = 0")
        unfreeze = Unfreezer(model, cfg.optim.unfreeze_every)
    # The source is created after the model: online sources (rollouts, generations) run it through `policy`.
    policy = Policy(model, forward, device, amp, ctx, objective, getattr(cfg.model, "init_from", ""))
    stream = data.stream(cfg.run.seed, policy, plan)
    # Keys a source reports in on_step that describe where it is (environment steps, a running mean of episode
    # returns, epsilon, a buffer's size): shown as they are at the logging step, not averaged over the window.
    current = set(getattr(stream, "state_metrics", ()))
    ckpt_root = run_dir / "checkpoints"
    if ctx.main:
        runs.lock(run_dir)  # one writer per run folder (already held when the CLI picked the folder)
    writer = ctx.main_only(RunWriter, run_dir)

    step, best, evals_since_best, wall_before, last_ckpt = 0, None, 0, 0.0, None
    if resume:
        saved = config.load_resolved(run_dir / "config.toml")
        changed = config.training_diff(saved, cfg)
        derived = {"loop.steps", "loop.eval_every", "loop.checkpoint_every"}  # follow from the length keys
        other = [k for k in changed if k not in LENGTH_KEYS and not (k in derived and set(changed) & set(LENGTH_KEYS))]
        if other:
            raise UserError(f"resuming with a recipe that differs from the run's config.toml in {', '.join(other)}",
                            "resume with the same recipe and overrides (only the run's length, "
                            f"{', '.join(LENGTH_KEYS)}, may change), or start a new run")
        if (run_dir / "model" / "config.json").is_file():  # the data must be what the run was trained on
            files.check_fits(files.read_meta(run_dir / "model" / "config.json").info.model_dump(), data.info,
                             run_dir / "model")
        state = ctx.load_checkpoint(ckpt_root / "last", model, optimizer)
        state_file = ckpt_root / "last" / checkpoint.STATE
        own = files.restore("data position", state_file, ctx.own_state, state, "batches")  # this rank's
        files.restore("data position", state_file, stream.load_state_dict, state["batches"] if own is None else own)
        step, last_ckpt = state["step"], state["step"]
        if (rng := files.restore("random state", state_file, ctx.pick_rng, state, cfg.run.seed, step)) is not None:
            files.restore("random state", state_file, set_rng_state, rng)
        best, evals_since_best, wall_before = state["best"], state["evals_since_best"], state["wall_s"]
        if ctx.main:  # a kill between the moves of `last` and `best` leaves `best` one evaluation behind
            checkpoint.repair_best(ckpt_root, step, best)
        if changed:
            if step > L.steps:
                raise UserError(f"--resume with loop.steps = {L.steps}, but the run is already at step {step}",
                                "a run can be extended, not shortened: give a length beyond its last step")
            writer.config(cfg)
            ctx.print(f"resuming with a new length: {saved.loop.steps} -> {L.steps} steps (the learning-rate "
                      "schedule is recomputed over the new length)")
        ctx.barrier()
    else:
        writer.config(cfg)
    log = ctx.main_only(MetricLog, run_dir, resume_step=step if resume else None, tensorboard=cfg.run.tensorboard)

    n_params = models.num_parameters(model)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    sizes = data.info["split_sizes"]
    ctx.print(f"trainlab: {cfg.run.name} | {n_params:,} parameters"
              + (f" ({trained:,} trained)" if trained != n_params else "")
              + f" | train/val/test {sizes['train']:,}/{sizes['val']:,}/{sizes['test']:,} | {L.steps} steps x "
              f"{plan.global_batch} examples | {device.type} {'bf16' if not isinstance(amp, nullcontext) else 'fp32'}"
              f", {threads} thread{'s' * (threads > 1)} | {run_dir}" + (f" | resuming at step {step}" if resume else ""))
    for note in _warnings(cfg, data, plan):
        ctx.print(f"warning: {note}")
    if ctx.world > 1 or plan.accum > 1:
        ctx.print(ctx.describe(plan, "sequences" if data.unit == "tok" else "examples"))
    summary = {"status": "running", "run": run_dir.name, "recipe": cfg.run.name, "steps": step,
               "wall_s": wall_before, "parameters": n_params, "trained_parameters": trained, "device": device.type,
               "threads": threads,
               "metrics": {}, "best": None}
    if getattr(cfg.model, "init_from", ""):
        summary["init_from"] = cfg.model.init_from
    if ctx.world > 1:
        summary.update(processes=ctx.world, parallel=L.parallel)
    writer.summary(summary)

    def loop_state() -> dict:
        return {"step": step, **ctx.rank_states("batches", stream.state_dict()), **ctx.rank_states("rng", rng_state()),
                "best": best,
                "evals_since_best": evals_since_best, "wall_s": wall_before + time.time() - t_start, "version": 1}

    if resume:  # the training metrics of the window logged last, as the uninterrupted run reports them
        summary["metrics"]["train"] = _last_window(runs.read_metrics(run_dir) if ctx.main else [], current)
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

    try:
        model.train()
        while step < L.steps:
            set_lr(optimizer, lr := cfg.optim.lr * lr_factor(step, L.steps, cfg.schedule))
            if before_step is not None:
                before_step(step)
            if unfreeze is not None:
                unfreeze(step)
            summed, keys = None, []
            for i, batch in enumerate(stream.next_step()):
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                # Gradients are summed over micro-batches; processes average them once, after the last one.
                with ctx.accumulate(forward, sync=i == plan.accum - 1):
                    with amp:
                        loss, metrics = forward(batch)  # 1. forward pass, 2. loss
                    (loss / plan.accum).backward()  # 3. backward pass
                # The step's metrics stay on the device, one tensor for all of them: no wait here.
                keys = ["loss", *metrics]
                values = torch.stack([torch.as_tensor(v, device=device).detach().float()
                                      for v in (loss, *metrics.values())])
                summed = values if summed is None else summed + values
                window_examples += data.count(batch) * ctx.world
            means = ctx.mean_tensor(summed / plan.accum if plan.accum > 1 else summed)  # the same on every rank
            # Clip by the global norm (max_norm=inf only measures it); the norm is logged every step.
            grad_norm = ctx.grad_norm(params, L.clip_grad_norm or math.inf)
            # The one wait for the device per step: a non-finite loss or norm must stop the run before the update.
            if not bool(torch.isfinite(means[0] + grad_norm)):
                for what, value in (("loss", float(means[0])), ("gradient norm", float(grad_norm))):
                    if not math.isfinite(value):  # the weights and checkpoints stay finite
                        _diverged(what, value, step + 1, last_ckpt, writer, summary, log, progress, ctx)
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
            progress.tick(step)  # the bar moves every step; its numbers change at log points

            is_eval = step % L.eval_every == 0 or step == L.steps
            if step % L.log_every == 0 or step == L.steps:
                now = time.time()
                # The row of a logging step also carries the window's throughput (and MFU).
                shown = {"throughput": window_examples / max(now - t_window, 1e-9), "epoch": stream.epoch}
                if peak and flops_per_unit:  # model FLOPs utilization: achieved training FLOP/s over the peak
                    shown["mfu"] = shown["throughput"] * flops_per_unit / (peak * ctx.world)
                pending[-1][3].update(shown)
                window += flush()
                averages = {k: window[-1][k] if k in current else sum(r[k] for r in window) / len(window)
                            for k in window[-1] if k not in shown}
                summary["metrics"]["train"] = {k: v for k, v in {**averages, **shown}.items() if k != "lr"}
                progress.update(step, {k: v for k, v in {**averages, **shown}.items() if k not in ("epoch", "grad_norm")})
                window, window_examples, t_window = [], 0, now
            elif is_eval or step % L.checkpoint_every == 0:
                window += flush()  # rows up to a checkpoint are on disk before it

            # Once in a while: validate, keep the best, maybe stop early, checkpoint.
            is_best = stop = reached = False
            if is_eval:
                val = data.validate(policy, L.eval_batches)
                log.log(step, "val", val)
                watched = "loss" if "loss" in val else L.monitor
                if watched in val and not math.isfinite(val[watched]):
                    _diverged(f"validation {watched}", val[watched], step, last_ckpt, writer, summary, log,
                              progress, ctx)
                _check_monitor(L.monitor, val)
                verdict = _compare(val[L.monitor], best, L.monitor_mode)
                evals_since_best = 0 if verdict > 0 else evals_since_best + 1
                if verdict >= 0:
                    best, is_best = {"step": step, "metric": L.monitor, "value": val[L.monitor], "metrics": val}, True
                stop = bool(L.patience) and evals_since_best >= L.patience
                reached = (L.target is not None and math.isfinite(val[L.monitor])  # solved: CartPole's 475
                           and _compare(val[L.monitor], {"value": L.target}, L.monitor_mode) >= 0)
                stop = stop or reached
                text = "val " + "  ".join(f"{k} {v:.4g}" for k, v in val.items())
                if step % L.log_every == 0 or step == L.steps or stop:  # not a line per step when validating often
                    progress.write(f"step {step}: {text}" + ("  (best)" if is_best else "")
                                   + ("  target reached" if reached else "  early stop" if stop else ""))
            links = (("last",) if step % L.checkpoint_every == 0 or step == L.steps or stop else ()) \
                + (("best",) if is_best else ())
            if links:
                window += flush()
                ctx.save_checkpoint(ckpt_root, step, model, optimizer, loop_state(), links)
                last_ckpt = step if "last" in links else last_ckpt
            if stop:
                status = "target_reached" if reached else "early_stopped"
                break
    except KeyboardInterrupt:  # Ctrl-C: say where the run stopped; its last checkpoint is intact
        last_ckpt = checkpoint.linked_step(ckpt_root) if ctx.main else last_ckpt  # it may have landed just now
        flush()
        progress.close()
        log.close()
        summary.update(status="interrupted", steps=step, wall_s=round(wall_before + time.time() - t_start, 3),
                       resume_from=last_ckpt)
        writer.summary(summary)
        ctx.print(f"interrupted at step {step}" + (f"; `--resume` continues from the checkpoint of step {last_ckpt}"
                                                    if last_ckpt else "; no checkpoint was written yet"))
        raise
    flush()
    progress.close()

    exported = {"step": step, "why": "the last step (loop.restore_best = false)" if not L.restore_best
                else "the last step, which is also the best"}
    if L.restore_best and best is not None and best["step"] != step:
        kept = ctx.load_checkpoint(ckpt_root / "best", model)  # the weights worth keeping, not the last ones
        if kept["step"] != best["step"]:
            raise UserError(f"{ckpt_root / 'best'} holds step {kept['step']} but the run's best is step {best['step']}",
                            "the checkpoints were changed by hand; resume from an intact run folder")
        val = best["metrics"]
        exported = {"step": best["step"], "why": f"the best validation {best['metric']} ({best['value']:.4g})"}
    if not val:  # a resumed run that had nothing left to do
        val = data.validate(policy, L.eval_batches)
    full = ctx.full_model(model, (lambda: unsharded) if own_model is not None else
                          lambda: models.build(cfg.model, data.info))
    if full is not None and hasattr(model, "fresh_tensors"):  # FSDP gathered into a new model: what LoRA saves
        full.fresh_tensors = model.fresh_tensors
    writer.model(full, cfg, data, exported["step"])
    log.close()
    summary.update(status=status, steps=step, wall_s=round(wall_before + time.time() - t_start, 3))
    summary["metrics"]["val"] = val
    summary["best"] = {k: best[k] for k in ("step", "metric", "value")} if best else None
    summary["exported"] = exported
    writer.summary(summary)
    ctx.print(f"done: {status} after {step} steps in {summary['wall_s']:.1f}s | exported the weights of step "
              f"{exported['step']}: {exported['why']} | val " + "  ".join(f"{k} {v:.4g}" for k, v in val.items())
              + f" | {run_dir}")
    ctx.barrier()  # rank 0 has written model/ and summary.json when every process returns
    if ctx.main:
        runs.unlock(run_dir)
    return summary


def _last_window(rows: list[dict], current: set[str] = frozenset()) -> dict[str, float]:
    """summary.json's training metrics from metrics.jsonl: the averages over the rows of the last logging
    window, with the throughput (and epoch, MFU) of its last row; a resumed run with no steps left reports them
    as the uninterrupted run did."""
    train = [r for r in rows if r["split"] == "train"]
    ends = [i for i, r in enumerate(train) if "throughput" in r]
    if not ends:
        return {}
    start = ends[-2] + 1 if len(ends) > 1 else 0
    window, last = train[start:ends[-1] + 1], train[ends[-1]]
    shown = {k: last[k] for k in ("throughput", "epoch", "mfu") if k in last}
    keys = [k for k in last if k not in ("step", "split", "time", "lr", *shown)]
    averages = {k: last[k] if k in current else sum(r[k] for r in window if k in r) / max(1, sum(k in r for r in window))
                for k in keys}
    return {**averages, **shown}


LENGTH_KEYS = ("loop.epochs", "loop.steps", "loop.max_steps")  # what --resume may change: extend a run


def set_threads(asked: int) -> int:
    """loop.threads: torch's CPU threads. 0: OMP_NUM_THREADS when set, else the cores this process may run on
    (its CPU affinity, which containers and `taskset` narrow; torch's own default counts every core)."""
    import os

    n = asked
    if not n:
        env = os.environ.get("OMP_NUM_THREADS", "")
        n = int(env) if env.isdigit() and int(env) > 0 else len(os.sched_getaffinity(0)) \
            if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def _warnings(cfg: Config, data, plan) -> list[str]:
    """Choices that are allowed but probably wrong."""
    notes = []
    sizes = data.info.get("split_sizes", {})
    if sizes.get("test", 0) > sizes.get("train", 0) > 0 and not getattr(cfg.data, "subset", 0) \
            and getattr(cfg.data, "label_fraction", 1.0) == 1.0:
        notes.append(f"the test split ({sizes['test']:,}) is larger than the training split ({sizes['train']:,}); "
                     "check data.val_fraction and data.test_fraction")
    epochs = cfg.loop.steps * plan.global_batch / max(1, sizes.get("train", 0)) if data.unit == "ex" else 0
    if cfg.schedule.warmup_steps >= cfg.loop.steps:
        notes.append(f"schedule.warmup_steps ({cfg.schedule.warmup_steps}) is not shorter than the run "
                     f"({cfg.loop.steps} steps): the learning rate never reaches optim.lr or decays")
    if data.unit == "ex" and cfg.loop.steps < 100 and epochs < 20 and not cfg.loop.max_steps:
        notes.append(f"only {cfg.loop.steps} optimizer steps ({epochs:.1f} passes over {sizes.get('train', 0):,} "
                     "training examples): likely too short to learn; raise loop.epochs or lower data.batch_size")
    init = getattr(cfg.model, "init_from", "")
    base = models.init_source(init).parent / "config.toml" if init and not init.startswith(models.HF_PREFIX) else None
    if cfg.data.source == "stdlib_classes" and base is not None and base.is_file():  # pre-trained on the stdlib
        pre = config.load_resolved(base).data
        if pre.source == "stdlib" and (pre.val_fraction, pre.test_fraction) != (cfg.data.val_fraction,
                                                                                cfg.data.test_fraction):
            notes.append(f"{cfg.model.init_from} was pre-trained with data.val_fraction/test_fraction "
                         f"{pre.val_fraction}/{pre.test_fraction}, this task splits {cfg.data.val_fraction}/"
                         f"{cfg.data.test_fraction}: its training text may hold this task's validation or test "
                         "files; pre-train with the same fractions")
    return notes


def available_memory(device: torch.device) -> int:
    """Bytes this process could still allocate on `device` (0 when unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return 0


def _check_memory(data, plan, device: torch.device) -> None:
    """A batch that cannot fit is an error before anything is allocated, not minutes of swapping or an
    out-of-memory kill: a language model's micro-batch needs at least its logits, their softmax and their
    gradient (3 x 4 bytes per sequence position and vocabulary entry)."""
    info = data.info
    if data.unit != "tok" or "vocab_size" not in info or "block_size" not in info:
        return
    need = plan.micro * info["block_size"] * info["vocab_size"] * 12
    have = available_memory(device)
    if have and need > have:
        raise UserError(f"a micro-batch of {plan.micro:,} sequences of {info['block_size']} tokens needs at least "
                        f"{_bytes(need)} for its logits alone; {device.type} has {_bytes(have)} available",
                        "lower data.batch_size (and raise loop.grad_accum to keep the global batch)")


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PiB"


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
              log: MetricLog, progress: Progress, ctx: Dist) -> None:
    """Record the failure in summary.json and stop with a UserError; checkpoints are left as they are. Every
    process gets here at the same step (the values are reduced over processes) and raises once rank 0 has
    written summary.json, as at the end of a run: a caller reading it next sees the failure."""
    summary.update(status="failed", steps=step, error=f"{what} {value} at step {step}")
    writer.summary(summary)
    ctx.barrier()
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
