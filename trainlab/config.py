"""Recipes: TOML files validated once, at the edge, into typed models.

A recipe has seven tables: run, data, model, objective, optim, schedule, loop. Every key has a default, so a
recipe only says what differs. `key.sub=value` overrides (from the command line) are parsed as TOML values.
[model], [objective] and [data] are tables by kind: the class of `model.kind`, `objective.kind` or
`data.source` (declared beside its builder and registered in trainlab.registry) validates them. Unknown keys,
wrong types and out-of-range values raise `UserError` naming the dotted key, what was expected and what came,
with the kind's own keys and the nearest valid key for typos.
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import (BaseModel, ConfigDict, Field, PositiveInt, SerializeAsAny, ValidationError, field_validator,
                      model_validator)

from trainlab.errors import UserError


class Table(BaseModel):
    """A recipe table: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(Table):
    name: str = "run"
    description: str = ""
    seed: int = 0
    out_dir: str = "runs"  # the run folder is out_dir/name (name-2, name-3, ... if taken)
    tensorboard: bool | Literal["auto"] = "auto"  # TensorBoard event files: auto = when tensorboard is installed


# The three tables chosen by kind. Each kind's class (its keys, defaults, cross-key checks) lives beside its
# builder and is registered there (trainlab.registry); these bases hold what every kind of that table shares.


class ModelTable(Table):
    kind: str


class NetworkTable(ModelTable):
    """A model trained by the loop (not fitted in one call)."""

    init_from: str = ""  # a finished run folder, or hf:PATH (a Hugging Face folder): its architecture and weights
    init_skip: list[str] = []  # with init_from: parameter-name prefixes left freshly initialized (a new head)


class ObjectiveTable(Table):
    kind: str


class DataTable(Table):
    source: str
    val_fraction: float = Field(0.15, gt=0, lt=1)
    test_fraction: float = Field(0.15, ge=0, lt=1)
    split_seed: int = 0  # the split is fixed by this seed, independent of run.seed
    batch_size: PositiveInt = 64
    eval_batch_size: PositiveInt = 512


class ArrayTable(DataTable):
    """Tables and images held as arrays."""

    task: Literal["auto", "classification", "regression", "unlabeled"] = "auto"  # unlabeled: no target column
    num_classes: int = Field(0, ge=0)  # 0 = infer from the labels; otherwise labels must lie in [0, num_classes)
    subset: int = Field(0, ge=0)  # keep only this many training examples (0 = all)
    standardize: bool = True  # z-score inputs (and regression targets) with training-split statistics
    anomaly_class: int = -1  # unsupervised: this class never reaches training and counts as the anomaly (-1 = none)


class ImageTable(ArrayTable):
    """Images (C, H, W): may be augmented."""

    augment: bool = False  # random shifts and rotations of training batches
    augment_shift: float = Field(1.0, ge=0)  # pixels, at most
    augment_degrees: float = Field(10.0, ge=0, le=180)


class OptimConfig(Table):
    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)  # never applied to biases and norm weights
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd
    nesterov: bool = False  # sgd
    # Learning-rate multipliers by parameter-name prefix, e.g. {"head" = 10.0, "blocks.0." = 0.1}: the longest
    # matching prefix wins; the schedule scales every group alike.
    lr_mult: dict[str, float] = {}
    freeze: list[str] = []  # parameter-name prefixes that are not trained (requires_grad = False)
    # Discriminative fine-tuning (ULMFiT; "layer-wise LR decay"): each Transformer block's rate is this factor
    # times the rate of the block above it; the head and final norm get optim.lr (1 = one rate for all).
    layer_decay: float = Field(1.0, gt=0, le=1)
    # Gradual unfreezing (ULMFiT): train the head first, then one more block from the top every this many steps,
    # the embeddings last (0 = everything trains from the start).
    unfreeze_every: int = Field(0, ge=0)

    @field_validator("lr_mult")
    @classmethod
    def _positive(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: m for k, m in v.items() if not m > 0}
        if bad:
            raise ValueError(f"must map name prefixes to multipliers > 0 (got {bad}; freeze a prefix with optim.freeze)")
        return v


