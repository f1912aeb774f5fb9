"""trainlab from Python: `train` a recipe (optionally with your own nn.Module and objective) and `load` a run
to predict with it.

    import trainlab
    summary = trainlab.train("digits-cnn", ["loop.epochs=5"], run_dir="runs/mine")
    p = trainlab.load("runs/mine")
    p.predict(images)            # class names, with the training run's preprocessing
    p.predict_proba(images)      # (N, classes) probabilities
    p.model                      # the bare nn.Module

    trainlab.train("digits-mlp", model=MyNet(), objective=my_loss, run_dir="runs/own")   # your own module
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from torch import nn

from trainlab import config
from trainlab.errors import UserError


class _CallableObjective:
    """An objective from a plain function `fn(model, batch) -> loss` or `-> (loss, metrics)`."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def loss(self, model, batch):
        out = self.fn(model, batch)
        if isinstance(out, tuple) and len(out) == 2:
            return out
        return out, {}


def recipe_config(recipe: str | Path | config.Config | dict, overrides=(), model: nn.Module | None = None,
                  objective: Any = None) -> config.Config:
    """The validated config of `recipe` (a bundled name, a TOML path, a Config or a dict of tables) with
    `overrides` ("key.sub=value"); with your own `model`/`objective`, [model]/[objective] record them."""
    from trainlab import registry
    from trainlab.models.module import qualified_name

    if isinstance(recipe, (str, Path)):
        cfg = config.load_recipe(str(recipe), list(overrides))
    elif isinstance(recipe, config.Config) and not overrides:
        cfg = recipe  # already validated (the command line's path)
    else:
        raw = recipe.model_dump(mode="json") if isinstance(recipe, config.Config) else dict(recipe)
        for item in overrides:
            config.apply_override(raw, item)
        cfg = config.validate(raw, source="the config given to trainlab.train")
    if model is None and objective is None:
        return cfg
    raw = cfg.model_dump(mode="json")
    if model is not None:
        if not isinstance(model, nn.Module):
            raise UserError(f"model= must be a torch.nn.Module; got {type(model).__name__}",
                            "pass an instance of your module, e.g. model=MyNet()")
        raw["model"] = {"kind": "module", "target": qualified_name(model),
                        **{k: v for k, v in raw["model"].items() if k in ("init_from", "init_skip")}}
    if objective is not None:
        if not (hasattr(objective, "loss") or callable(objective)):
            raise UserError(f"objective= must have a loss(model, batch) method or be a function (model, batch) -> "
                            f"loss; got {type(objective).__name__}", "see trainlab.objectives.Objective")
        raw["objective"] = {"kind": "custom", "target": qualified_name(objective)}
    elif model is not None and registry.fitted(cfg.model.kind):
        raw["objective"] = {"kind": "auto"}  # a fitted recipe's placeholder objective trains nothing
    return config.validate(raw, source="trainlab.train")


def train(recipe: str | Path | config.Config | dict = "digits-mlp", overrides: list[str] | tuple[str, ...] = (), *,
          model: nn.Module | None = None, objective: Any = None, run_dir: str | Path | None = None,
          resume: bool = False) -> dict:
    """Train `recipe` into a run folder and return its summary (summary.json, plus "run_dir").

    model: your own nn.Module instead of the recipe's [model] (it gets the recipe's batches: {"x", "y"} for
      arrays and images, {"idx", "targets"} for text, and must return what the objective uses: class logits or
      one value per example for the default supervised objective, token logits for next_token).
    objective: an object with loss(model, batch) -> (loss, metrics), or a function (model, batch) -> loss
      or (loss, metrics); default: the recipe's objective.
    run_dir: the run folder (default run.out_dir/run.name, numbered when taken); resume: continue it exactly
      (with the same model class and objective when they are your own).
    Works under torchrun as the command line does. Bad input raises trainlab.UserError."""
    from trainlab import distributed, loop, registry, runs

    cfg = recipe_config(recipe, overrides, model, objective)
    if objective is not None and not hasattr(objective, "loss"):
        objective = _CallableObjective(objective)
    if registry.fitted(cfg.model.kind):
        if resume:
            raise UserError(f"model.kind = '{cfg.model.kind}' is fitted in one call: there is nothing to resume",
                            "train again without resume")
        from trainlab import classical

        d = pick_run_dir(cfg, run_dir, resume=False)
        try:
            return {**classical.fit(cfg, d), "run_dir": str(d)}
        finally:
            runs.unlock(d)
    if resume and cfg.model.kind == "module" and model is None:
        raise UserError("resuming a run of your own nn.Module needs the module", "pass model=MyNet() with resume=True")
    with distributed.session(cfg.loop) as ctx:
        existed = run_dir is not None and Path(run_dir).exists()
        # Rank 0 picks (and locks) the folder, a numbered one may be taken meanwhile; every process uses it.
        found = ctx.broadcast(_attempt(pick_run_dir, cfg, run_dir, resume) if ctx.main else None)
        if isinstance(found, tuple):
            raise UserError(*found)
        try:
            summary = loop.train(cfg, found, resume=resume, ctx=ctx, model=model, objective=objective)
        except UserError:
            # Refused before anything was written (a bad init_from, data that cannot be read): leave no folder.
            if ctx.main and not existed and not resume and runs.is_empty(found):
                runs.unlock(found)
                (found / runs.LOCK).unlink(missing_ok=True)
                try:
                    found.rmdir()
                except OSError:
                    pass
            raise
        finally:  # also after an error: a notebook can resume the folder at once
            if ctx.main:
                runs.unlock(found)
    return {**summary, "run_dir": str(found)}


def _attempt(fn, *args):
    """fn(*args), or its UserError as (message, hint): something that can be sent to the other processes."""
    try:
        return fn(*args)
    except UserError as e:
        return e.message, e.hint


def pick_run_dir(cfg: config.Config, run_dir: str | Path | None, resume: bool) -> Path:
    """The run folder, locked for this process (trainlab.runs.lock): the given one (empty unless resuming),
    the latest run of the recipe for a resume without one, else a fresh run.out_dir/run.name[-N]."""
    from trainlab import runs

    if resume:
        d = Path(run_dir) if run_dir else runs.latest_run_dir(cfg.run.out_dir, cfg.run.name)
        if not (d / "config.toml").is_file():
            raise UserError(f"--resume: {d} is not a run folder (no config.toml)", "give --run-dir of a run")
        runs.lock(d)
        if not run_dir:
            print(f"resuming {d}, the latest run of {cfg.run.name}", flush=True)
        return d
    if run_dir:
        d = Path(run_dir)
        runs.lock(d)
        if not runs.is_empty(d):
            runs.unlock(d)
            raise UserError(f"run folder {d} already exists and is not empty",
                            "pass --resume to continue it, or choose another --run-dir")
        return d
    return runs.new_run_dir(cfg.run.out_dir, cfg.run.name)


def load(run_dir: str | Path, model: nn.Module | None = None):
    """A trained run as a Predictor (trainlab.predict): raw inputs in, predictions out, with the preprocessing
    the run was trained with. `model`: an instance of your own class, for a run of model.kind = "module"."""
    from trainlab.predict import Predictor

    return Predictor(run_dir, model)
