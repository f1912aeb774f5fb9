"""`trainlab scaling sweep`: train a grid of GPT sizes and token budgets, each an ordinary run folder.

    SWEEP/sweep.json   the grid: recipe, overrides, sizes (shape, parameters), budgets, learning rates
    SWEEP/runs/NAME/   one run folder per (size, tokens, learning rate), trained by `trainlab.train`
    SWEEP/points.csv   one row per validation point of every kept run (final = 1 for its last one)

Per size, a small learning-rate search first: the size's smallest budget with every rate of --lrs; the best
final validation loss picks the rate of the size's other budgets (small-scale laws are unreliable without it).
Each run's schedule (warm-up, cosine decay) spans its own length. Finished runs are skipped, interrupted ones
resumed: rerunning the command continues the sweep. Several processes started on one folder share the work
(each run folder is locked by the process training it); under torchrun every run is data-parallel over all
processes. Parameters are counted without embeddings (Kaplan et al.'s N) and with them; FLOPs as 6 N D and as
the model's own count (attention and the output layer included)."""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from trainlab.errors import UserError

SUFFIX = {"k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9, "t": 1e12}


def parse_number(text: str, option: str) -> float:
    """'20k', '1.5M', '3e12', '1e6' -> a positive finite number."""
    t = text.strip().lower().replace("_", "")
    scale = SUFFIX.get(t[-1:], 1.0) if t else 1.0
    try:
        v = float(t[:-1] if scale != 1.0 else t) * scale
    except ValueError:
        v = math.nan
    if not (math.isfinite(v) and v > 0):
        raise UserError(f"{option} expects positive numbers such as 20k, 1.5M or 3e12; got {text!r}",
                        f"e.g. {option} 1M 3M 10M")
    return v


@dataclass(frozen=True)
class Size:
    n_layer: int
    n_embd: int
    n_head: int
    params: int  # non-embedding parameters (Kaplan's N)

    @property
    def name(self) -> str:
        return f"L{self.n_layer}-C{self.n_embd}"


@functools.lru_cache(maxsize=None)
def _block_params(model_json: str, n_embd: int, n_head: int) -> tuple[int, int]:
    """(parameters of one Transformer block, of the final norm) at this width, built on the meta device."""
    import torch

    from trainlab.models import gpt

    cfg = gpt.GPTConfig.model_validate_json(model_json).model_copy(update={"n_embd": n_embd, "n_head": n_head})
    with torch.device("meta"):
        return (sum(p.numel() for p in gpt.Block(cfg).parameters()),
                sum(p.numel() for p in gpt._norm(cfg).parameters()))


def count_params(model_cfg, n_layer: int, n_embd: int, n_head: int) -> int:
    """Non-embedding parameters of this GPT shape (Kaplan et al.'s N): the blocks and the final norm; not the
    token (or learned position) embeddings, nor the output layer that shares the token embedding."""
    block, norm = _block_params(model_cfg.model_dump_json(), n_embd, n_head)
    return n_layer * block + norm


def shape_for(model_cfg, target: float, aspect: float = 32.0) -> Size:
    """The GPT shape whose non-embedding parameters are nearest `target`, preferring a width / depth ratio near
    `aspect` (Kaplan et al. find loss nearly flat over a wide range of shapes at fixed N); heads of width 16
    (32 from width 256)."""
    best = None
    for n_layer in range(1, 25):
        for n_embd in range(16, 2049, 16):
            head = 16 if n_embd < 256 else 32
            if n_embd % head or abs(math.log(12 * n_layer * n_embd**2 / target)) > 1.0:  # 12 L C^2: the estimate
                continue
            n_head = n_embd // head
            size = Size(n_layer, n_embd, n_head, count_params(model_cfg, n_layer, n_embd, n_head))
            score = abs(math.log(size.params / target)) + 0.1 * abs(math.log(n_embd / n_layer / aspect))
            if best is None or score < best[0]:
                best = (score, size)
    if best is None:
        raise UserError(f"--sizes: no GPT shape has about {target:,.0f} non-embedding parameters (1 to 24 layers "
                        "of width 16 to 2048)", "give sizes between 3k and 1.2B, or a shape such as 2x64")
    return best[1]


def parse_size(model_cfg, text: str) -> Size:
    """'4x128' (layers x width) or a parameter count ('50k', '1M')."""
    m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", text)
    if m:
        n_layer, n_embd = int(m[1]), int(m[2])
        head = 16 if n_embd < 256 else 32
        if n_layer < 1 or n_embd < 2 or n_embd % 2:
            raise UserError(f"--sizes: {text!r} needs layers >= 1 and an even width", "e.g. --sizes 2x64 4x128")
        n_head = n_embd // head if n_embd % head == 0 else 1
        return Size(n_layer, n_embd, n_head, count_params(model_cfg, n_layer, n_embd, n_head))
    return shape_for(model_cfg, parse_number(text, "--sizes"))


@dataclass
class Job:
    size: Size
    tokens: float  # the budget asked for; the run trains whole steps: steps * tokens_per_step
    lr: float
    search: bool  # part of the size's learning-rate search

    def name(self) -> str:
        return f"{self.size.name}-D{self.tokens:.3g}-lr{self.lr:.3g}".replace("+", "")


class Sweep:
    def __init__(self, out: str | Path, recipe: str, overrides: list[str], sizes: list[str],
                 tokens: list[str] = (), flops: list[str] = (), lrs: list[str] = ()):
        from trainlab import config

        self.out = Path(out)
        self.recipe, self.overrides = recipe, list(overrides)
        self.cfg = config.load_recipe(recipe, self.overrides)
        if self.cfg.model.kind != "gpt" or self.cfg.model.head != "lm":
            raise UserError(f"a scaling sweep trains language models (model.kind = 'gpt', head 'lm'); {recipe} "
                            f"has model.kind = '{self.cfg.model.kind}'", "sweep a GPT recipe, e.g. stdlib-scaling")
        if not sizes or not (tokens or flops) or (tokens and flops):
            raise UserError("a sweep needs --sizes and either --tokens or --flops (not both)",
                            "e.g. --sizes 20k 100k 500k --flops 1e12 3e12 1e13")
        self.sizes = sorted({parse_size(self.cfg.model, s) for s in sizes}, key=lambda s: s.params)
        self.budget_kind = "tokens" if tokens else "flops"
        self.budgets = sorted({parse_number(b, "--" + self.budget_kind) for b in (tokens or flops)})
        self.lrs = sorted({parse_number(x, "--lrs") for x in lrs}) or [self.cfg.optim.lr * f for f in (0.5, 1, 2)]
        d = self.cfg.data
        # data.batch_size x loop.grad_accum is the global batch, however many processes share it
        self.tokens_per_step = d.batch_size * d.block_size * self.cfg.loop.grad_accum

    # ------------------------------------------------------------------ the grid
    def tokens_for(self, size: Size, budget: float) -> float:
        return budget if self.budget_kind == "tokens" else budget / (6 * size.params)  # C = 6 N D

    def jobs(self) -> list[Job]:
        """Every run, smallest compute first: the learning-rate searches come before the runs that need them."""
        out = []
        for size in self.sizes:
            ds = [self.tokens_for(size, b) for b in self.budgets]
            out += [Job(size, ds[0], lr, True) for lr in self.lrs]
            out += [Job(size, d, math.nan, False) for d in ds[1:]]
        return sorted(out, key=lambda j: (6 * j.size.params * j.tokens, j.size.params, j.lr))

    def steps_for(self, tokens: float) -> int:
        return max(1, round(tokens / self.tokens_per_step))

    def run_dir(self, job: Job) -> Path:
        return self.out / "runs" / job.name()

    def overrides_for(self, job: Job) -> list[str]:
        steps = self.steps_for(job.tokens)
        warmup = min(self.cfg.schedule.warmup_steps, steps // 10)
        every = max(1, steps // 8)  # 8 validation points: the training curve that approach 1 reads
        s = job.size
        return [f"model.n_layer={s.n_layer}", f"model.n_embd={s.n_embd}", f"model.n_head={s.n_head}",
                f"optim.lr={job.lr!r}", f"loop.steps={steps}", "loop.epochs=1", "loop.max_steps=0",
                f"schedule.warmup_steps={warmup}", f"loop.eval_every={every}", f"loop.log_every={every}",
                "loop.patience=0", f"run.name={job.name()}"]

    # ------------------------------------------------------------------ state on disk
    def check_folder(self) -> None:
        """One sweep folder holds one recipe: a second invocation may add sizes and budgets, not change the data."""
        meta = self.out / "sweep.json"
        if meta.is_file():
            try:
                old = json.loads(meta.read_text())
            except (OSError, ValueError):
                raise UserError(f"{meta} is damaged (not JSON)", "delete it; the runs are kept and reread") from None
            same = old.get("recipe") == self.recipe and old.get("overrides") == self.overrides
            if not same:
                raise UserError(f"{self.out} is a sweep of {old.get('recipe')} {' '.join(old.get('overrides', []))}"
                                f"; this one is {self.recipe} {' '.join(self.overrides)}",
                                "give another --out, or the same recipe and overrides to continue that sweep")

    def write_meta(self) -> None:
        from trainlab import runs

        meta = {"recipe": self.recipe, "overrides": self.overrides, "budget_kind": self.budget_kind,
                "budgets": self.budgets, "lrs": self.lrs, "tokens_per_step": self.tokens_per_step,
                "sizes": [{**asdict(s), "name": s.name} for s in self.sizes], "lr_choice": self.lr_choice()}
        self.out.mkdir(parents=True, exist_ok=True)
        runs.write_text(self.out / "sweep.json", json.dumps(meta, indent=2) + "\n")

    def result(self, job: Job) -> dict | None:
        """The finished run's summary, or None (not run, interrupted, or failed)."""
        p = self.run_dir(job) / "summary.json"
        try:
            s = json.loads(p.read_text())
        except (OSError, ValueError):
            return None
        return s if s.get("status") in ("completed", "early_stopped") else None

    def lr_choice(self) -> dict[str, float]:
        """Size name -> the searched rate with the lowest final validation loss (sizes whose search is done)."""
        out = {}
        for size in self.sizes:
            tried = [Job(size, self.tokens_for(size, self.budgets[0]), lr, True) for lr in self.lrs]
            found = [(self.result(j), j.lr) for j in tried]
            if all(r is not None for r, _ in found):
                out[size.name] = min(found, key=lambda t: t[0]["metrics"]["val"]["loss"])[1]
        return out

    # ------------------------------------------------------------------ running
    def run(self, quiet: bool = True, wait_s: float = 5.0) -> None:
        """Train every pending run (skipping finished ones, resuming interrupted ones)."""
        from trainlab import api, config, distributed, runs

        self.check_folder()
        if distributed.rank() == 0:
            self.write_meta()
        parallel = not distributed.launched()  # independent processes share the grid through the run locks
        pending = self.jobs()
        while pending:
            waiting, progressed = [], False
            for job in pending:
                if not job.search:
                    lr = self.lr_choice().get(job.size.name)
                    if lr is None:  # the size's search is still running (here or in another process)
                        waiting.append(job)
                        continue
                    job = Job(job.size, job.tokens, lr, False)
                if self.result(job) is not None:
                    progressed = True
                    continue
                d = self.run_dir(job)
                if parallel:
                    try:
                        runs.lock(d)  # claim it; another process training it keeps its lock
                    except UserError:
                        waiting.append(job)
                        continue
                    if self.result(job) is not None:  # finished between the check and the claim
                        runs.unlock(d)
                        progressed = True
                        continue
                cfg = config.load_recipe(self.recipe, self.overrides + self.overrides_for(job))
                resume = (d / "config.toml").is_file()
                t0 = time.time()
                sink = io.StringIO()
                with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
                    try:
                        s = api.train(cfg, run_dir=d, resume=resume)
                    finally:
                        runs.unlock(d)
                if distributed.rank() == 0:
                    print(f"{job.name():<32} N={job.size.params:>10,}  D={s['steps'] * self.tokens_per_step:>12,}  "
                          f"val loss {s['metrics']['val']['loss']:.4f}  ({time.time() - t0:.0f} s"
                          f"{', resumed' if resume else ''})", flush=True)
                progressed = True
            if distributed.rank() == 0:
                self.write_meta()
            if waiting and not progressed:
                time.sleep(wait_s)  # another process holds what is left: wait for it
            pending = waiting

    # ------------------------------------------------------------------ results
    def collect(self) -> Path:
        """Write points.csv from the finished runs the grid keeps (each size at its chosen rate)."""
        rows = []
        choice = self.lr_choice()
        for job in self.jobs():
            lr = choice.get(job.size.name)
            if lr is None or (job.search and job.lr != lr):
                continue
            job = Job(job.size, job.tokens, lr, job.search)
            s = self.result(job)
            if s is not None:
                rows += self.points_of(job, s)
        out = self.out / "points.csv"
        cols = ["run", "n_layer", "n_embd", "params", "params_total", "tokens", "flops", "flops_model", "loss",
                "lr", "step", "final"]
        extra = sorted({k for r in rows for k in r} - set(cols))
        buf = io.StringIO()
        w = csv.DictWriter(buf, cols + extra, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        from trainlab import runs

        runs.write_text(out, buf.getvalue())
        return out

    def points_of(self, job: Job, summary: dict) -> list[dict]:
        """One row per validation point of the run's metrics.jsonl (its training curve); the exported model's
        final validation metrics as the last row (final = 1)."""
        from trainlab import files, models

        d = self.run_dir(job)
        last = (summary.get("exported") or {}).get("step") or summary["steps"]  # the weights the loss is of
        model, info = models.load(d / "model")
        total = sum(p.numel() for p in model.parameters())
        per_token = model.flops_per_token() / 6  # the model's own count per token, forward = 2 of the 6
        n = job.size.params
        base = {"run": job.name(), "n_layer": job.size.n_layer, "n_embd": job.size.n_embd, "params": n,
                "params_total": total, "lr": job.lr}

        def row(step: int, metrics: dict, final: int) -> dict:
            tokens = step * self.tokens_per_step
            return {**base, "tokens": tokens, "flops": 6 * n * tokens, "flops_model": 6 * per_token * tokens,
                    "step": step, "final": final, **{k: v for k, v in metrics.items()
                                                       if isinstance(v, (int, float)) and k not in base}}

        curve = [row(m["step"], {"loss": m["loss"]}, 0) for m in files.read_metrics(d / "metrics.jsonl")[0]
                 if m.get("split") == "val" and isinstance(m.get("loss"), (int, float)) and m["step"] > 0
                 and m["step"] < last]
        return curve + [row(last, summary["metrics"]["val"], 1)]
