"""Everyday use: the Python API (train your own nn.Module, load a run and predict), `trainlab predict`,
threads, progress, extending a finished run, recipes that explain themselves."""

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn

import trainlab
from tests.conftest import run_cli
from trainlab import config, loop, runs
from trainlab.errors import UserError

SHORT = ["loop.max_steps=12", "loop.eval_every=4", "loop.log_every=4"]


class Net(nn.Module):
    """A user's own module: not a trainlab kind."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU())
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        return self.head(self.body(x))


def test_your_own_module_trains_resumes_exactly_and_loads(tmp_path):
    torch.manual_seed(0)
    full = trainlab.train("digits-mlp", SHORT, model=Net(), run_dir=tmp_path / "full")
    assert full["status"] == "completed" and full["run_dir"] == str(tmp_path / "full")
    saved = config.load_resolved(tmp_path / "full" / "config.toml")
    assert saved.model.kind == "module" and saved.model.target.endswith(":Net")

    # The same run killed after its checkpoint of step 8, resumed with a fresh instance: the same weights.
    from tests.conftest import Killed
    from trainlab import checkpoint

    real = checkpoint.commit

    def commit_then_die(root, tmp, at, links):
        out = real(root, tmp, at, links)
        if at == 8:
            raise Killed()
        return out

    checkpoint.commit = commit_then_die
    try:
        with pytest.raises(Killed):
            trainlab.train("digits-mlp", SHORT, model=Net(), run_dir=tmp_path / "killed")
    finally:
        checkpoint.commit = real
        runs.unlock(tmp_path / "killed")
    resumed = trainlab.train("digits-mlp", SHORT, model=Net(), run_dir=tmp_path / "killed", resume=True)
    assert resumed["metrics"]["val"] == full["metrics"]["val"]

    a = trainlab.load(tmp_path / "full", model=Net()).model.state_dict()
    b = trainlab.load(tmp_path / "killed", model=Net()).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(UserError, match="your own nn.Module"):
        trainlab.load(tmp_path / "full")  # trainlab cannot construct the class by itself
    with pytest.raises(UserError, match="does not fit the weights"):
        trainlab.load(tmp_path / "full", model=Net(width=8))


def test_your_own_objective_as_a_function(tmp_path):
    def loss(model, batch):
        out = model(batch["x"])
        return nn.functional.cross_entropy(out, batch["y"]), {"hits": (out.argmax(-1) == batch["y"]).float().mean()}

    s = trainlab.train("digits-mlp", [*SHORT, "loop.monitor=hits", "loop.monitor_mode=max"], model=Net(),
                       objective=loss, run_dir=tmp_path / "r")
    assert set(s["metrics"]["val"]) == {"loss", "hits"}
    assert config.load_resolved(tmp_path / "r" / "config.toml").objective.kind == "custom"


@pytest.fixture(scope="module")
def wine(tmp_path_factory):
    """A CSV classifier trained through the command line, with a string id column left out."""
    d = tmp_path_factory.mktemp("wine")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(180):
        k = i % 3
        rows.append([f"id{i}", *(rng.normal(k * 2.0, 1.0, 4).round(3)), ["red", "white", "rose"][k]])
    with (d / "wine.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "a", "b", "c", "d", "kind"])
        w.writerows(rows)
    r = run_cli("train", "digits-mlp", "data.source=csv", f"data.path={d / 'wine.csv'}", "data.target=kind",
                'data.ignore_columns=["id"]', "loop.max_steps=60", "--run-dir", str(d / "run"))
    assert r.returncode == 0, r.stderr
    return d


def test_predict_on_a_csv_with_the_training_preprocessing(wine, tmp_path):
    p = trainlab.load(wine / "run")
    assert p.class_names == ["red", "rose", "white"]
    got = p.predict(wine / "wine.csv")  # columns picked by name: id and the target are ignored
    truth = [r["kind"] for r in csv.DictReader((wine / "wine.csv").open())]
    assert (np.asarray(got) == np.asarray(truth)).mean() > 0.9
    proba = p.predict_proba([{"a": 4.0, "b": 4.0, "c": 4.0, "d": 4.0}])
    assert proba.shape == (1, 3) and abs(proba.sum() - 1) < 1e-5 and p.class_names[proba.argmax()] == "rose"  # rose rows sit at 4

    r = run_cli("predict", str(wine / "run"), str(wine / "wine.csv"), "--out", str(tmp_path / "out.csv"))
    assert r.returncode == 0, r.stderr
    out = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert len(out) == 180 and out[0]["input"] == "wine.csv:2" and set(out[0]) == {
        "input", "prediction", "p_red", "p_rose", "p_white"}
    assert [o["prediction"] for o in out] == list(got)


def test_predict_on_an_image_folder(tmp_path):
    from PIL import Image

    root = tmp_path / "shapes"
    rng = np.random.default_rng(0)
    for name, value in (("dark", 30), ("light", 220)):
        (root / name).mkdir(parents=True)
        for i in range(24):
            a = np.clip(rng.normal(value, 20, (12, 12)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(root / name / f"{i}.png")
    r = run_cli("train", "digits-cnn", "data.source=image_folder", f"data.path={root}", "data.image_size=8",
                "loop.max_steps=30", "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    r = run_cli("predict", str(tmp_path / "run"), str(root / "light"))
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(r.stdout.splitlines()))
    assert len(rows) == 24 and all(row["prediction"] == "light" for row in rows)
    p = trainlab.load(tmp_path / "run")
    img = Image.open(root / "dark" / "0.png")
    assert list(p.predict(img)) == ["dark"] and list(p.predict([str(root / "dark" / "1.png")])) == ["dark"]


def test_loop_threads_is_honoured(tmp_path, monkeypatch):
    seen = []
    real = loop.seed_everything
    monkeypatch.setattr(loop, "seed_everything", lambda s: (seen.append(torch.get_num_threads()), real(s)))
    before = torch.get_num_threads()
    try:
        s = loop.train(config.load_recipe("digits-mlp", [*SHORT, "loop.threads=1"]), tmp_path / "r")
    finally:
        torch.set_num_threads(before)
    assert seen == [1] and s["threads"] == 1


def test_a_finished_run_is_extended_by_a_longer_resume(tmp_path):
    d = tmp_path / "r"
    loop.train(config.load_recipe("digits-mlp", SHORT), d)
    longer = [*SHORT[:-2], "loop.max_steps=20", "loop.eval_every=4", "loop.log_every=4"]
    s = loop.train(config.load_recipe("digits-mlp", longer), d, resume=True)
    assert s["steps"] == 20 and s["status"] == "completed"
    assert config.load_resolved(d / "config.toml").loop.steps == 20
    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "val"] == [0, 4, 8, 12, 16, 20]
    with pytest.raises(UserError, match="already at step 20"):
        loop.train(config.load_recipe("digits-mlp", [*SHORT[:-2], "loop.max_steps=8", "loop.eval_every=4",
                                                     "loop.log_every=4"]), d, resume=True)
    with pytest.raises(UserError, match="differs from the run's config.toml in optim.lr$"):
        loop.train(config.load_recipe("digits-mlp", [*longer, "optim.lr=0.1"]), d, resume=True)
    # The [sweep] table is a sweep's grid, not this run's training: a changed grid still resumes.
    with pytest.raises(UserError, match="already at step 20"):
        loop.train(config.load_recipe("digits-mlp", [*SHORT[:-2], "loop.max_steps=8", "loop.eval_every=4",
                                                     "loop.log_every=4", 'sweep.sizes=["1x16"]']), d, resume=True)


def test_the_progress_bar_moves_every_step(tmp_path, monkeypatch):
    ticks = []
    monkeypatch.setattr(runs.Progress, "tick", lambda self, step: ticks.append(step))
    loop.train(config.load_recipe("digits-mlp", SHORT), tmp_path / "r")
    assert ticks == list(range(1, 13))


def test_validating_every_step_does_not_print_a_line_per_step(tmp_path, capsys):
    loop.train(config.load_recipe("digits-mlp", ["loop.max_steps=12", "loop.eval_every=1", "loop.log_every=6"]),
               tmp_path / "r")
    out = capsys.readouterr().out
    assert out.count(": val ") == 2  # at the two logging steps, not twelve times


def test_the_done_line_and_summary_say_which_weights_were_exported(tmp_path, capsys):
    s = loop.train(config.load_recipe("digits-overfit", ["loop.max_steps=40", "loop.eval_every=5",
                                                       "loop.restore_best=true"]), tmp_path / "r")
    assert s["exported"]["step"] == s["best"]["step"] and "best validation loss" in s["exported"]["why"]
    assert f"exported the weights of step {s['best']['step']}" in capsys.readouterr().out
    meta = json.loads((tmp_path / "r" / "model" / "config.json").read_text())
    assert meta["step"] == s["best"]["step"]


def test_a_tie_on_the_monitored_metric_goes_to_the_later_step():
    best = {"step": 3, "value": 1.0}
    assert loop._compare(1.0, best, "max") == 0 and loop._compare(0.9, best, "max") == -1
    assert loop._compare(0.5, {"step": 3, "value": 0.6}, "min") == 1


def test_recipes_print_themselves(tmp_path):
    r = run_cli("recipes", "digits-cnn")
    first, rest = r.stdout.split("\n", 1)
    assert r.returncode == 0 and first == f"# {config.find_recipe('digits-cnn')}" and rest.startswith("[run]")
    assert "kind = \"cnn\"" in r.stdout and config.validate(__import__("tomllib").loads(r.stdout))
    r = run_cli("recipes", "digits-cnn", "--resolved")
    assert r.returncode == 0 and "threads = 0" in r.stdout and "clip_grad_norm" in r.stdout
    config.validate(__import__("tomllib").loads(r.stdout))  # the resolved config is itself a valid recipe
    r = run_cli("recipes", "--keys")
    line = next(x for x in r.stdout.splitlines() if x.strip().startswith("loop.threads"))
    assert "(int)" in line and "# CPU threads" in line
    assert "'auto' | 'fp32' | 'bf16'" in next(x for x in r.stdout.splitlines() if "loop.precision" in x)


@pytest.mark.parametrize("override,hint", [("optim.learning_rate=3", "optim.lr"),
                                           ("loop.eval_steps=5", "loop.eval_every"),
                                           ("loop.num_epochs=5", "loop.epochs"),
                                           ("model.num_layers=2", "model.n_layer"),
                                           ("training.epochs=2", "loop.epochs"), ("lr=1e-3", "optim.lr")])
def test_typos_and_other_tools_names_suggest_ours(override, hint):
    recipe = "stdlib-gpt" if override.startswith("model.") else "digits-mlp"
    with pytest.raises(UserError) as e:
        config.load_recipe(recipe, [override])
    assert f"did you mean '{hint}'" in e.value.hint and "command-line override" in str(e.value)


def test_errors_name_the_override_and_the_usual_first_mistakes():
    with pytest.raises(UserError) as e:
        config.load_recipe("digits-mlp", ["data.source=cvs"])
    assert str(e.value).startswith("the command-line override 'data.source=cvs'") and "csv" in e.value.hint
    with pytest.raises(UserError) as e:
        config.load_recipe("my.csv")
    assert "looks like data" in str(e.value) and "data.source=csv data.path=my.csv" in e.value.hint
    with pytest.raises(UserError) as e:
        config.load_recipe("digits-mlp", ["data.source=csv", "data.path=x.csv", "data.ignore_columns=id"])
    assert "must be a list" in str(e.value) and '["a", "b"]' in e.value.hint


def test_python_evaluate_integer_classes_and_inputs_far_from_the_training_data(tmp_path):
    d = tmp_path / "r"
    trainlab.train("digits-mlp", SHORT, model=Net(), run_dir=d)
    p = trainlab.load(d, model=Net())
    result = p.evaluate("test")  # `trainlab eval` cannot rebuild your own class; from Python it can
    assert result["split"] == "test" and (d / "eval_test.json").is_file()
    from sklearn.datasets import load_digits

    got = p.predict(load_digits().images[:5] / 16.0)
    assert got.dtype.kind == "i"  # labels 0..9 come back as integers, comparable with y
    with pytest.warns(UserWarning, match="far from the training data"):
        p.predict(load_digits().images[:5] * 100.0)


def test_a_csv_with_missing_values_says_so(tmp_path):
    from trainlab.data.tabular import load_csv

    p = tmp_path / "m.csv"
    p.write_text("a,b,label\n1,2,x\n3,,y\n4,5,x\n6,,y\n")
    with pytest.raises(UserError, match="column 'b' .* has 2 empty cells \\(first: row 3\\)"):
        load_csv(str(p), "label", "auto")


def test_warnings_for_choices_that_are_probably_wrong(tmp_path, capsys):
    cfg = config.load_recipe("digits-mlp", ["loop.epochs=1", "data.val_fraction=0.1", "data.test_fraction=0.6"])
    loop.train(cfg, tmp_path / "r")
    out = capsys.readouterr().out
    assert "warning: the test split" in out and "warning: only" in out
    assert "warning: schedule.warmup_steps (20) is not shorter than the run" in out  # one epoch is a few steps


def test_tensorboard_asked_for_but_missing_is_said_once(tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    loop.train(config.load_recipe("digits-mlp", [*SHORT, "run.tensorboard=true"]), tmp_path / "r")
    assert capsys.readouterr().out.count("tensorboard is not installed") == 1