class ScheduleConfig(Table):
    name: Literal["constant", "cosine", "linear"] = "cosine"
    warmup_steps: int = Field(0, ge=0)  # linear warm-up from 0, then the decay
    min_lr_ratio: float = Field(0.0, ge=0, le=1)  # the decay ends at lr * min_lr_ratio


class LoopConfig(Table):
    epochs: PositiveInt = 10  # used when steps = 0
    steps: int = Field(0, ge=0)  # optimizer steps; 0 = derived from epochs (written into config.toml)
    max_steps: int = Field(0, ge=0)  # a cap on optimizer steps for any recipe (0 = none)
    grad_accum: PositiveInt = 1  # micro-batches per optimizer step
    clip_grad_norm: float = Field(1.0, ge=0)  # 0 = no clipping (the norm is logged either way)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 elsewhere
    device: str = "auto"  # auto: cuda, then mps, then cpu
    eval_every: int = Field(0, ge=0)  # steps between validations; 0 = once per epoch (derived)
    eval_batches: int = Field(0, ge=0)  # validation batches per evaluation; 0 = the whole split
    log_every: PositiveInt = 10
    checkpoint_every: int = Field(0, ge=0)  # steps between checkpoints/last; 0 = at every evaluation
    monitor: str = "loss"  # the validation metric that picks checkpoints/best and drives early stopping
    monitor_mode: Literal["min", "max"] = "min"
    patience: int = Field(0, ge=0)  # evaluations without improvement before stopping; 0 = never stop early
    target: float | None = None  # stop once the monitored validation metric reaches this value (a solved task)
    restore_best: bool = True  # export the best weights (by monitor) rather than the last ones
    compile: bool = False  # torch.compile the model (worth it on GPUs; slow to start on a CPU)
    threads: int = Field(0, ge=0)  # CPU threads for torch; 0 = OMP_NUM_THREADS if set, else the usable cores
    peak_flops: float = Field(0.0, ge=0)  # the device's peak FLOP/s for MFU (0 = known GPUs only)
    # Under torchrun (several processes): "ddp" keeps a whole model on every device and averages gradients;
    # "fsdp" shards parameters, gradients and optimizer state across devices (FSDP2): 1/N of the training state each.
    parallel: Literal["ddp", "fsdp"] = "ddp"
    backend: Literal["auto", "nccl", "gloo"] = "auto"  # auto: NCCL on CUDA GPUs, gloo on CPUs
    dist_timeout_s: PositiveInt = 600  # a collective that waits longer fails the run instead of hanging

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        if v in ("auto", "cpu", "mps", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError("must be one of 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'")


class SweepConfig(Table):
    """`trainlab scaling sweep`'s grid for this recipe; each option given on the command line wins over its key."""
    sizes: list[str | float] | None = None  # non-embedding parameter counts ("20k", 1e6) or shapes ("2x64")
    tokens: list[str | float] | None = None  # training tokens per run ("1M", 3e6); or flops, not both
    flops: list[str | float] | None = None  # training FLOPs per run, C = 6 N D: an IsoFLOP grid
    lrs: list[float] | None = None  # learning rates searched per size (unset: optim.lr x 0.5, 1, 2)
    tokens_per_param: list[float] | None = None  # [LO, HI]: train only the cells with LO <= D / N <= HI

    @field_validator("tokens_per_param")
    @classmethod
    def _two_numbers(cls, v):
        if v is not None and len(v) != 2:
            raise ValueError("must be two numbers [LO, HI]")
        return v


class _TableInvalid(Exception):
    """A kind's table failed validation: carried out of pydantic (which would flatten a ValueError) whole."""

    def __init__(self, table: str, kind: str, error: ValidationError):
        self.table, self.kind, self.error = table, kind, error


KIND_KEY = {"model": "kind", "objective": "kind", "data": "source"}
REGISTRY_OF = {"model": "model", "objective": "objective", "data": "source"}
DEFAULT_KIND = {"model": "mlp", "data": "digits", "objective": "auto"}


def table(name: str, raw: dict | None = None, model_kind="mlp", /, **keys) -> Table:
    """The `[name]` table (model, data or objective) of its kind, validated: `table("model", kind="gpt")`.
    `objective` kind "auto" is the model's own objective (`model_kind`: a kind, or the validated model table)."""
    from trainlab import registry

    raw = {**(raw or {}), **keys}
    key = KIND_KEY[name]
    kind = raw.get(key, DEFAULT_KIND[name])
    if name == "objective" and kind == "auto":
        kind = registry.own_objective(model_kind)
    if not isinstance(kind, str):
        raise UserError(f"'{name}.{key}' must be a string naming a registered kind; got {kind!r}",
                        f"`trainlab recipes --keys` lists the kinds of [{name}]")
    cls = registry.get(REGISTRY_OF[name], kind).table
    try:
        return cls.model_validate({**raw, key: kind})
    except ValidationError as e:
        raise _TableInvalid(name, kind, e) from None


def model_table(**keys) -> Table:
    """The [model] table from Python: `model_table(kind="gpt", n_layer=2)`; bad keys are a UserError."""
    return _checked("model", keys)


def data_table(**keys) -> Table:
    """The [data] table from Python: `data_table(source="csv", path="my.csv")`."""
    return _checked("data", keys)


def _checked(name: str, keys: dict) -> Table:
    try:
        return table(name, keys)
    except _TableInvalid as e:
        raise _user_error(e.error, "python", e.table, e.kind) from None


class Config(Table):
    run: RunConfig = RunConfig()
    data: SerializeAsAny[DataTable] = Field(default_factory=lambda: table("data"))
    model: SerializeAsAny[ModelTable] = Field(default_factory=lambda: table("model"))
    objective: SerializeAsAny[ObjectiveTable] = Field(default_factory=lambda: table("objective"))
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    loop: LoopConfig = LoopConfig()
    sweep: SweepConfig = SweepConfig()  # read by `trainlab scaling sweep` only

    @model_validator(mode="before")
    @classmethod
    def _tables_by_kind(cls, raw):
        """Each of [model], [data], [objective] is validated by the class of its kind."""
        if not isinstance(raw, dict):
            return raw
        raw = dict(raw)
        for name in ("model", "data", "objective"):
            value = raw.get(name, {})
            if isinstance(value, dict):
                model = raw.get("model")
                raw[name] = table(name, value, model if isinstance(model, ModelTable) else "mlp")
        return raw

    @model_validator(mode="after")
    def _pairing(self):
        from trainlab import registry

        registry.check_pairing(self.model, self.objective.kind, self.data.source)
        return self

    def to_toml(self) -> str:
        tables = self.model_dump(mode="json", exclude_none=True)  # None: unset (TOML has no null)
        return tomli_w.dumps({k: v for k, v in tables.items() if v != {}})  # an unset [sweep] is left out


# ---------------------------------------------------------------------------------------------- recipes


def recipe_dirs() -> list[Path]:
    """Where bundled recipes live: inside the installed wheel, or at the top of a source checkout."""
    pkg = Path(__file__).resolve().parent
    return [d for d in (pkg / "recipes", pkg.parent / "recipes") if d.is_dir()]


def bundled_recipes() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in recipe_dirs():
        for p in sorted(d.glob("*.toml")):
            found.setdefault(p.stem, p)
    return found


DATA_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".txt": "text", ".md": "text", ".gz": "idx"}


