"""Models are plain nn.Modules. `build` makes one from a recipe's [model] table and the data's info (each kind
registers its builder in its own file: trainlab.registry); `load` rebuilds a trained one from a run's model/
folder (model.safetensors + config.json); `init_from` starts a model from a finished run's weights."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from trainlab import config, registry
from trainlab.errors import UserError, first_line


def build(cfg: config.ModelTable, info: dict) -> nn.Module:
    entry = registry.get("model", cfg.kind)
    if entry.fitted:
        raise UserError(f"model.kind = '{cfg.kind}' is fitted by scikit-learn, not built as a network",
                        "train it with `trainlab train`, which fits it directly")
    registry.check_data(cfg.kind, None, info)
    return entry.build(cfg, info)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once


def read_meta(model_dir: str | Path) -> dict:
    """config.json of a run's model/ folder: {"model": its [model] table, "info": the data's info, ...}."""
    d = Path(model_dir)
    if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
        raise UserError(f"{d} holds no trained model (model.safetensors + config.json)",
                        "train first, or give the run folder of a finished `trainlab train`")
    from trainlab import files

    meta = files.read_meta(d / "config.json").model_dump()
    try:
        table = config.table("model", meta["model"])
    except (config._TableInvalid, UserError):
        try:  # written before the tables by kind: keep the keys of its own kind
            table = config.table("model", config.migrate({"model": meta["model"]})["model"])
        except (UserError, config._TableInvalid):
            raise UserError(f"{d / 'config.json'} describes a model this trainlab cannot build "
                            f"(model.kind {meta['model'].get('kind')!r} with keys {sorted(meta['model'])})",
                            "restore the file from the run that wrote it, or retrain with this version") from None
    return {**meta, "table": table}


def load(model_dir: str | Path) -> tuple[nn.Module, dict]:
    """(model in eval mode, info) from a run's model/ folder; a classical model comes back as its
    trainlab.models.classical wrapper."""
    from trainlab.checkpoint import load_weights

    d = Path(model_dir)
    meta = read_meta(d)
    if registry.get("model", meta["table"].kind).fitted:
        from trainlab.models import classical

        return classical.load(d), meta["info"]
    try:
        model = build(meta["table"], meta["info"])
    except (KeyError, TypeError, ValueError, IndexError) as e:  # an info edited into something unbuildable
        raise UserError(f"{d / 'config.json'} is damaged: its model cannot be built from it ({first_line(e)})",
                        "restore the file from the run that wrote it, or retrain") from None
    try:
        load_weights(model, d / "model.safetensors")
    except ValueError as e:
        raise UserError(f"{d / 'model.safetensors'} does not fit the model its config.json describes ({e})",
                        "the file is damaged or belongs to another model; restore it or retrain") from None
    return model.eval(), meta["info"]



# ------------------------------------------------------------------------------------------ init_from


def init_source(run_dir: str) -> Path:
    """The model/ folder of `model.init_from` (a run folder, or its model/ folder itself)."""
    d = Path(run_dir)
    model_dir = d if (d / "config.json").is_file() and not (d / "model").is_dir() else d / "model"
    if not (model_dir / "config.json").is_file():
        raise UserError(f"model.init_from = '{run_dir}' holds no trained model ({model_dir}/config.json is missing)",
                        "give the folder of a finished `trainlab train` run")
    return model_dir


# The keys a recipe keeps when it starts from a finished run; every other [model] key is that run's.
_OWN_KEYS = ("init_from", "init_skip")


def resolve_init(cfg: config.Config, say=print) -> config.Config:
    """With model.init_from the model is the finished run's: its [model] table replaces the recipe's (except
    init_from and init_skip; a recipe value that differs is named in a note). Text data then uses that
    run's tokenizer unless data.tokenizer_path names one. The result is what config.toml records."""
    m = cfg.model
    if not getattr(m, "init_from", ""):
        return cfg
    meta = read_meta(init_source(m.init_from))
    base = meta["table"]
    if base.kind != m.kind:
        raise UserError(f"model.init_from = '{m.init_from}' holds a '{base.kind}' model; this recipe's model.kind is "
                        f"'{m.kind}'", f"set model.kind = '{base.kind}', or start from a run of a {m.kind}")
    ours = {k: getattr(m, k) for k in _OWN_KEYS if k in type(m).model_fields}
    merged = config.table("model", {**base.model_dump(), **ours})
    replaced = [f"{k} {getattr(m, k)!r} -> {getattr(merged, k)!r}" for k in m.model_fields_set
                if k not in _OWN_KEYS and getattr(m, k) != getattr(merged, k)]
    if replaced:
        say(f"model.init_from: the architecture of {m.init_from} replaces the recipe's ({'; '.join(replaced)})")
    update = {"model": merged}
    tok = init_source(m.init_from) / "tokenizer.json"
    if hasattr(cfg.data, "tokenizer_path") and not cfg.data.tokenizer_path and tok.is_file():
        kind = meta["info"].get("tokenizer", cfg.data.tokenizer)
        update["data"] = cfg.data.model_copy(update={"tokenizer_path": str(tok.resolve()), "tokenizer": kind})
    return cfg.model_copy(update=update)


def load_initial_weights(model: nn.Module, init_from: str, skip: list[str]) -> list[str]:
    """Load a finished run's weights into `model`: every tensor exactly, except those under the `skip` prefixes
    (left as initialized). Any other missing, extra or mis-shaped tensor is an error naming it. Returns the names
    of the tensors left fresh."""
    from safetensors.torch import load_file

    path = init_source(init_from) / "model.safetensors"
    try:
        saved = load_file(str(path))
    except Exception as e:
        raise UserError(f"{path} cannot be read ({first_line(e)})", "the file is damaged; retrain that run") from None
    own = model.state_dict()

    def skipped(name: str) -> bool:
        return any(name.startswith(p) for p in skip)

    fresh = sorted(k for k in own if skipped(k))
    unused = [p for p in skip if not any(k.startswith(p) for k in own)]
    if unused:
        raise UserError(f"model.init_skip names {unused}, which match no parameter of this model",
                        "use prefixes of parameter names, e.g. 'head' (its top-level modules: "
                        f"{sorted({k.split('.')[0] for k in own})})")
    # A tied tensor (GPT's head = embedding) is stored once in safetensors: compare on what the file holds.
    missing = [k for k in own if not skipped(k) and k not in saved and not _tied_elsewhere(model, k, saved)]
    extra = [k for k in saved if k not in own and not skipped(k)]
    shapes = [f"{k} {tuple(saved[k].shape)} -> {tuple(own[k].shape)}" for k in own
              if k in saved and not skipped(k) and saved[k].shape != own[k].shape]
    if missing or extra or shapes:
        parts = ([f"missing {missing[:4]}"] if missing else []) + ([f"unexpected {extra[:4]}"] if extra else []) \
            + ([f"shape changed: {'; '.join(shapes[:3])}"] if shapes else [])
        raise UserError(f"the weights of model.init_from = '{init_from}' do not fit this model: {', '.join(parts)}",
                        "give the changed parts (a new head) in model.init_skip, or match the architecture")
    keep = {k: v for k, v in saved.items() if not skipped(k)}
    model.load_state_dict({**{k: own[k] for k in fresh}, **keep}, strict=False)
    return fresh


def _tied_elsewhere(model: nn.Module, name: str, saved: dict) -> bool:
    """Whether parameter `name` shares storage with another parameter that the file holds."""
    params = dict(model.named_parameters(remove_duplicate=False))
    if name not in params:
        return False
    return any(other in saved and p is params[name] for other, p in params.items() if other != name)
