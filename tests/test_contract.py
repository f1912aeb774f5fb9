"""One contract over every registered model kind, objective and data source (scikit-learn's common checks are
the model): each builds from its defaults, runs steps through the loop, resumes exactly after an interruption,
and rejects a key that belongs to another kind. A kind added later is covered without a new test."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from trainlab import config, data as data_lib, loop, registry
from trainlab.errors import UserError
from tests.conftest import train_killed_after


def write_sources(root) -> dict[str, dict]:
    """A small data table for every built-in source (files written here; nothing downloaded)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    csv = root / "t.csv"
    csv.write_text("a,b,c,label\n" + "".join(f"{rng.normal():.3f},{rng.normal():.3f},{rng.normal():.3f},{i % 3}\n"
                                               for i in range(90)))
    for k in range(2):
        (root / "img" / f"c{k}").mkdir(parents=True, exist_ok=True)
        for i in range(20):
            Image.fromarray(rng.integers(0, 255, (10, 10), dtype=np.uint8)).save(root / "img" / f"c{k}" / f"{i}.png")
    x = rng.integers(0, 255, (60, 6, 6), dtype=np.uint8)
    y = (np.arange(60) % 4).astype(np.uint8)
    for name, arr in (("x.idx", x), ("y.idx", y)):
        header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        (root / name).write_bytes(header + arr.tobytes())
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    docs = [" ".join(rng.choice(words, 120)) for _ in range(12)]
    (root / "text").mkdir(exist_ok=True)
    for i, d in enumerate(docs):
        (root / "text" / f"{i}.txt").write_text(d)
    (root / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    (root / "labelled.jsonl").write_text("".join(json.dumps({"text": d[:80], "label": ["a", "b"][i % 2]}) + "\n"
                                                 for i, d in enumerate(docs * 4)))
    from datasets import Dataset

    Dataset.from_dict({"text": docs}).save_to_disk(str(root / "hf"))
    text = {"tokenizer": "char", "block_size": 16, "batch_size": 4, "eval_batch_size": 8,
            "cache_dir": str(root / "cache")}
    return {
        "digits": {"subset": 200}, "breast_cancer": {}, "diabetes": {},
        "csv": {"path": str(csv)}, "image_folder": {"path": str(root / "img"), "image_size": 8},
        "idx": {"path": str(root / "x.idx"), "labels_path": str(root / "y.idx")},
        "stdlib": {**text, "max_bytes": 400_000, "split": "tail"}, "text": {**text, "path": str(root / "text")},
        "jsonl": {**text, "path": str(root / "d.jsonl")}, "hf_disk": {**text, "path": str(root / "hf")},
        "stdlib_classes": {**text, "packages": ["email", "json"]},
        "jsonl_classes": {**text, "path": str(root / "labelled.jsonl")},
    }


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return write_sources(tmp_path_factory.mktemp("sources"))


def test_every_builtin_kind_is_registered():
    assert {"mlp", "cnn", "autoencoder", "vae", "gpt", "kmeans", "dbscan", "pca", "tsne", "umap"} <= set(
        registry.entries("model"))
    assert {"supervised", "reconstruction", "elbo", "next_token"} <= set(registry.entries("objective"))
    assert set(registry.entries("source")) >= {"digits", "csv", "stdlib", "hf_disk"}


@pytest.mark.parametrize("source", sorted(registry.entries("source")))
def test_every_source_builds_streams_validates_and_resumes(source, sources, tmp_path):
    if source not in sources:
        pytest.skip(f"no test data for a source registered outside trainlab: {source}")
    cfg = config.table("data", {"source": source, **sources[source]})
    d = data_lib.build(cfg)
    assert d.batch_size > 0 and d.batches_per_epoch > 0 and d.info["split_sizes"]["train"] > 0
    assert registry.data_capabilities(d.info) & {"features", "tokens"}
    from trainlab.distributed import plan

    p = plan(d.batch_size, 1, 1, 0)
    a = d.stream(0, None, p)
    a.next_step()
    b = d.stream(0, None, p)
    b.load_state_dict(a.state_dict())
    for x, y in zip(a.next_step(), b.next_step()):
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert a.on_step(1, {}) == {}
    assert next(iter(d.eval_batches("val", 1)))
    d.export(tmp_path)  # files the model needs beside its weights (a tokenizer for text)


def _other_key(what: str, name: str) -> str:
    """A key of another kind of the same table that this kind does not have."""
    own = {k for k, _, _ in config.table_keys(registry.get(what, name).table)}
    for other, e in sorted(registry.entries(what).items()):
        extra = sorted({k for k, _, _ in config.table_keys(e.table)} - own)
        if extra:
            return extra[0]
    raise AssertionError(f"every {what} has the keys of {name}")


@pytest.mark.parametrize("what,name", [(w, n) for w in ("model", "objective", "source")
                                       for n in sorted(registry.entries(w)) if n != "none"])
def test_every_kind_rejects_a_key_of_another_kind(what, name):
    table = {"source": "data"}.get(what, what)
    key = _other_key(what, name)
    raw = {table: {config.KIND_KEY[table]: name, key: 1}}
    if what == "objective":  # an objective is paired with a model that gives what it needs
        model = next(m for m, e in sorted(registry.entries("model").items())
                     if registry.get("objective", name).needs <= e.produces and not e.fitted)
        raw["model"] = {"kind": model}
        raw["data"] = {"source": "stdlib" if model == "gpt" else "digits"}
    elif what == "model" and "tokens" in registry.get("model", name).consumes:
        raw["data"] = {"source": "stdlib"}
    with pytest.raises(UserError) as e:
        config.validate(raw)
    assert f"unknown key '{table}.{key}'" in e.value.message and f"= '{name}'" in e.value.message


# "module" is the user's own nn.Module (trainlab.train(model=...)): tests/test_api.py trains and resumes one.
TRAINABLE = sorted(n for n, e in registry.entries("model").items() if not e.fitted and n != "module")


# Agents act in an environment: the smallest runs of the two environment sources.
AGENT_DATA = {
    "gym": {"source": "gym", "env": "CartPole-v1", "num_envs": 2, "rollout_steps": 8, "epochs_per_rollout": 1,
            "batch_size": 16, "eval_episodes": 1},
    "gym_replay": {"source": "gym_replay", "env": "CartPole-v1", "learning_starts": 16, "train_freq": 8,
                   "gradient_steps": 2, "batch_size": 8, "buffer_size": 64, "target_update_interval": 2,
                   "eval_episodes": 1},
    "selfplay": {"source": "selfplay", "game": "tictactoe", "games_per_iteration": 4, "simulations": 4,
                 "steps_per_iteration": 3, "eval_games": 2, "batch_size": 16},
}


def _tiny(kind: str, sources) -> config.Config:
    consumes = registry.get("model", kind).consumes
    tokens = "tokens" in consumes
    data = {"source": "text", **sources["text"]} if tokens else {"source": "digits", **sources["digits"],
                                                                  "batch_size": 32}
    if "observations" in consumes:
        data = AGENT_DATA["gym" if kind == "actor_critic" else "gym_replay"]
    if "boards" in consumes:
        data = AGENT_DATA["selfplay"]
    model = {"kind": kind}
    if kind == "gpt":
        model.update(n_layer=1, n_embd=16, n_head=2)
    looped = {"steps": 6, "eval_every": 3, "log_every": 2, "eval_batches": 2}
    if data is AGENT_DATA.get(data.get("source")):  # validation plays episodes or games: there is no loss
        looped.update(monitor="score_vs_random" if "boards" in consumes else "episode_return", monitor_mode="max")
    return config.validate({"data": data, "model": model, "loop": looped})


@pytest.mark.parametrize("kind", TRAINABLE)
def test_every_trainable_kind_builds_from_defaults_and_resumes_exactly(kind, sources, tmp_path, monkeypatch):
    cfg = _tiny(kind, sources)
    full = loop.train(cfg, tmp_path / "full")
    assert full["status"] == "completed" and full["steps"] == 6

    train_killed_after(cfg, tmp_path / "cut", 3, monkeypatch)
    resumed = loop.train(cfg, tmp_path / "cut", resume=True)

    a, b = (load_file(tmp_path / d / "model/model.safetensors") for d in ("full", "cut"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def rows(d):
        return [{k: v for k, v in json.loads(line).items()  # not the clock's readings: time, rates, seconds
                 if k not in ("time", "throughput", "sps") and not k.endswith(("_s", "_per_s"))}
                for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]

    assert rows("full") == rows("cut")
    assert resumed["metrics"]["val"] == full["metrics"]["val"]