def find_recipe(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix.lower() in DATA_SUFFIXES:  # a data file where the recipe goes: the usual first attempt
        source = DATA_SUFFIXES[p.suffix.lower()]
        base = {"csv": "digits-mlp", "idx": "digits-cnn"}.get(source, "stdlib-gpt")
        raise UserError(f"{name_or_path} looks like data, not a recipe (a TOML file or a bundled recipe's name)",
                        f"train a recipe on it: trainlab train {base} data.source={source} data.path={name_or_path}")
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise UserError(f"recipe file {name_or_path} does not exist",
                            "give the path of a TOML recipe or a bundled name (`trainlab recipes` lists them)")
        return p
    recipes = bundled_recipes()
    if name_or_path in recipes:
        return recipes[name_or_path]
    near = difflib.get_close_matches(name_or_path, list(recipes), n=1)
    raise UserError(f"no recipe named '{name_or_path}' and no such file",
                    f"did you mean '{near[0]}'?" if near else "`trainlab recipes` lists the bundled recipes")


def load_recipe(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    path = find_recipe(name_or_path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"recipe {path} is not valid TOML: {e}", "fix the line named above") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read recipe {path}: {e}", "check the file's permissions and encoding") from None
    if not overrides and all(isinstance(v, dict) and not v for v in raw.values()):
        raise UserError(f"recipe {path} is empty: it sets no key, so every default would be trained",
                        "fill in the recipe (`trainlab recipes NAME` prints a bundled one to start from)")
    raw.setdefault("run", {}).setdefault("name", path.stem)
    given = {}
    for item in overrides:
        given[apply_override(raw, item)] = item
    return validate(raw, source=str(path), overrides=given)


def parse_value(text: str) -> Any:
    """An override's value as TOML (`3`, `1e-3`, `true`, `[64, 32]`, `"x"`); anything else is a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(raw: dict, item: str) -> str:
    """Set `key.sub=value` in the raw recipe; returns the dotted key."""
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"override '{item}' is not of the form key.sub=value", "for example: optim.lr=3e-4")
    *tables, leaf = key.split(".")
    node = raw
    for t in tables:
        node = node.setdefault(t, {})
        if not isinstance(node, dict):
            raise UserError(f"override '{item}': '{t}' is a value, not a table", "check the dotted key")
    node[leaf] = parse_value(value.strip())
    return key


def flat(obj: BaseModel | dict, prefix: str = "") -> dict[str, Any]:
    """{"model.lora.rank": 8, ...}: every leaf key of a config (or of one table) with its value."""
    items = obj.model_dump(mode="json") if isinstance(obj, BaseModel) else obj
    out: dict[str, Any] = {}
    for k, v in items.items():
        if isinstance(v, dict) and v and not _is_mapping_field(prefix + k):
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _is_mapping_field(dotted: str) -> bool:
    return dotted in ("optim.lr_mult",)  # a table whose keys are the user's, not the schema's


def diff(a: Config, b: Config) -> list[str]:
    """The dotted keys whose values differ between two configs (tables of different kinds: every key)."""
    fa, fb = flat(a), flat(b)
    return [k for k in sorted(set(fa) | set(fb)) if fa.get(k, _MISSING) != fb.get(k, _MISSING)]


# Keys that say something other than how a run trains: where your own class came from (a script, a module) and
# the grid of `trainlab scaling sweep`. A run resumes with other values of them.
NOT_TRAINING = ("model.target", "objective.target", "sweep.")


def training_diff(a: Config, b: Config) -> list[str]:
    """diff(a, b) without the keys that do not change training (NOT_TRAINING)."""
    return [k for k in diff(a, b) if not k.startswith(NOT_TRAINING)]


_MISSING = object()


def table_keys(cls: type[BaseModel], prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, default, type) of every leaf key of a table class, nested tables expanded."""
    out = []
    for name, f in cls.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += table_keys(ann, f"{prefix}{name}.")
        else:
            default = f.get_default(call_default_factory=True)
            out.append((prefix + name, default, _type_name(ann)))
    return out


def key_comments(cls: type[BaseModel], prefix: str = "") -> dict[str, str]:
    """The comment of each key in the source of `cls` and its bases (beside the key, or the comment lines right
    above it), nested tables by their dotted key: the documentation `--keys` shows."""
    import inspect
    import re

    notes: dict[str, str] = {}
    for c in reversed(cls.__mro__):
        if not (isinstance(c, type) and issubclass(c, BaseModel)) or c is BaseModel:
            continue
        try:
            lines = inspect.getsource(c).splitlines()
        except (OSError, TypeError):
            continue
        above: list[str] = []
        for line in lines:
            if line.strip().startswith("#"):
                above.append(line.strip().lstrip("#").strip())
                continue
            m = re.match(r"\s+(\w+): [^#]*?(?:#\s*(.+))?$", line)
            if m and m.group(1) in cls.model_fields and (m.group(2) or above):
                notes[prefix + m.group(1)] = (m.group(2) or " ".join(above)).strip()
            above = []
    for name, f in cls.model_fields.items():
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
            notes.update(key_comments(f.annotation, f"{prefix}{name}."))
    return notes


def _type_name(ann) -> str:
    import typing

    import types

    if typing.get_origin(ann) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(ann))
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(ann))
    if typing.get_origin(ann) is typing.Annotated:  # PositiveInt and friends: the constraint reads as the type
        base, *marks = typing.get_args(ann)
        gt = next((f"{m.gt}" for m in marks if hasattr(m, "gt")), None)
        return f"{_type_name(base)} > {gt}" if gt is not None else _type_name(base)
    if typing.get_origin(ann) is not None:  # list[int], dict[str, float], tuple[float, float]
        args = ", ".join(_type_name(a) for a in typing.get_args(ann))
        return f"{typing.get_origin(ann).__name__}[{args}]"
    return getattr(ann, "__name__", str(ann)).replace("typing.", "")


