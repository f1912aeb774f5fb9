"""The platform's contracts: recipe tables by kind, nested tables, old run folders, starting from a trained
model (init_from, a new head, the tokenizer), learning-rate multipliers and freezing by name prefix."""

import json
from typing import Literal

import pytest
import torch
from pydantic import BaseModel, PositiveInt
from safetensors.torch import load_file
from torch import nn

from trainlab import config, loop, optim, registry
from trainlab.config import NetworkTable
from trainlab.errors import UserError
from tests.conftest import run_cli, tiny


# ------------------------------------------------------------------------------------------ tables by kind


def test_keys_of_another_kind_are_rejected_naming_the_kind():
    for override, owner in (("model.n_layer=48", "gpt"), ("objective.kl_weight=3", "elbo"),
                            ("data.vocab_size=99", None)):
        with pytest.raises(UserError) as e:
            config.load_recipe("digits-mlp", [override])
        key = override.split("=")[0]
        assert f"unknown key '{key}'" in e.value.message
        if owner:
            assert owner in e.value.hint
    with pytest.raises(UserError) as e:
        config.load_recipe("digits-mlp", ["model.n_layers=2"])
    assert "model.kind = 'mlp'" in e.value.message and "hidden" in e.value.message  # its keys are listed


def test_choices_are_those_of_the_kind_and_fail_before_any_data_is_read():
    for recipe, override in (("stdlib-gpt", "model.norm=batch"), ("digits-mlp", "model.norm=rms"),
                             ("digits-mlp", "model.activation=swiglu"), ("digits-cnn", "model.norm=rms")):
        with pytest.raises(UserError, match="'model.norm'|'model.activation'"):
            config.load_recipe(recipe, [override])
    gpt = config.model_table(kind="gpt")
    assert (gpt.norm, gpt.activation) == ("rms", "swiglu")  # a GPT's defaults fit a GPT
    with pytest.raises(UserError, match="heads of an even width"):
        config.model_table(kind="gpt", n_embd=30, n_head=4)
    with pytest.raises(UserError, match="model.hidden is not used by model.arch = 'conv'"):
        config.load_recipe("digits-vae", ["model.hidden=[64]"])


def test_pairings_are_checked_by_capabilities():
    with pytest.raises(UserError, match="needs a model that gives latent_distribution"):
        config.load_recipe("digits-mlp", ["objective.kind=elbo"])
    with pytest.raises(UserError, match="model.kind = 'gpt' needs .*tokens; data.source = 'digits' gives"):
        config.validate({"model": {"kind": "gpt"}, "data": {"source": "digits"}})
    with pytest.raises(UserError, match="model.kind = 'cnn' needs images"):
        config.validate({"model": {"kind": "cnn"}, "data": {"source": "breast_cancer"}})
    with pytest.raises(UserError, match="not a registered model") as e:
        config.validate({"model": {"kind": "mpl"}})
    assert "did you mean 'mlp'" in e.value.hint


class Adapter(BaseModel):
    model_config = {"extra": "forbid"}
    rank: PositiveInt = 4
    alpha: float = 8.0


class NestedConfig(NetworkTable):
    kind: Literal["nested-test"] = "nested-test"
    width: PositiveInt = 8
    adapter: Adapter = Adapter()


