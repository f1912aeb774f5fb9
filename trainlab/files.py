"""What trainlab reads back from a run folder, checked against the shape it wrote.

A run folder outlives the process that wrote it: users copy it, edit it by hand, and kill runs in the middle of
a write. Every file trainlab re-reads (`state.pt`, `model/config.json`, `summary.json`, `eval_*.json`,
`metrics.jsonl`; `config.toml` is a recipe and goes through trainlab.config) is parsed here and validated
against its schema, in the same pydantic style as recipes. What does not fit is a `UserError` naming the file,
what is wrong with it and what to do; no KeyError or TypeError from deep inside the loop.

Before anything runs on a model and a dataset, `check_fits` compares what the model was built for (its
`config.json` info) with what the data now is (input shape, classes, vocabulary).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trainlab.errors import UserError, first_line


class _Schema(BaseModel):
    # Keys a later version adds are kept, not rejected: a newer run folder stays readable where it can be.
    model_config = ConfigDict(extra="allow", arbitrary_types_allowed=True)


class Best(_Schema):
    step: int = Field(ge=0)
    metric: str
    value: float
    metrics: dict[str, float] = {}


class LoopState(_Schema):
    """state.pt: everything an exact resume needs besides the weights."""

    step: int = Field(ge=0)
    batches: dict
    rng: dict
    best: Best | None
    evals_since_best: int = Field(ge=0)
    wall_s: float = Field(ge=0)
    optimizer: dict | None = None  # absent in a sharded checkpoint: the optimizer is in shards/


class DataInfo(_Schema):
    task: str
    split_sizes: dict[str, int] = {}


class ModelMeta(_Schema):
    """model/config.json: the [model] table, the data's info (what the model was built for), the step."""

    model: dict
    info: DataInfo
    recipe: str = ""
    step: int = Field(0, ge=0)
    # A LoRA run started from another model saves only what it trained: {"base": that model's init_from,
    # "file": "adapter.safetensors"}; the base is loaded from there first.
    adapter: dict | None = None


class Summary(_Schema):
    status: str
    recipe: str = ""
    steps: int = Field(0, ge=0)
    wall_s: float = 0.0
    parameters: int = 0
    device: str = ""
    metrics: dict[str, dict[str, Any]] = {}
    best: Best | None = None


class EvalResult(_Schema):
    split: str
    n: int = Field(ge=0)
    task: str
    metrics: dict[str, Any]
    baseline: dict[str, Any]


def _detail(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "the top level"
    if err["type"] == "missing":
        return f"'{where}' is missing"
    if not err["loc"]:
        return f"it holds a JSON {_json_type(err.get('input'))} where an object was expected"
    return f"'{where}': {err['msg'].removeprefix('Value error, ').lower()}, got {str(err.get('input'))[:40]!r}"


def _json_type(v) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(v), "null")


def read_json(path: Path, schema: type[BaseModel], hint: str) -> BaseModel:
    """`path` parsed as JSON and validated by `schema`; anything else is one UserError naming the file."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{path} does not exist", hint) from None
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror or type(e).__name__})", hint) from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is damaged: not UTF-8 text (byte {e.start})", hint) from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        what = "it ends early (truncated)" if e.pos >= len(text.rstrip()) else f"line {e.lineno}: {e.msg}"
        raise UserError(f"{path} is damaged: not valid JSON ({what})", hint) from None
    try:
        return schema.model_validate(raw)
    except ValidationError as e:
        raise UserError(f"{path} is damaged: {_detail(e)}", hint) from None


RETRAIN = "restore the file from the run that wrote it, or train the run again"


def read_meta(path: Path) -> ModelMeta:
    return read_json(path, ModelMeta, RETRAIN)


def read_summary(path: Path) -> Summary:
    return read_json(path, Summary, "restore it, or resume the run (`trainlab train --resume`) to write it again")


def read_eval(path: Path) -> EvalResult:
    return read_json(path, EvalResult, "delete it and run `trainlab eval` again")


def read_state(path: Path, need_optimizer: bool = False, loop_state: bool = True) -> dict:
    """A checkpoint's state.pt, loaded with weights_only (no code in the file runs); validated as the training
    loop's state (LoopState) unless `loop_state` is False."""
    hint = "resume from an intact checkpoint, or delete the run folder to start over"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" in str(e):  # a global outside the allowed set: a pickle that could run code
            raise UserError(f"{path} holds Python objects other than tensors and plain values; trainlab loads "
                            "only those and does not open it", hint) from None
        raise UserError(f"{path} is damaged: not a checkpoint state (its pickle data is invalid)", hint) from None
    except Exception as e:  # truncated zip, flipped bytes: torch raises several types
        raise UserError(f"{path} is damaged: not a checkpoint state ({first_line(e)})", hint) from None
    if not isinstance(state, dict):
        raise UserError(f"{path} is damaged: it holds a {type(state).__name__}, not a checkpoint state", hint)
    try:
        if loop_state:
            LoopState.model_validate(state)
    except ValidationError as e:
        raise UserError(f"{path} is damaged: {_detail(e)}", hint) from None
    if need_optimizer and not isinstance(state.get("optimizer"), dict):
        raise UserError(f"{path} is damaged: 'optimizer' is missing", hint)
    return state


