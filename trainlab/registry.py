"""Registries: every model kind, objective and data source is one entry, declared in its own file.

    @registry.model("mlp", MLPConfig, consumes={"features"}, produces={"predictions"}, objective="supervised")
    def build(cfg: MLPConfig, info: dict) -> nn.Module: ...

    @registry.objective("elbo", ELBOConfig, needs={"latent_distribution"})
    def build(cfg: ELBOConfig, info: dict) -> Objective: ...

    @registry.source("csv", CSVData, provides={"features", "labels?"})
    def build(cfg: CSVData) -> Data: ...

A recipe's `[model] kind`, `[objective] kind` and `[data] source` pick an entry; its table class declares the
keys, their defaults and cross-key checks (a pydantic model). Adding a kind is one new module that registers
itself: built-in modules are listed in BUILTIN and imported on first use; a user's own module registers by being
imported before the recipe is validated (`trainlab.train(..., model=...)` or `import mymodule`).

Pairings are checked by capabilities, not by names:
  - a source `provides` what its batches hold: "features" (arrays), "images" (C, H, W arrays), "tokens",
    "labels" ("labels?" when the data decides: a CSV with or without a target);
  - a model `consumes` one of those and `produces` outputs: "predictions" (one vector per example),
    "codes"/"reconstruction"/"latent_distribution" (autoencoders), "token_logits"/"hidden_states" (a GPT),
    "masked_token_logits" (an encoder's masked-LM head), "scores" (a reward model), "values" (a value head);
    post-training sources provide "conversations", "preferences" or "prompts" (generated during training);
  - an objective `needs` model outputs, and `data_needs` what the batches must carry.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass
from typing import Callable

from trainlab.errors import UserError

BUILTIN = (
    "trainlab.models.mlp", "trainlab.models.cnn", "trainlab.models.autoencoder", "trainlab.models.classical",
    "trainlab.models.gpt", "trainlab.models.encoder", "trainlab.models.module",
    "trainlab.objectives.supervised", "trainlab.objectives.unsupervised", "trainlab.objectives.next_token",
    "trainlab.objectives.masked_lm", "trainlab.objectives.sft", "trainlab.objectives.reward",
    "trainlab.objectives.dpo", "trainlab.objectives.ppo", "trainlab.objectives.grpo",
    "trainlab.data.bundled", "trainlab.data.tabular", "trainlab.data.images", "trainlab.data.text",
    "trainlab.data.text_classes", "trainlab.data.dialogues", "trainlab.data.rollouts",
    "trainlab.rl.agents", "trainlab.rl.ppo", "trainlab.rl.rollouts", "trainlab.rl.dqn", "trainlab.rl.replay",
    "trainlab.rl.alphazero", "trainlab.rl.selfplay",
)


@dataclass
class Entry:
    what: str  # "model", "objective" or "source"
    name: str
    table: type  # the pydantic class of its recipe table
    build: Callable
    consumes: frozenset[str] = frozenset()  # models: the data they take (any one of these)
    produces: frozenset[str] = frozenset()  # models: their outputs; sources: what their batches hold
    needs: frozenset[str] = frozenset()  # objectives: model outputs they use
    data_needs: frozenset[str] = frozenset()  # objectives: what the data must provide
    refuses: frozenset[str] = frozenset()  # objectives: data they cannot train on (language models: labelled text)
    objective: str = ""  # models: the objective `kind = "auto"` means
    fitted: bool = False  # models fitted in one call (scikit-learn), not by the training loop
    doc: str = ""


_ENTRIES: dict[str, dict[str, Entry]] = {"model": {}, "objective": {}, "source": {}}
_loaded = False


def _register(entry: Entry) -> None:
    # Re-registering a name replaces it (a module reloaded in a notebook, a test's own kind).
    _ENTRIES[entry.what][entry.name] = entry


def model(name: str, table: type, *, consumes: set[str], produces: set[str] = frozenset(), objective: str = "",
          fitted: bool = False):
    def deco(build: Callable) -> Callable:
        _register(Entry("model", name, table, build, consumes=frozenset(consumes), produces=frozenset(produces),
                        objective=objective, fitted=fitted, doc=(build.__doc__ or "").strip().split("\n")[0]))
        return build
    return deco


def objective(name: str, table: type, *, needs: set[str] = frozenset(), data_needs: set[str] = frozenset(),
              refuses: set[str] = frozenset()):
    def deco(build: Callable) -> Callable:
        _register(Entry("objective", name, table, build, needs=frozenset(needs), data_needs=frozenset(data_needs),
                        refuses=frozenset(refuses), doc=(build.__doc__ or "").strip().split("\n")[0]))
        return build
    return deco


def source(name: str, table: type, *, provides: set[str]):
    def deco(build: Callable) -> Callable:
        _register(Entry("source", name, table, build, produces=frozenset(provides),
                        doc=(build.__doc__ or "").strip().split("\n")[0]))
        return build
    return deco


def entries(what: str) -> dict[str, Entry]:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN:
            importlib.import_module(module)
    return _ENTRIES[what]


KEY = {"model": "model.kind", "objective": "objective.kind", "source": "data.source"}


def get(what: str, name: str) -> Entry:
    found = entries(what)
    if not isinstance(name, str):
        raise UserError(f"{KEY[what]} must be a string naming a registered {what}; got {name!r}"[:200],
                        f"set {KEY[what]} to one of {', '.join(sorted(found))}")
    if name in found:
        return found[name]
    near = difflib.get_close_matches(str(name), list(found), n=1)
    raise UserError(f"{KEY[what]} = {name!r} is not a registered {what}; the {what}s are {', '.join(sorted(found))}",
                    f"did you mean '{near[0]}'?" if near else f"set {KEY[what]} to one of them")


# ------------------------------------------------------------------------------------------ pairings


def outputs(model) -> frozenset[str]:
    """What a model gives: its kind's `produces`, or, when its table has an `outputs()` method, what this
    configuration of the kind gives (a GPT with `head = "classify"` gives predictions, not token logits)."""
    if isinstance(model, str):
        return get("model", model).produces
    return frozenset(model.outputs()) if hasattr(model, "outputs") else get("model", model.kind).produces


def own_objective(model) -> str:
    """The objective `objective.kind = "auto"` means for a model kind (or a model table: its `own_objective()`)."""
    if not isinstance(model, str) and hasattr(model, "own_objective"):
        return model.own_objective()
    return get("model", model if isinstance(model, str) else model.kind).objective or "none"


def check_pairing(model, objective_kind: str, source_name: str) -> None:
    """What the recipe alone decides: the model can read the source's batches and the objective can use the
    model's outputs. What depends on the data's content (labels in a CSV) is checked by `check_data`.
    `model`: a model kind, or its validated table (whose configuration may decide its outputs)."""
    model_kind = model if isinstance(model, str) else model.kind
    m, s = get("model", model_kind), get("source", source_name)
    produces = outputs(model)
    provides = {p.rstrip("?") for p in s.produces}
    if not m.consumes & provides:
        fits = sorted(n for n, e in entries("source").items() if m.consumes & {p.rstrip("?") for p in e.produces})
        raise UserError(f"model.kind = '{model_kind}' needs {' or '.join(sorted(m.consumes))}; data.source = "
                        f"'{source_name}' gives {', '.join(sorted(provides))}",
                        f"pair {model_kind} with data.source in {fits}" if fits else "choose another model.kind")
    if m.fitted:
        return
    o = get("objective", objective_kind)
    if not o.needs <= produces:
        fits = sorted(n for n, e in entries("objective").items() if e.needs <= produces and e.needs)
        head = " (with model.head = '%s')" % model.head if hasattr(model, "head") else ""
        hint = f"use objective.kind in {['auto', *fits]}" + (" or another model.head" if head else "")
        if o.needs - produces == {"values"} and hasattr(model, "value_head"):
            hint = "set model.value_head = true (a value head beside the policy's)"
        raise UserError(f"objective.kind = '{objective_kind}' needs a model that gives "
                        f"{', '.join(sorted(o.needs - produces))}; model.kind = '{model_kind}'{head} gives "
                        f"{', '.join(sorted(produces))}", hint)
    missing = {n for n in o.data_needs if n not in provides}
    _refused(objective_kind, o, {p for p in s.produces if not p.endswith("?")}, f"data.source = '{source_name}'")
    if missing:
        raise UserError(f"objective.kind = '{objective_kind}' needs data with {', '.join(sorted(missing))}; "
                        f"data.source = '{source_name}' gives {', '.join(sorted(provides))}",
                        "choose a source that provides them, or another objective")


def data_capabilities(info: dict) -> set[str]:
    """What a built data set actually holds (a CSV decides whether it has labels only once it is read)."""
    if "capabilities" in info:  # a source may say it outright
        return set(info["capabilities"])
    if info.get("task") == "language_modeling":
        return {"tokens"}
    caps = {"features"}
    if len(info.get("input_shape", [])) == 3:
        caps.add("images")
    if info.get("task") in ("classification", "regression"):
        caps.add("labels")
    return caps


def _refused(objective_kind: str, o: Entry, caps: set[str], what: str) -> None:
    """Labelled text (rows of tokens with a class each) is not running text: a language-model objective on it
    would read batches it does not have."""
    if o.refuses & caps:
        raise UserError(f"objective.kind = '{objective_kind}' trains on running text; {what} gives labelled "
                        f"examples ({', '.join(sorted(o.refuses & caps))})", "set model.head = 'classify' "
                        "(objective.kind = 'supervised'), or use a text corpus (data.source = 'stdlib', 'text', ...)")


def check_data(model_kind: str, objective_kind: str | None, info: dict) -> None:
    caps = data_capabilities(info)
    m = get("model", model_kind)
    if not m.consumes & caps:
        raise UserError(f"model.kind = '{model_kind}' needs {' or '.join(sorted(m.consumes))}; this data has "
                        f"inputs of shape {info.get('input_shape')} ({', '.join(sorted(caps))})",
                        "use model.kind = 'mlp' for tabular data" if "images" in m.consumes else
                        "choose a model for this data")
    if objective_kind is None:
        return
    o = get("objective", objective_kind)
    _refused(objective_kind, o, caps, "this data")
    missing = o.data_needs - caps
    if missing == {"labels"}:
        raise UserError(f"objective.kind = '{objective_kind}' needs labels, but the data is '{info.get('task')}'",
                        "use an unsupervised model (autoencoder, vae, kmeans, ...) or give a target column")
    if missing:
        raise UserError(f"objective.kind = '{objective_kind}' needs data with {', '.join(sorted(missing))}; this "
                        f"data has {', '.join(sorted(caps))}", "choose another objective or data source")


def fitted(model_kind: str) -> bool:
    """Fitted in one call (scikit-learn), not trained by the loop."""
    return get("model", model_kind).fitted


def unsupervised(model_kind: str) -> bool:
    """Learns a representation without labels (clusters, embeddings, codes): evaluated as such."""
    return "codes" in get("model", model_kind).produces