@registry.model("nested-test", NestedConfig, consumes={"features"}, produces={"predictions"}, objective="supervised")
def _build_nested(cfg, info):
    """A test kind with a nested table."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, cfg.width), nn.ReLU(), nn.Linear(cfg.width, info["num_classes"]))


def test_nested_tables_in_toml_overrides_keys_and_resume(tmp_path):
    recipe = tmp_path / "n.toml"
    recipe.write_text('[model]\nkind = "nested-test"\n[model.adapter]\nrank = 2\n[loop]\nsteps = 4\neval_every = 2\n')
    cfg = config.load_recipe(str(recipe), ["model.adapter.alpha=4.0"])
    assert cfg.model.adapter.rank == 2 and cfg.model.adapter.alpha == 4.0
    assert "model.adapter.rank" in config.all_keys()
    with pytest.raises(UserError, match="unknown key 'model.adapter.rnak'.*"):
        config.load_recipe(str(recipe), ["model.adapter.rnak=3"])
    loop.train(cfg, tmp_path / "r")
    saved = config.load_resolved(tmp_path / "r" / "config.toml")
    assert saved.model == cfg.model and config.diff(saved, cfg) == ["loop.checkpoint_every"]  # a derived value
    other = config.load_recipe(str(recipe), ["model.adapter.alpha=4.0", "model.adapter.rank=3"])
    assert config.diff(cfg, other) == ["model.adapter.rank"]
    with pytest.raises(UserError, match="model.adapter.rank"):
        loop.train(other, tmp_path / "r", resume=True)


def test_a_config_toml_from_before_the_tables_by_kind_still_loads(tmp_path):
    old = {"run": {"name": "x"}, "data": {"source": "digits", "vocab_size": 4096, "augment": False, "path": ""},
           "model": {"kind": "mlp", "hidden": [16], "n_layer": 4, "norm": "batch", "eps": 0.5},
           "objective": {"kind": "auto", "kl_weight": 1.0, "label_smoothing": 0.0}}
    import tomli_w

    (tmp_path / "config.toml").write_text(tomli_w.dumps(old))
    cfg = config.load_resolved(tmp_path / "config.toml")
    assert cfg.model.hidden == [16] and cfg.objective.kind == "supervised"


def test_keys_listing_shows_kinds_types_and_comments():
    r = run_cli("recipes", "--keys")
    assert r.returncode == 0
    assert '[model] kind = "gpt"' in r.stdout and "model.n_layer = 4  (int)  # Transformer blocks" in r.stdout
    assert "optim.lr = 0.001" in r.stdout and "loop.max_steps = 0" in r.stdout


# ------------------------------------------------------------------------------------------ starting from a run


def test_init_from_a_run_with_a_new_head(tmp_path):
    base = tmp_path / "base"
    loop.train(tiny("digits-mlp", "model.norm=none"), base)  # hidden [256, 128], 10 classes
    saved = load_file(base / "model" / "model.safetensors")
    # Another table (30 features, 2 classes): the first layer and the head change shape, and are named.
    args = ["data.source=breast_cancer", f"model.init_from={base}", "loop.max_steps=1"]
    with pytest.raises(UserError, match=r"shape changed: body.1.weight \(256, 64\) -> \(256, 30\)"):
        loop.train(config.load_recipe("digits-mlp", args), tmp_path / "a")
    # Keys the recipe does not set come from the finished run (here: hidden and norm).
    cfg = config.validate({"model": {"kind": "mlp", "init_from": str(base), "init_skip": ["head"]},
                           "optim": {"freeze": ["body"]}, "loop": {"max_steps": 3, "eval_every": 3}})
    assert cfg.model.hidden == [128]  # the default, until the run resolves init_from
    s = loop.train(cfg, tmp_path / "c")
    resolved = config.load_resolved(tmp_path / "c" / "config.toml")
    assert resolved.model.hidden == [256, 128] and resolved.model.norm == "none"
    assert resolved.model.init_from == str(base) and s["init_from"] == str(base)  # where it started
    after = load_file(tmp_path / "c" / "model" / "model.safetensors")
    for k in saved:
        assert torch.equal(saved[k], after[k]) == k.startswith("body"), k  # frozen trunk kept; new head trained


def test_init_from_a_language_model_reuses_its_tokenizer(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat. " * 400)
    args = ["data.source=text", f"data.path={text}", "data.tokenizer=char", "data.block_size=16",
            f"data.cache_dir={tmp_path / 'cache'}", "model.n_layer=1", "model.n_embd=16", "model.n_head=2",
            "loop.steps=4", "loop.eval_every=2", "data.split=tail"]
    loop.train(config.load_recipe("stdlib-gpt", args), tmp_path / "pre")
    other = tmp_path / "o.txt"
    other.write_text("the mat sat on the cat. " * 300)
    ft = ["data.source=text", f"data.path={other}", "data.block_size=16", f"data.cache_dir={tmp_path / 'cache'}",
          f"model.init_from={tmp_path / 'pre'}", "loop.steps=2", "loop.eval_every=2", "data.split=tail"]
    loop.train(config.load_recipe("stdlib-gpt", ft), tmp_path / "ft")
    resolved = config.load_resolved(tmp_path / "ft" / "config.toml")
    assert resolved.data.tokenizer_path.endswith("tokenizer.json") and resolved.data.tokenizer == "char"
    assert resolved.model.n_embd == 16
    a = json.loads((tmp_path / "pre/model/tokenizer.json").read_text())
    b = json.loads((tmp_path / "ft/model/tokenizer.json").read_text())
    assert a == b  # the same vocabulary, not one trained on the new text


def test_init_from_something_that_is_not_a_run():
    with pytest.raises(UserError, match="holds no trained model"):
        loop.train(config.load_recipe("digits-mlp", ["model.init_from=/nonexistent"]), None)


# ------------------------------------------------------------------------------------------ optimizer groups


def test_lr_multipliers_by_longest_prefix_and_schedule():
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    opt = optim.build_optimizer(config.OptimConfig(lr=0.1, lr_mult={"1": 10.0, "1.bias": 0.5}), model)
    optim.set_lr(opt, 0.01)
    by_param = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert by_param[id(model[0].weight)] == pytest.approx(0.01)
    assert by_param[id(model[1].weight)] == pytest.approx(0.1)
    assert by_param[id(model[1].bias)] == pytest.approx(0.005)
    with pytest.raises(UserError, match="match no parameter"):
        optim.build_optimizer(config.OptimConfig(lr_mult={"encoder": 2.0}), model)


def test_freezing_everything_or_nothing_is_an_error():
    with pytest.raises(UserError, match="nothing would train"):
        loop.freeze(nn.Linear(2, 2), ["weight", "bias"])
    with pytest.raises(UserError, match="match no parameter"):
        loop.freeze(nn.Linear(2, 2), ["head"])
