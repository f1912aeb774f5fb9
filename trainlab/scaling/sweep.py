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
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from trainlab.errors import UserError

SUFFIX = {"k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9, "t": 1e12}
EXTEND = 2  # how many times a size's learning-rate search may double (halve) past the edge of --lrs
SEARCHING = object()  # a size's chosen rate while its search goes on


def parse_number(text: str, option: str) -> float:
    """'20k', '1.5M', '3e12', '1e6' -> a positive finite number."""
    t = text.strip().lower().replace("_", "")
    scale = SUFFIX.get(t[-1:], 1.0) if t else 1.0
    try:
        v = float(t[:-1] if scale != 1.0 else t) * scale
    except ValueError:
        v = math.nan
    if not (math.isfinite(v) and v > 0):
        if "=" in text:  # argparse gave an override that came after the option to the option
            raise UserError(f"{option} expects numbers; got the recipe override {text!r}",
                            "put key=value overrides right after the recipe, before the options")
        lrs = option.endswith("lrs")
        such = "3e-3 or 1e-2" if lrs else "20k, 1.5M or 3e12"
        if option.startswith("sweep."):  # a key of the recipe's [sweep] table: the example is TOML
            hint = f"e.g. {option} = [1e-3, 3e-3, 1e-2]" if lrs else f'e.g. {option} = ["1M", "3M", "10M"]'
        else:
            hint = f"e.g. {option} 1e-3 3e-3 1e-2" if lrs else f"e.g. {option} 1M 3M 10M"
        raise UserError(f"{option} expects positive numbers such as {such}; got {text!r}", hint)
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
            score = abs(math.log(size.params / target)) + 0.3 * abs(math.log(n_embd / n_layer / aspect))
            if best is None or score < best[0]:
                best = (score, size)
    if best is None:
        raise UserError(f"--sizes: no GPT shape has about {target:,.0f} non-embedding parameters (1 to 24 layers "
                        "of width 16 to 2048)", "give sizes between 3k and 1.2B, or a shape such as 2x64")
    return best[1]


def parse_size(model_cfg, text: str, option: str = "--sizes") -> Size:
    """'4x128' (layers x width) or a parameter count ('50k', '1M')."""
    m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", text)
    if m:
        n_layer, n_embd = int(m[1]), int(m[2])
        head = 16 if n_embd < 256 else 32
        if n_layer < 1 or n_embd < 2 or n_embd % 2:
            raise UserError(f"{option}: {text!r} needs layers >= 1 and an even width", "e.g. --sizes 2x64 4x128")
        n_head = n_embd // head if n_embd % head == 0 else 1
        return Size(n_layer, n_embd, n_head, count_params(model_cfg, n_layer, n_embd, n_head))
    return shape_for(model_cfg, parse_number(text, option))


def _text(value: str | float) -> str:
    """A grid value as the command line would give it (a [sweep] table may hold numbers)."""
    return value if isinstance(value, str) else repr(value)


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
                 tokens: list[str] = (), flops: list[str] = (), lrs: list[str] = (),
                 tokens_per_param: tuple[float, float] | None = None):
        from trainlab import config

        self.out = Path(out)
        self.cfg = config.load_recipe(recipe, list(overrides))
        # The runs' overrides: sweep.* keys change the grid (like --sizes), not how a run trains, so a sweep
        # continued with other sweep.* overrides is the same sweep.
        self.recipe = recipe
        self.overrides = [o for o in overrides if o.split("=", 1)[0].strip().split(".")[0] != "sweep"]
        if self.cfg.model.kind != "gpt" or self.cfg.model.head != "lm":
            raise UserError(f"a scaling sweep trains language models (model.kind = 'gpt', head 'lm'); {recipe} "
                            f"has model.kind = '{self.cfg.model.kind}'", "sweep a GPT recipe, e.g. stdlib-scaling")
        # The recipe's [sweep] table fills what the command line leaves out (the budgets as one: --tokens or
        # --flops given replaces both of the table's); errors name where the value came from.
        table = self.cfg.sweep

        def given(value, key: str) -> tuple:  # the command line's value, else the table's; and the name errors use
            return (value, "--" + key.replace("_", "-")) if value else (getattr(table, key) or [], "sweep." + key)

        sizes, size_key = given(sizes, "sizes")
        lrs, lr_key = given(lrs, "lrs")
        tokens_per_param, band_key = given(tokens_per_param, "tokens_per_param")
        budget_key = "--"
        if not (tokens or flops):  # budgets given replace both of the table's
            tokens, flops, budget_key = table.tokens or [], table.flops or [], "sweep."
        if not sizes or not (tokens or flops) or (tokens and flops):
            raise UserError(f"a sweep needs sizes and either tokens or flops (not both); got {len(sizes)} size(s), "
                            f"{len(tokens)} token and {len(flops)} FLOP budget(s) (command line and [sweep] table)",
                            "give --sizes and --tokens or --flops, e.g. --sizes 20k 100k 500k --flops 1e12 3e12 "
                            "1e13, or the same keys in the recipe's [sweep] table")
        self.sizes = sorted({parse_size(self.cfg.model, _text(s), size_key) for s in sizes}, key=lambda s: s.params)
        self.budget_kind = "tokens" if tokens else "flops"
        self.budgets = sorted({parse_number(_text(b), budget_key + self.budget_kind) for b in (tokens or flops)})
        self.lrs = (sorted({parse_number(_text(x), lr_key) for x in lrs})
                    or [self.cfg.optim.lr * f for f in (0.5, 1, 2)])
        # An IsoFLOP grid is a band around the optimum: the cells far off it (a tiny model on a huge budget) cost
        # the most and say the least; --tokens-per-param LO HI keeps the cells with LO <= D / N <= HI.
        self.band = tuple(tokens_per_param) if tokens_per_param else (0.0, math.inf)
        self.band_key = band_key
        if not (0 <= self.band[0] < self.band[1]):
            raise UserError(f"{band_key} expects LO < HI, both >= 0; got {self.band[0]:g} {self.band[1]:g}",
                            "e.g. --tokens-per-param 3 300")
        if not self.grid():
            raise UserError(f"no (size, budget) of the grid has between {self.band[0]:g} and {self.band[1]:g} tokens "
                            "per parameter", "widen --tokens-per-param, or change --sizes or the budgets")
        d = self.cfg.data
        # data.batch_size x loop.grad_accum is the global batch, however many processes share it
        self.tokens_per_step = d.batch_size * d.block_size * self.cfg.loop.grad_accum
        self.check_names()
        self.check_folder()

    # ------------------------------------------------------------------ the grid
    def tokens_for(self, size: Size, budget: float) -> float:
        return budget if self.budget_kind == "tokens" else budget / (6 * size.params)  # C = 6 N D

    def grid(self) -> list[tuple[Size, list[float]]]:
        """(size, its token budgets inside the band, smallest first) for every size with one or more."""
        out = []
        for size in self.sizes:
            ds = sorted(d for d in (self.tokens_for(size, b) for b in self.budgets)
                        if self.band[0] <= d / size.params <= self.band[1])
            if ds:
                out.append((size, ds))
        return out

    def jobs(self) -> list[Job]:
        """The runs known now, smallest compute first: each size's search over the rates tried so far, and its
        other budgets at the chosen rate (NaN while the search goes on)."""
        out = []
        for size, ds in self.grid():
            tried, choice = self.search(size, ds[0])
            out += [Job(size, ds[0], lr, True) for lr in tried]
            lr = choice if choice is not None and choice is not SEARCHING else math.nan
            out += [Job(size, d, lr, False) for d in ds[1:]]
        return sorted(out, key=lambda j: (6 * j.size.params * j.tokens, j.size.params, j.lr))

    def search(self, size: Size, tokens: float) -> tuple[dict[float, float | None], object]:
        """This size's learning-rate search: {rate: final validation loss (inf: diverged; None: not finished)}
        over the rates tried or to try next, and the chosen rate (SEARCHING while it goes on; None when every
        rate diverged). It starts with --lrs; while the best rate is the highest (lowest) tried, it tries twice
        (half) that, up to EXTEND times each way: a best rate at the edge of the grid is a bound, not an
        optimum. One rate given is no search: that rate."""
        tried: dict[float, float | None] = {}
        rates = list(self.lrs)
        while True:
            for lr in rates:
                if lr not in tried:
                    r = self.result(Job(size, tokens, lr, True))
                    tried[lr] = None if r is None else self.loss_of(r)
            if any(v is None for v in tried.values()):
                return dict(sorted(tried.items())), SEARCHING
            best = min(tried, key=tried.get)
            if not math.isfinite(tried[best]):
                return dict(sorted(tried.items())), None  # every rate diverged
            if len(self.lrs) > 1 and best == max(tried) and best < self.lrs[-1] * 2**EXTEND * 0.9999:
                rates.append(best * 2)
            elif len(self.lrs) > 1 and best == min(tried) and best > self.lrs[0] / 2**EXTEND * 1.0001:
                rates.append(best / 2)
            else:
                return dict(sorted(tried.items())), best

    def edge_warnings(self) -> list[str]:
        """The sizes whose best learning rate is the highest or lowest one tried (after the search's extensions):
        a bound, not an optimum."""
        out = []
        for size, ds in self.grid():
            tried, choice = self.search(size, ds[0])
            rates = [lr for lr, v in tried.items() if v is not None]
            if choice is SEARCHING or choice is None or len(rates) < 2 or min(rates) < choice < max(rates):
                continue
            side, nxt = ("highest", choice * 2) if choice == max(rates) else ("lowest", choice / 2)
            out.append(f"{size.name}: its best learning rate {choice:g} is the {side} tried ({min(rates):g} to "
                       f"{max(rates):g}): the optimum may lie beyond; add --lrs {nxt:g} to search further")
        return out

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
                "loop.patience=0", "loop.restore_best=false", f"run.name={job.name()}"]

    # ------------------------------------------------------------------ state on disk
    def check_folder(self) -> None:
        """One sweep folder holds one recipe. A second invocation may add sizes and budgets (of the same kind):
        the grid becomes the union of the two, so points.csv keeps the earlier sizes."""
        meta = self.out / "sweep.json"
        if self.out.exists() and not self.out.is_dir():
            raise UserError(f"--out {self.out} is a file; a sweep writes a folder", "give a new folder for --out")
        if not meta.is_file():
            # a sweep whose sweep.json is being written (a temporary file) or was deleted (runs/, points.csv)
            # is still a sweep; anything else is somebody's folder
            if self.out.is_dir() and any(not (x.name in ("runs", "points.csv") or x.name.endswith(".tmp"))
                                         for x in self.out.iterdir()):
                raise UserError(f"--out {self.out} holds other files and no sweep.json: it is not a sweep folder",
                                "give a new (or empty) folder, or the folder of the sweep to continue")
            return
        try:
            old = json.loads(meta.read_text())
            old_sizes = [Size(x["n_layer"], x["n_embd"], x["n_head"], x["params"]) for x in old.get("sizes", [])]
            old_budgets = [float(b) for b in old.get("budgets", [])]
            old_lrs = [float(x) for x in old.get("lrs", [])]
        except (OSError, ValueError, KeyError, TypeError):
            raise UserError(f"{meta} is damaged (not the JSON a sweep writes)",
                            "delete it and run the sweep again: finished runs are kept and reread") from None
        if old.get("recipe") != self.recipe or old.get("overrides") != self.overrides:
            raise UserError(f"{self.out} is a sweep of {old.get('recipe')} {' '.join(old.get('overrides', []))}"
                            f"; this one is {self.recipe} {' '.join(self.overrides)}",
                            "give another --out, or the same recipe and overrides to continue that sweep")
        if old.get("budget_kind") != self.budget_kind:
            raise UserError(f"{self.out} is a sweep over --{old.get('budget_kind')}; this one gives "
                            f"--{self.budget_kind}",
                            f"continue it with --{old.get('budget_kind')}, or give another --out")
        self.sizes = sorted(set(self.sizes) | set(old_sizes), key=lambda z: z.params)
        self.budgets = sorted(set(self.budgets) | set(old_budgets))
        self.lrs = sorted(set(self.lrs) | set(old_lrs))  # rates searched before stay in each size's search
        self.check_names()

    def check_names(self) -> None:
        """Run folders are named with 3 significant digits: two budgets or rates that round alike are refused."""
        for size, ds in self.grid():
            for what, values in (("budgets", ds), ("learning rates", self.lrs)):
                names = [f"{v:.3g}" for v in values]
                if len(set(names)) < len(names):
                    raise UserError(f"two {what} of size {size.name} round to the same run name "
                                    f"({', '.join(names)}: 3 significant digits)", f"drop one of the close {what}")

    def write_meta(self) -> None:
        from trainlab import runs

        meta = {"recipe": self.recipe, "overrides": self.overrides, "budget_kind": self.budget_kind,
                "budgets": self.budgets, "lrs": self.lrs, "tokens_per_step": self.tokens_per_step,
                "tokens_per_param": list(self.band) if math.isfinite(self.band[1]) else None,
                "sizes": [{**asdict(s), "name": s.name} for s in self.sizes], "lr_choice": self.lr_choice(),
                "lr_search": self.search_table()}
        self.out.mkdir(parents=True, exist_ok=True)
        runs.write_text(self.out / "sweep.json", json.dumps(meta, indent=2) + "\n")

    def result(self, job: Job) -> dict | None:
        """The summary of a run that ended: completed, stopped early, or failed (diverged); else None."""
        try:
            s = json.loads((self.run_dir(job) / "summary.json").read_text())
        except (OSError, ValueError):
            return None
        return s if s.get("status") in ("completed", "early_stopped", "failed") else None

    @staticmethod
    def loss_of(summary: dict | None) -> float:
        """A finished run's final validation loss; a diverged (or missing) run's is infinite."""
        if not summary or summary.get("status") == "failed":
            return math.inf
        return summary["metrics"]["val"]["loss"]

    def lr_choice(self) -> dict[str, float | None]:
        """Size name -> the searched rate with the lowest final validation loss, for the sizes whose search is
        over; None when every rate diverged (the size is left out)."""
        out = {}
        for size, ds in self.grid():
            choice = self.search(size, ds[0])[1]
            if choice is not SEARCHING:
                out[size.name] = choice
        return out

    def search_table(self) -> dict[str, dict[str, float | str | None]]:
        """Size name -> {rate: final validation loss, "diverged", or None (not finished)} for sweep.json."""
        return {size.name: {f"{lr:g}": "diverged" if v == math.inf else v
                            for lr, v in self.search(size, ds[0])[0].items()} for size, ds in self.grid()}

    # ------------------------------------------------------------------ running
    def run(self, quiet: bool = True, wait_s: float = 5.0) -> int:
        """Train every pending run (skipping finished ones, resuming interrupted ones) until the grid is done:
        the jobs are recomputed after every run, since a search's results decide what comes next. Returns how
        many runs this process trained."""
        from trainlab import distributed, runs

        if distributed.rank() == 0:
            self.write_meta()
        parallel = not distributed.launched()  # independent processes share the grid through the run locks
        count = 0
        while True:
            jobs = [j for j in self.jobs() if not (math.isnan(j.lr) or self.result(j) is not None)]
            if not jobs and all(s.name in self.lr_choice() for s, _ in self.grid()):
                return count
            trained = False
            for job in jobs:
                d = self.run_dir(job)
                if parallel:
                    try:
                        runs.lock(d)  # claim it; another process training it keeps its lock
                    except UserError:
                        continue
                    if self.result(job) is not None:  # finished between the check and the claim
                        runs.unlock(d)
                        continue
                self.train(job, d, quiet)
                trained, count = True, count + 1
                break  # what to run next may have changed
            if distributed.rank() == 0:
                self.write_meta()
            if not trained:
                time.sleep(wait_s)  # another process holds what is left: wait for it

    def train(self, job: Job, d: Path, quiet: bool) -> None:
        from trainlab import api, config, distributed, runs

        cfg = config.load_recipe(self.recipe, self.overrides + self.overrides_for(job))
        resume = (d / "checkpoints" / "last").exists()
        if not resume and d.is_dir() and distributed.rank() == 0:
            # Killed before its first checkpoint: nothing to resume, so start it again in an emptied folder.
            for p in d.iterdir():
                if p.name != runs.LOCK:
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        t0 = time.time()
        try:
            with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
                s = api.train(cfg, run_dir=d, resume=resume)
        except UserError as e:
            s = self.result(job)  # every process returns once rank 0 has written it (the loop's barrier)
            if s is None or s.get("status") != "failed":
                raise
            if distributed.rank() == 0:  # a diverged rate is an answer of the search, not the end of the sweep
                print(f"{job.name():<32} diverged: {e.message}", flush=True)
            return
        finally:
            runs.unlock(d)
        if distributed.rank() == 0:
            print(f"{job.name():<32} N={job.size.params:>10,}  D={s['steps'] * self.tokens_per_step:>12,}  "
                  f"val loss {s['metrics']['val']['loss']:.4f}  ({time.time() - t0:.0f} s"
                  f"{', resumed' if resume else ''})", flush=True)

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
            if s is not None and math.isfinite(self.loss_of(s)):
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
        per_token = model.flops_per_token()  # the model's own training FLOPs per token (attention, output layer)
        n = job.size.params
        base = {"run": job.name(), "n_layer": job.size.n_layer, "n_embd": job.size.n_embd, "params": n,
                "params_total": total, "lr": job.lr}

        def row(step: int, metrics: dict, final: int) -> dict:
            tokens = step * self.tokens_per_step
            return {**base, "tokens": tokens, "flops": 6 * n * tokens, "flops_model": per_token * tokens,
                    "step": step, "final": final, **{k: v for k, v in metrics.items()
                                                       if isinstance(v, (int, float)) and k not in base}}

        # every validation metric of the curve's points too (ce: the cross-entropy part of the loss), as the last's
        curve = [row(m["step"], {k: v for k, v in m.items() if k not in ("step", "time")}, 0)
                 for m in files.read_metrics(d / "metrics.jsonl")[0]
                 if m.get("split") == "val" and isinstance(m.get("loss"), (int, float)) and m["step"] > 0
                 and m["step"] < last]
        return curve + [row(last, summary["metrics"]["val"], 1)]