def all_keys() -> list[str]:
    """Every valid dotted key of every kind (the tables by kind contribute the union of their kinds' keys)."""
    from trainlab import registry

    keys: set[str] = set()
    for name, cls in Config.model_fields.items():
        ann = cls.annotation
        if name in KIND_KEY:
            for e in registry.entries(REGISTRY_OF[name]).values():
                keys.update(f"{name}.{k}" for k, _, _ in table_keys(e.table))
        else:
            keys.update(f"{name}.{k}" for k, _, _ in table_keys(ann))
    return sorted(keys)


def validate(raw: dict, source: str = "recipe", overrides: dict[str, str] | None = None) -> Config:
    """The Config of a raw recipe. `overrides`: dotted key -> the command-line item that set it, so that an error
    in one names the command line rather than the recipe file."""
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise _user_error(e, source, overrides=overrides) from None
    except _TableInvalid as e:
        raise _user_error(e.error, source, e.table, e.kind, overrides) from None
    except UserError as e:  # an unknown kind, or a pairing that cannot work
        named = [item for key, item in (overrides or {}).items() if f"{key} = " in e.message]
        raise UserError(f"{_override_source(named[0]) if named else source}: {e.message}", e.hint) from None


def _override_source(item: str) -> str:
    return f"the command-line override '{item}'"


