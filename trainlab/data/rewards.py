"""Rewards for online post-training (PPO, GRPO): verifiable reward functions and a frozen reward model.

`data.rewards` names functions, summed with `data.reward_weights` (default 1 each):

    exact           1 when the reply is the row's "answer" exactly (trainlab.data.tasks.correct), else 0
    format          1 when the reply has the answer's form for the row's "task" (an integer, a list), else 0
    suite           the task suite's graded reward: 1 right, 0.1 well-formed but wrong, 0 otherwise
    MODULE:NAME     your own function, e.g. "myrewards:short" (importable, or a module in the current folder)
                    or "path/to/rewards.py:short", called as TRL calls
                    one: fn(prompts=[...], completions=[...], **columns) -> one float per completion, where the
                    columns are the prompts rows' other fields ("answer", ...), one list each

`data.reward_model` adds a reward model's score (a run trained with objective.kind = "reward"), weighted by
`data.reward_model_weight`. A function that raises, returns the wrong number of values, or a NaN or infinite
value stops the run with one line naming the function and the row.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from pathlib import Path
from typing import Callable

import torch

from trainlab.data import tasks as tasks_lib
from trainlab.errors import UserError, first_line


def _exact(prompts, completions, answer=None, **_):
    return [float(tasks_lib.correct(a, c)) for a, c in zip(answer, completions)]


def _format(prompts, completions, task=None, **_):
    return [float(tasks_lib.well_formed(t, c)) for t, c in zip(task, completions)]


def _suite(prompts, completions, answer=None, task=None, **_):
    return [tasks_lib.reward(a, t, c) for a, t, c in zip(answer, task, completions)]


BUILTIN: dict[str, tuple[Callable, tuple[str, ...]]] = {"exact": (_exact, ("answer",)),
                                                        "format": (_format, ("task",)),
                                                        "suite": (_suite, ("answer", "task"))}


def load_function(name: str) -> Callable:
    """A user's reward function from "module:function" or "path/to/file.py:function"."""
    where, _, fn = name.rpartition(":")
    if not where or not fn:
        raise UserError(f"data.rewards: '{name}' is neither a built-in reward ({', '.join(BUILTIN)}) nor "
                        "MODULE:FUNCTION", "write e.g. 'myrewards:short' or 'rewards.py:short'")
    try:
        if where.endswith(".py"):
            if not Path(where).is_file():
                raise UserError(f"data.rewards: '{name}' names the file {where}, which does not exist",
                                "give the path of a Python file")
            spec = importlib.util.spec_from_file_location(Path(where).stem, where)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            import os
            import sys

            if os.getcwd() not in sys.path:  # a module beside the recipe, as `python -m` would find it
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(where)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"data.rewards: importing '{where}' for '{name}' failed ({type(e).__name__}: "
                        f"{first_line(e)})", "fix the module, or check that it is importable") from None
    f = getattr(module, fn, None)
    if not callable(f):
        raise UserError(f"data.rewards: '{where}' has no function '{fn}'", "check the function's name")
    return f


class Rewards:
    """Scores replies: the weighted sum of the reward functions (and the reward model), and each one's mean."""

    def __init__(self, names: list[str], weights: list[float], columns: set[str]):
        if not names:
            raise UserError("data.rewards is empty: online training needs a reward", 'set data.rewards = ["suite"], '
                            "or data.reward_model")
        if weights and len(weights) != len(names):
            raise UserError(f"data.reward_weights has {len(weights)} values for {len(names)} data.rewards",
                            "give one weight per reward function, or none (1 each)")
        self.names, self.weights = list(names), list(weights) or [1.0] * len(names)
        self.fns = []
        for n in names:
            if n in BUILTIN:
                fn, need = BUILTIN[n]
                missing = [c for c in need if c not in columns]
                if missing:
                    raise UserError(f"data.rewards: '{n}' reads the field(s) {missing} of each prompts row, which "
                                    f"these rows lack (they have {sorted(columns) or 'only a prompt'})",
                                    "add the fields, or use a reward function of your own (MODULE:FUNCTION)")
                self.fns.append(fn)
            else:
                self.fns.append(load_function(n))

    def __call__(self, prompts: list[str], completions: list[str], rows: list[dict]) -> tuple[torch.Tensor, dict]:
        """(N,) total rewards and {"reward_NAME": mean} per function."""
        columns = {k: [r.get(k) for r in rows] for k in {k for r in rows for k in r} if k != "prompt"}
        total = torch.zeros(len(completions), dtype=torch.float64)
        parts = {}
        for name, fn, w in zip(self.names, self.fns, self.weights):
            try:
                got = fn(prompts=prompts, completions=completions, **columns)
            except Exception as e:
                raise UserError(f"reward function '{name}' raised {type(e).__name__}: {first_line(e)}",
                                "fix the function (it is called with prompts=, completions= and the rows' other "
                                "fields as lists)") from None
            values = _check(name, got, prompts)
            parts[f"reward_{_slug(name)}"] = float(values.mean())
            total += w * values
        return total.float(), parts


def _check(name: str, got, prompts: list[str]) -> torch.Tensor:
    try:
        values = [float(v) for v in got]
    except (TypeError, ValueError):
        raise UserError(f"reward function '{name}' returned {type(got).__name__}, not one number per completion",
                        "return a list of floats") from None
    if len(values) != len(prompts):
        raise UserError(f"reward function '{name}' returned {len(values)} values for {len(prompts)} completions",
                        "return one float per completion")
    bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
    if bad is not None:
        raise UserError(f"reward function '{name}' returned {values[bad]} for row {bad} (prompt "
                        f"{prompts[bad][:60]!r})", "return finite numbers (e.g. 0.0 for a reply it cannot score)")
    return torch.tensor(values, dtype=torch.float64)


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name.rpartition(":")[2] or name)
