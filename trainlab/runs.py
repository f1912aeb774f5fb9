"""Run folders: where a run writes config.toml, metrics.jsonl, summary.json, TensorBoard events, and how it
shows progress (a bar on a terminal, plain lines in a log file)."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

from trainlab.errors import UserError


LOCK = ".lock"  # in every run folder: locked by the one process writing the folder, with its PID inside

_held: dict[Path, int] = {}  # run folders this process holds: folder -> file descriptor of its lock


def lock(run_dir: Path) -> None:
    """Hold `run_dir` for this process until it exits (or `unlock`): a second trainlab process writing the same
    folder gets one error naming the holder. Creates the folder; one that cannot be created or written is a
    UserError before any work. Readers (eval, report) take no lock."""
    import fcntl

    run_dir = Path(run_dir)
    key = run_dir.resolve()
    if key in _held:
        return
    hint = "choose a --run-dir you can write to"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except FileExistsError:
        raise UserError(f"cannot create run folder {run_dir}: a file of that name is in the way", hint) from None
    except NotADirectoryError:
        raise UserError(f"cannot create run folder {run_dir}: a part of the path is a file, not a folder",
                        hint) from None
    except OSError as e:
        raise UserError(f"cannot create run folder {run_dir} ({e.strerror or type(e).__name__})", hint) from None
    try:
        # A POSIX record lock (lockf), not flock: processes forked by the run (data or compile workers) do not
        # inherit it, so it ends with the run's own process; it also works over NFS with a lock daemon.
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise UserError(f"run folder {run_dir} is in use by another trainlab process (PID {holder})",
                        "wait for it to finish, stop it, or choose another --run-dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[key] = fd


def unlock(run_dir: Path) -> None:
    fd = _held.pop(Path(run_dir).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the lock


def is_empty(run_dir: Path) -> bool:
    """No files but the lock: a folder a new run may use."""
    return not run_dir.exists() or (run_dir.is_dir() and all(p.name == LOCK for p in run_dir.iterdir()))


def new_run_dir(out_dir: str, name: str) -> Path:
    """out_dir/name, or name-2, name-3, ... when taken: a new run never writes over an old one. The folder is
    claimed (locked) before it is returned, so two runs started at once get two folders."""
    base = Path(out_dir)
    n = 1
    while True:
        d = base / (name if n == 1 else f"{name}-{n}")
        n += 1
        if not is_empty(d) or d.resolve() in _held:  # in use, or claimed by this process for another run
            continue
        try:
            lock(d)
        except UserError:
            if d.is_dir() and (d / LOCK).exists():
                continue  # another run claimed it a moment ago
            raise
        if is_empty(d):
            return d
        unlock(d)  # filled between the look and the lock


def latest_run_dir(out_dir: str, name: str) -> Path:
    base = Path(out_dir)
    found = [d for d in base.glob(f"{name}*") if (d / "config.toml").is_file()
             and (d.name == name or d.name[len(name):].lstrip("-").isdigit())]
    if not found:
        raise UserError(f"--resume found no run of '{name}' under {base}/", "give the run folder with --run-dir")
    return max(found, key=lambda d: (d / "config.toml").stat().st_mtime)


class RunWriter:
    """What training writes into the run folder besides metrics: config.toml, summary.json and model/.
    In a distributed run only rank 0 has one (trainlab.distributed.Dist.main_only)."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def config(self, cfg) -> None:
        from trainlab import config

        self.run_dir.mkdir(parents=True, exist_ok=True)
        config.save(cfg, self.run_dir / "config.toml")

    def summary(self, summary: dict) -> None:
        write_json(self.run_dir / "summary.json", summary)

    def model(self, model, cfg, data, step: int) -> None:
        """model/: the weights and what is needed to rebuild and feed the model (`trainlab.models.load`),
        swapped in whole so that a reader never finds half of it."""
        from safetensors.torch import save_model

        model_dir = self.run_dir / "model"
        tmp = model_dir.with_name("model.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        meta = {"model": cfg.model.model_dump(mode="json"), "info": data.info, "recipe": cfg.run.name, "step": step}
        from trainlab.models import lora

        base = getattr(cfg.model, "init_from", "")
        if lora.layers(model) and base:
            # Adapters only (and a new head): the base model stays where init_from points, as with PEFT.
            from safetensors.torch import save_file

            from trainlab import models

            save_file(lora.adapter_state_dict(model), str(tmp / models.ADAPTER))
            meta["adapter"] = {"base": _absolute_init(base), "file": models.ADAPTER,
                               "fingerprint": models.base_fingerprint(base)}
            _write_peft(model, cfg, tmp / "peft", base)
        else:
            save_model(model, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
        data.export(tmp)  # e.g. the tokenizer
        old = model_dir.with_name("model.old")
        shutil.rmtree(old, ignore_errors=True)
        if model_dir.exists():
            os.rename(model_dir, old)
        os.rename(tmp, model_dir)
        shutil.rmtree(old, ignore_errors=True)


def _absolute_init(init_from: str) -> str:
    """init_from as an absolute path (keeping an hf: prefix), so the adapters find their base from anywhere."""
    from trainlab.models import HF_PREFIX

    prefix = HF_PREFIX if init_from.startswith(HF_PREFIX) else ""
    path = Path(init_from[len(prefix):]).expanduser()
    return prefix + str(path.resolve()) if path.exists() else init_from  # hf:PACKAGE stays a package name


def _write_peft(model, cfg, out: Path, base: str) -> None:
    """model/peft/: the adapters as a PEFT folder, when the base model has a Hugging Face architecture. Its
    base_model_name_or_path is the base's Hugging Face folder when it came from one; a trainlab run must be
    exported first (`trainlab export BASE --format hf`), so it names none."""
    from trainlab import hf, models
    from trainlab.errors import UserError

    folder = str(models.hf_folder(base).resolve()) if base.startswith(models.HF_PREFIX) else ""
    try:
        hf.write_peft(model, cfg.model, out, folder)
    except UserError:  # no Hugging Face architecture for this model: trainlab's own adapter file is enough
        shutil.rmtree(out, ignore_errors=True)


def write_json(path: Path, obj: dict) -> None:
    write_text(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so a reader never sees half a file. The temporary name is
    the process's own: two processes writing one file (a shared sweep) each rename a whole file of their own."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot write {path} ({e.strerror or type(e).__name__})",
                        "choose a path in a folder you can write to") from None
    os.replace(tmp, path)


def _jsonable(v):
    return float(v) if hasattr(v, "__float__") else str(v)


def read_metrics(run_dir: Path) -> list[dict]:
    """The well-formed rows of metrics.jsonl (damaged lines, e.g. the torn last line of a killed run, skipped;
    trainlab.files.read_metrics also counts them)."""
    from trainlab import files

    return files.read_metrics(Path(run_dir) / "metrics.jsonl")[0]


class MetricLog:
    """metrics.jsonl (one JSON object per logged point) plus TensorBoard events when tensorboard is installed."""

    def __init__(self, run_dir: Path, resume_step: int | None = None, tensorboard: bool | str = "auto"):
        self.path = run_dir / "metrics.jsonl"
        if resume_step is not None:
            # Drop what the interrupted run logged after its checkpoint: the resumed run logs it again.
            kept = [r for r in read_metrics(run_dir) if r["step"] <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self.file = self.path.open("a")
        self.tb = _tensorboard(run_dir, tensorboard)

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        row = {"step": step, "split": split, "time": round(time.time(), 3), **metrics}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        for k, v in metrics.items():
            self.tb.add_scalar(f"{split}/{k}", v, step)

    def close(self) -> None:
        self.file.close()
        self.tb.close()


class _NoTensorBoard:
    def add_scalar(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def _tensorboard(run_dir: Path, wanted: bool | str = "auto"):
    """run.tensorboard: True writes event files (and says once that it cannot when tensorboard is missing),
    "auto" writes them when tensorboard is installed, False never."""
    if wanted is False:
        return _NoTensorBoard()
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the `tensorboard` extra is not installed
        if wanted is True:
            print("warning: run.tensorboard = true but tensorboard is not installed, so no event files are written "
                  "(metrics.jsonl has the same numbers); pip install 'trainlab[tensorboard]'", flush=True)
        return _NoTensorBoard()
    return SummaryWriter(str(run_dir / "tensorboard"))


class Progress:
    """A tqdm bar (step, loss, throughput, ETA) on a terminal; a plain line per log point otherwise."""

    def __init__(self, total: int, initial: int, unit: str = "ex"):
        self.total, self.unit, self.t0, self.step0 = total, unit, time.time(), initial
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=True)

    def tick(self, step: int) -> None:
        """Every step: the bar moves (tqdm redraws at most every 0.1 s); plain output waits for `update`."""
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def update(self, step: int, metrics: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(_fmt(metrics, self.unit), refresh=False)
            return
        done = step - self.step0
        eta = (time.time() - self.t0) / max(done, 1) * (self.total - step)
        print(f"step {step}/{self.total}  {_fmt(metrics, self.unit)}  eta {_duration(eta)}", flush=True)

    def write(self, text: str) -> None:
        (self.bar.write if self.bar is not None else print)(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fmt(metrics: dict[str, float], unit: str) -> str:
    parts = []
    for k, v in metrics.items():
        if k == "throughput":
            parts.append(f"{v:,.0f} {unit}/s")
        elif k == "lr":
            parts.append(f"lr {v:.2e}")
        elif isinstance(v, float) and math.isfinite(v):
            parts.append(f"{k} {v:.4g}")
    return "  ".join(parts)


def _duration(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