# Names other tools use for a key, and trainlab's: suggested when a recipe or override uses them.
ALIASES = {
    "learning_rate": "lr", "lr_rate": "lr", "wd": "weight_decay", "l2": "weight_decay", "optimizer": "name",
    "batch": "batch_size", "bs": "batch_size", "train_batch_size": "batch_size", "per_device_train_batch_size":
    "batch_size", "eval_batch": "eval_batch_size", "num_epochs": "epochs", "n_epochs": "epochs",
    "max_epochs": "epochs", "num_train_epochs": "epochs", "num_steps": "steps", "total_steps": "steps",
    "warmup": "warmup_steps", "num_warmup_steps": "warmup_steps", "scheduler": "name", "lr_scheduler": "name",
    "gradient_accumulation_steps": "grad_accum", "accumulate_grad_batches": "grad_accum",
    "max_grad_norm": "clip_grad_norm", "grad_clip": "clip_grad_norm", "gradient_clip_val": "clip_grad_norm",
    "eval_steps": "eval_every", "eval_interval": "eval_every", "logging_steps": "log_every",
    "log_interval": "log_every", "save_steps": "checkpoint_every", "early_stopping_patience": "patience",
    "num_threads": "threads", "n_threads": "threads", "dtype": "precision", "mixed_precision": "precision",
    "num_layers": "n_layer", "n_layers": "n_layer", "layers": "n_layer", "num_heads": "n_head", "n_heads": "n_head",
    "heads": "n_head", "hidden_size": "n_embd", "d_model": "n_embd", "embed_dim": "n_embd", "context_length":
    "block_size", "seq_len": "block_size", "max_seq_len": "block_size", "dropout_rate": "dropout",
    "label": "target", "label_column": "target", "target_column": "target", "data_path": "path", "file": "path",
}


