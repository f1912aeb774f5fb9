import pytest

from trainlab import config
from trainlab.errors import UserError


def test_bundled_recipe_loads_with_defaults_filled_in():
    cfg = config.load_recipe("digits-cnn")
    assert cfg.run.name == "digits-cnn"
    assert cfg.model.kind == "cnn"
    assert cfg.loop.grad_accum == 1  # a default the recipe does not set


def test_overrides_are_parsed_as_toml_values():
    cfg = config.load_recipe("digits-mlp", ["optim.lr=3e-4", "model.hidden=[32, 16]", "data.augment=true",
                                            "run.name=other", "loop.max_steps=20"])
    assert cfg.optim.lr == 3e-4 and cfg.model.hidden == [32, 16] and cfg.data.augment is True
    assert cfg.run.name == "other" and cfg.loop.max_steps == 20


def test_unknown_key_suggests_the_nearest_valid_key():
    with pytest.raises(UserError) as e:
        config.load_recipe("digits-mlp", ["optim.lrr=0.1"])
    assert "unknown key 'optim.lrr'" in e.value.message
    assert "optim.lr" in e.value.hint


def test_unknown_table_is_an_error():
    with pytest.raises(UserError, match="unknown key 'optimizer'"):
        config.validate({"optimizer": {"lr": 1}})


def test_out_of_range_value_names_key_expectation_and_value():
    with pytest.raises(UserError) as e:
        config.load_recipe("digits-mlp", ["optim.lr=-1"])
    assert "'optim.lr' must be greater than 0" in e.value.message and "got -1" in e.value.message


def test_wrong_type_names_key_and_value():
    with pytest.raises(UserError) as e:
        config.load_recipe("digits-mlp", ["loop.epochs=fast"])
    assert "'loop.epochs'" in e.value.message and "'fast'" in e.value.message


def test_wrong_choice_lists_the_choices():
    with pytest.raises(UserError) as e:
        config.load_recipe("digits-mlp", ["optim.name=adam"])
    assert "'optim.name'" in e.value.message and "'adamw'" in e.value.message


def test_bad_device_name():
    with pytest.raises(UserError, match="loop.device"):
        config.load_recipe("digits-mlp", ["loop.device=gpu"])


def test_malformed_override():
    with pytest.raises(UserError, match="key.sub=value"):
        config.load_recipe("digits-mlp", ["optim.lr"])


def test_missing_recipe_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        config.load_recipe(str(tmp_path / "nope.toml"))


def test_unknown_recipe_name_suggests_a_bundled_one():
    with pytest.raises(UserError) as e:
        config.load_recipe("digits-cn")
    assert "digits-cnn" in e.value.hint


def test_malformed_toml_names_the_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[optim\nlr = 1\n")
    with pytest.raises(UserError, match="not valid TOML"):
        config.load_recipe(str(p))


def test_resolved_config_round_trips_through_toml(tmp_path):
    cfg = config.load_recipe("digits-cnn", ["optim.lr=0.01"])
    config.save(cfg, tmp_path / "config.toml")
    assert config.load_resolved(tmp_path / "config.toml") == cfg


def test_every_bundled_recipe_validates():
    recipes = config.bundled_recipes()
    assert {"digits-cnn", "digits-mlp", "breast-cancer-mlp", "diabetes-mlp", "digits-overfit"} <= set(recipes)
    for name in recipes:
        assert config.load_recipe(name).run.description