def load_optimizer(optimizer: torch.optim.Optimizer, saved: dict, path: Path) -> None:
    """The optimizer's saved state, once its groups and every tensor's shape match this model's parameters."""
    hint = "resume with the recipe that wrote this checkpoint, or start a new run"
    try:
        groups, state = saved["param_groups"], saved["state"]
        ours = optimizer.param_groups
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in ours]:
            raise ValueError(f"{[len(g['params']) for g in groups]} parameters per group, this model has "
                             f"{[len(g['params']) for g in ours]}")
        for g_saved, g_ours in zip(groups, ours):
            for i, p in zip(g_saved["params"], g_ours["params"]):
                for k, v in state.get(i, {}).items():
                    if torch.is_tensor(v) and v.dim() > 0 and v.shape != p.shape:
                        raise ValueError(f"'{k}' of parameter {i} has shape {tuple(v.shape)}, the parameter "
                                         f"{tuple(p.shape)}")
        optimizer.load_state_dict(saved)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
        raise UserError(f"the optimizer state in {path} does not fit this model ({first_line(e)})", hint) from None


def restore(what: str, path: Path, fn, *args) -> Any:
    """fn(*args) for state that a component restores itself (the data position, random generators): a
    structure it does not expect is a damaged file, not a traceback."""
    try:
        return fn(*args)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
        raise UserError(f"{path} is damaged: its {what} cannot be restored ({first_line(e)})",
                        "resume from an intact checkpoint, or delete the run folder to start over") from None


# ------------------------------------------------------------------------------------------- metrics.jsonl


def read_metrics(path: Path) -> tuple[list[dict], int]:
    """The rows of metrics.jsonl and the number of lines skipped as damaged (not JSON, not an object with an
    integer `step` and a string `split`, not UTF-8). A torn last line of a killed run is one of those."""
    path = Path(path)
    if not path.is_file():
        return [], 0
    rows, bad = [], 0
    for raw in path.read_bytes().splitlines():
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            bad += 1
            continue
        if (isinstance(row, dict) and isinstance(row.get("step"), int) and not isinstance(row["step"], bool)
                and isinstance(row.get("split"), str)):
            rows.append({k: v for k, v in row.items() if k in ("step", "split") or _number(v)})
        else:
            bad += 1
    return rows, bad


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# -------------------------------------------------------------------------------- does the data fit the model


def check_fits(built_for: dict, data: dict, where: str) -> None:
    """The model in `where` was built for data described by `built_for`; `data` is what the run's data is now.
    Different input shapes, classes or vocabularies would fail deep inside the model, or silently mislabel."""
    problems = []
    for key, what in (("task", "task"), ("input_shape", "input shape"), ("num_classes", "number of classes"),
                      ("vocab_size", "vocabulary size"), ("block_size", "context length")):
        if key in built_for and key in data and built_for[key] != data[key]:
            problems.append(f"{what} {built_for[key]} -> {data[key]}")
    if not problems and built_for.get("class_names") and data.get("class_names") \
            and built_for["class_names"] != data["class_names"]:
        problems.append("class names differ")
    if "vocab_size" in built_for and "pad_id" not in built_for and "pad_id" in data:
        raise UserError(f"the model in {where} was trained by an earlier trainlab, whose tokenizer and standard-"
                        "library split this version does not rebuild (text format 1)",
                        "retrain it with this version (its tokens would no longer mean what they meant)")
    if not problems and built_for.get("tokenizer_sha256") and data.get("tokenizer_sha256") \
            and built_for["tokenizer_sha256"] != data["tokenizer_sha256"]:
        problems.append("another tokenizer.json")
    if problems:
        raise UserError(f"the model in {where} was trained on other data than the run's config.toml describes "
                        f"now ({'; '.join(problems)})",
                        "restore the run's config.toml, or evaluate the model on the data it was trained on")