def suggest(leaf: str, valid: list[str]) -> str | None:
    """The valid key a mistyped `leaf` most likely meant: a known alias, a close spelling, or the key that
    shares the most words with it (eval_steps -> eval_every)."""
    if ALIASES.get(leaf) in valid:
        return ALIASES[leaf]
    near = difflib.get_close_matches(leaf, valid, n=1, cutoff=0.6)
    if near:
        return near[0]
    words = set(leaf.lower().split("_"))
    scored = [(len(words & set(k.split("_"))), difflib.SequenceMatcher(None, leaf, k).ratio(), k) for k in valid]
    best = max(scored, default=(0, 0, None))
    return best[2] if best[0] else None


def _suggest_key(full: str) -> str | None:
    """The valid dotted key meant by `full`, an unknown key of a fixed table (optim.learning_rate), a bare key
    (lr) or a key under a table that does not exist (training.epochs, trainer.max_epochs)."""
    keys = all_keys()
    head, _, rest = full.partition(".")
    peers = [k.partition(".")[2] for k in keys if k.startswith(head + ".")]
    if rest and peers:
        m = suggest(rest, peers)
        return f"{head}.{m}" if m else None
    leaves = {k.rpartition(".")[2]: k for k in reversed(keys)}  # a leaf's name -> its first dotted key
    leaf = full.rpartition(".")[2]
    if ALIASES.get(leaf) in leaves:
        return leaves[ALIASES[leaf]]
    m = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.75)
    if m:
        return leaves[m[0]]
    m = difflib.get_close_matches(full, keys, n=1, cutoff=0.6)
    return m[0] if m else None


def _user_error(e: ValidationError, source: str, table: str = "", kind: str = "",
                overrides: dict[str, str] | None = None) -> UserError:
    from trainlab import registry

    err = e.errors()[0]
    key = ".".join([table] * bool(table) + [str(p) for p in err["loc"]])
    given = [item for k, item in (overrides or {}).items() if k == key or k.startswith(key + ".")]
    if given:  # the key (or, for an unknown table, a key under it) came from the command line
        source = _override_source(given[0])
    got = err.get("input")
    more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
    what = f" for {table}.{KIND_KEY[table]} = '{kind}'" if table else ""
    if err["type"] == "extra_forbidden":
        valid = [k for k, _, _ in table_keys(registry.get(REGISTRY_OF[table], kind).table)] if table else []
        leaf = key.split(".", 1)[1] if table else key
        if table:
            near = [m] if (m := suggest(leaf, valid)) else []
        else:  # a key of a fixed table (optim, loop, ...), or a table that does not exist
            full = next((k for k in (overrides or {}) if k == key or k.startswith(key + ".")), key)
            near = [m] if (m := _suggest_key(full)) else []
        owners = sorted(n for n, en in registry.entries(REGISTRY_OF[table]).items()
                        if leaf in {k for k, _, _ in table_keys(en.table)}) if table else []
        if near:
            hint = f"did you mean '{table + '.' if table else ''}{near[0]}'?"
        elif owners:
            hint = f"'{leaf}' is a key of {table}.{KIND_KEY[table]} = {' or '.join(map(repr, owners))}"
        else:
            hint = "`trainlab recipes --keys` lists every valid key"
        keys = f" (its keys: {', '.join(k for k in valid if k != KIND_KEY[table])})" if table else ""
        return UserError(f"{source}: unknown key '{key}'{what}{keys}{more}", hint)
    msg = err["msg"].removeprefix("Value error, ")
    if not err["loc"] and err["type"] == "value_error":  # a check across keys of one table
        return UserError(f"{source}: {msg}{more}", f"fix the [{table}] table" if table else "fix the recipe")
    if err["type"] == "missing":
        return UserError(f"{source}: '{key}' is required{what}{more}", f"set {key} in the recipe or with {key}=...")
    if err["type"] == "list_type":  # `data.ignore_columns=id`: a list needs TOML's brackets and quotes
        return UserError(f"{source}: '{key}' must be a list{what}; got {got!r}{more}",
                         f"write it as TOML: '{key}=[\"a\", \"b\"]' (quoted for the shell)"
                         if overrides and key in overrides else
                         f"write it as a TOML list in the recipe: {key.rsplit('.', 1)[-1]} = [\"a\", \"b\"]")
    return UserError(f"{source}: '{key}' {_expectation(msg)}{what}; got {got!r}{more}",
                     f"give {key}= a valid value" if overrides and key in overrides else
                     "fix the value in the recipe or override it with " + f"{key}=...")


def _expectation(msg: str) -> str:
    # pydantic says "Input should be greater than 0"; we say "must be greater than 0".
    for prefix in ("Input should be ", "Input should "):
        if msg.startswith(prefix):
            return "must be " + msg[len(prefix):] if prefix.endswith("be ") else "must " + msg[len(prefix):]
    return msg


def save(cfg: Config, path: Path) -> None:
    path.write_text(cfg.to_toml(), encoding="utf-8")


def load_resolved(path: Path) -> Config:
    """The fully resolved config.toml of a run folder (one written before the tables by kind is migrated)."""
    if not path.is_file():
        raise UserError(f"{path} does not exist", "is this a run folder written by `trainlab train`?")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid TOML: {e}", "the run folder is damaged; rerun the recipe") from None
    try:
        return validate(raw, source=str(path))
    except UserError as first:
        try:
            return validate(migrate(raw), source=str(path))
        except UserError:
            raise first from None


def migrate(raw: dict) -> dict:
    """A config.toml from before the tables by kind: [model], [data] and [objective] held every kind's keys
    (all written out with their defaults); keep the keys of the run's own kind, and name its objective."""
    from trainlab import registry

    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for name in ("model", "data", "objective"):
        if not isinstance(raw.get(name), dict):
            continue
        t = raw[name]
        kind = t.get(KIND_KEY[name], DEFAULT_KIND[name])
        if name == "objective":
            model_kind = raw.get("model", {}).get("kind", "mlp")
            kind = {"classification": "supervised", "regression": "supervised"}.get(kind, kind)
            if kind == "auto":
                kind = registry.get("model", model_kind).objective or "none"
            t[KIND_KEY[name]] = kind
        try:
            valid = {k.split(".")[0] for k, _, _ in table_keys(registry.get(REGISTRY_OF[name], kind).table)}
        except UserError:
            continue
        raw[name] = {k: v for k, v in t.items() if k in valid}
    return raw
