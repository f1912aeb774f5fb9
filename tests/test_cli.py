"""The `trainlab` command as a user runs it: every bundled recipe, eval, report, and bad input (exit status 2)."""

import json

import pytest

from trainlab import config, registry
from tests.conftest import run_cli


@pytest.fixture(scope="session")
def text_dir(tmp_path_factory):
    """A small play-like text file and one token cache shared by the language-model recipes."""
    d = tmp_path_factory.mktemp("text")
    lines = [f"{name}:\nI {verb} thee, {obj}, as the {obj2} {verb}s the night.\n"
             for name in ("ROMEO", "JULIET", "NURSE") for verb in ("love", "fear", "know", "see")
             for obj in ("sweet friend", "good sir", "my lord") for obj2 in ("moon", "sun", "sea")]
    (d / "play.txt").write_text("\n".join(lines * 3))
    return d


def recipe_args(recipe: str, text_dir) -> list[str]:
    cfg = config.load_recipe(recipe)
    source = cfg.data.source
    provides = registry.get("source", source).produces
    if source == "gym":  # 2 environments x 8 steps per rollout, 2 minibatch steps each; one evaluation episode
        return ["data.num_envs=2", "data.rollout_steps=8", "data.epochs_per_rollout=2", "data.batch_size=16",
                "data.eval_episodes=1", "data.env_kwargs={max_episode_steps=50}"]  # short episodes, short GIFs
    if source == "selfplay":  # 4 games of 4 simulations per move per iteration, 2 games per validation match
        return ["data.games_per_iteration=4", "data.simulations=4", "data.steps_per_iteration=4", "data.eval_games=2",
                "data.eval_simulations=4"]
    if source == "gym_replay":  # rounds of 8 steps and 2 updates after 16 random steps
        return ["data.learning_starts=16", "data.train_freq=8", "data.gradient_steps=2", "data.eval_episodes=1",
                "data.env_kwargs={max_episode_steps=50}"]
    if not provides & {"tokens", "conversations", "preferences", "prompts"}:
        return []
    args = [f"data.cache_dir={text_dir / 'cache'}"] if "tokens" in provides else []
    if source == "stdlib":  # a slice of the standard library: tokenizing all 12 MB would take most of a minute
        args += ["data.max_bytes=300000", "data.split=tail", "data.vocab_size=512"]
    if source == "stdlib_classes":  # two small packages
        args += ['data.packages=["email","json"]']
    if source in ("conversations", "preferences", "prompts"):  # a small slice of the task suite
        args += ["data.suite_size=200", "data.suite_eval=30", "data.eval_prompts=16", "data.max_new_tokens=8"]
    if source == "prompts":  # rounds of 8 replies, not 128: generation is most of an online step
        args += ["data.prompts_per_round=4", "data.group_size=2", "data.batch_size=8"]
    # Fine-tuning and post-training recipes start from runs of other bundled recipes: tiny ones
    for key in ("model.init_from", "data.reward_model"):
        table, _, name = key.partition(".")
        base = getattr(getattr(cfg, table), name, "")
        if base.startswith("runs/"):
            pre = text_dir / "bases" / base[len("runs/"):]
            if not (pre / "model").is_dir():
                r = run_cli("train", base[len("runs/"):], "loop.max_steps=2", "loop.eval_every=2",
                            *recipe_args(base[len("runs/"):], text_dir), "--run-dir", str(pre))
                assert r.returncode == 0, r.stderr
            args += [f"{key}={pre}"]
    return args + ([f"data.path={text_dir / 'play.txt'}"] if source == "text" else [])


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(config.bundled_recipes()))
def test_every_bundled_recipe_trains_evaluates_and_reports(tmp_path, recipe, text_dir):
    run = tmp_path / recipe
    r = run_cli("train", recipe, "loop.max_steps=8", "loop.eval_every=4", *recipe_args(recipe, text_dir),
                "--run-dir", str(run))
    assert r.returncode == 0, r.stderr
    if config.load_recipe(recipe).model.kind == "gpt" and config.load_recipe(recipe).model.head == "lm":
        r = run_cli("sample", str(run), "--prompt", "I ", "--max-new-tokens", "20", "--seed", "0")
        assert r.returncode == 0 and r.stdout.startswith("I "), r.stderr
    summary = json.loads((run / "summary.json").read_text())
    classical = registry.fitted(config.load_recipe(recipe).model.kind)  # fitted in one call, no steps
    assert summary["status"] == "completed" and summary["steps"] == (0 if classical else 8)
    split = "test" if config.load_recipe(recipe).data.test_fraction > 0 else "val"  # shakespeare-char has no test
    r = run_cli("eval", str(run), "--split", split)
    assert r.returncode == 0, r.stderr
    assert "baseline" in r.stdout
    result = json.loads((run / f"eval_{split}.json").read_text())
    assert result["split"] == split and set(result) >= {"metrics", "baseline"}
    r = run_cli("report", str(run))
    assert r.returncode == 0, r.stderr
    assert (run / "report.md").is_file()
    pictures = {p.name for p in run.glob("*.png")}
    assert classical or (run / "curves.png").stat().st_size > 1000
    if registry.unsupervised(config.load_recipe(recipe).model.kind):
        assert "embedding.png" in pictures and "uses labels" in (run / "report.md").read_text()


def test_default_run_folders_are_numbered_not_overwritten(tmp_path):
    for _ in range(2):
        assert run_cli("train", "digits-mlp", "loop.max_steps=2", cwd=tmp_path).returncode == 0
    assert (tmp_path / "runs/digits-mlp/summary.json").is_file()
    assert (tmp_path / "runs/digits-mlp-2/summary.json").is_file()
    r = run_cli("train", "digits-mlp", "loop.max_steps=2", "optim.lr=0.1", "--resume", cwd=tmp_path)
    assert r.returncode == 2 and "differs" in r.stderr  # another recipe: refused, not silently mixed
    r = run_cli("train", "digits-mlp", "loop.max_steps=4", "--resume", cwd=tmp_path)  # a longer run: extended
    assert r.returncode == 0 and "resuming runs/digits-mlp-2, the latest run" in r.stdout
    assert json.loads((tmp_path / "runs/digits-mlp-2/summary.json").read_text())["steps"] == 4


def test_eval_json_and_classification_metrics(tmp_path):
    run = tmp_path / "r"
    assert run_cli("train", "breast-cancer-mlp", "loop.max_steps=40", "--run-dir", str(run)).returncode == 0
    r = run_cli("eval", str(run), "--split", "test", "--json")
    out = json.loads(r.stdout)
    m = out["metrics"]
    assert {"accuracy", "precision_macro", "recall_macro", "f1_macro", "per_class", "confusion_matrix"} <= set(m)
    assert sum(map(sum, m["confusion_matrix"])) == out["n"]
    assert m["accuracy"] > out["baseline"]["accuracy"]


def test_eval_regression_reports_in_target_units(tmp_path):
    run = tmp_path / "r"
    assert run_cli("train", "diabetes-mlp", "loop.max_steps=60", "--run-dir", str(run)).returncode == 0
    out = json.loads(run_cli("eval", str(run), "--json").stdout)
    assert {"mse", "mae", "r2"} <= set(out["metrics"])
    assert out["baseline"]["mse"] > 1000  # progression scores are in the hundreds: original units, not z-scores
    assert out["metrics"]["mse"] < out["baseline"]["mse"]


def test_report_compares_runs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli("train", "digits-mlp", "loop.max_steps=8", "--run-dir", str(a)).returncode == 0
    assert run_cli("train", "digits-overfit", "loop.max_steps=8", "--run-dir", str(b)).returncode == 0
    assert run_cli("report", str(b), "--compare", str(a)).returncode == 0
    md = (b / "report.md").read_text()
    assert "digits-overfit" in md and "digits-mlp" in md and "Generalization gap" in md


def test_recipes_lists_bundled_recipes_and_keys():
    r = run_cli("recipes")
    assert r.returncode == 0 and "digits-cnn" in r.stdout and "breast-cancer-mlp" in r.stdout
    r = run_cli("recipes", "--keys")
    assert "optim.lr = 0.001" in r.stdout and "loop.max_steps = 0" in r.stdout


BAD = [
    (["train", "no-such-recipe"], "no recipe named"),
    (["train", "digits-mlp", "optim.lrr=0.1"], "unknown key 'optim.lrr'"),
    (["train", "digits-mlp", "optim.lr=-1"], "'optim.lr' must be greater than 0"),
    (["train", "digits-mlp", "loop.epochs=many"], "'loop.epochs'"),
    (["train", "digits-mlp", "data.source=csv"], "needs data.path"),
    (["train", "digits-mlp", "data.source=csv", "data.path=/no/such.csv"], "does not exist"),
    (["eval", "/no/such/run"], "does not exist"),
    (["report", "/no/such/run"], "no metrics.jsonl"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_error_line_with_a_hint_and_status_2(args, message):
    r = run_cli(*args)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and message in lines[0]
    assert len(lines) == 2 and lines[1].startswith("hint: ")
    assert "Traceback" not in r.stderr


def test_malformed_recipe_and_empty_dataset(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim]\nlr = \n")
    r = run_cli("train", str(bad))
    assert r.returncode == 2 and "not valid TOML" in r.stderr
    (tmp_path / "empty.csv").write_text("a,b,y\n")
    r = run_cli("train", "digits-mlp", "data.source=csv", f"data.path={tmp_path / 'empty.csv'}")
    assert r.returncode == 2 and "no data rows" in r.stderr


def test_nan_loss_from_the_command_line(tmp_path):
    run = tmp_path / "r"
    r = run_cli("train", "diabetes-mlp", "loop.max_steps=400", "loop.clip_grad_norm=0", "optim.name=sgd",
                "optim.lr=5.0", "optim.momentum=0.99", "schedule.name=constant", "loop.eval_every=2",
                "--run-dir", str(run))
    assert r.returncode == 2 and "error: the " in r.stderr and "at step" in r.stderr
    assert (run / "checkpoints/last/model.safetensors").is_file()


def test_existing_run_folder_is_not_overwritten(tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    r = run_cli("train", "digits-mlp", "--run-dir", str(tmp_path))
    assert r.returncode == 2 and "already exists" in r.stderr
    assert (tmp_path / "keep.txt").read_text() == "precious"


def test_overrides_may_follow_options(tmp_path):
    r = run_cli("train", "digits-mlp", "--run-dir", str(tmp_path / "r"), "loop.max_steps=2", "loop.eval_every=2")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "r/summary.json").read_text())["steps"] == 2
    r = run_cli("train", "digits-mlp", "--run-dir", str(tmp_path / "s"), "--bogus")
    assert r.returncode == 2 and "unrecognized arguments: --bogus" in r.stderr


def test_debug_shows_the_traceback():
    r = run_cli("--debug", "train", "digits-mlp", "optim.lr=-1")
    assert r.returncode != 0 and "Traceback" in r.stderr


def test_user_csv_end_to_end(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = np.where(x[:, 0] + x[:, 1] > 0, "yes", "no")
    lines = ["a,b,c,label"] + [f"{a:.4f},{b:.4f},{c:.4f},{t}" for (a, b, c), t in zip(x, y)]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    r = run_cli("train", "breast-cancer-mlp", "data.source=csv", f"data.path={tmp_path / 'd.csv'}",
                "data.target=label", "loop.max_steps=150", "--run-dir", str(run))
    assert r.returncode == 0, r.stderr
    out = json.loads(run_cli("eval", str(run), "--split", "test", "--json").stdout)
    assert out["metrics"]["accuracy"] > 0.85 and list(out["metrics"]["per_class"]) == ["no", "yes"]


def test_sample_bad_input(tmp_path, text_dir):
    run = tmp_path / "lm"
    assert run_cli("train", "shakespeare-char", "loop.max_steps=2", *recipe_args("shakespeare-char", text_dir),
                   "--run-dir", str(run)).returncode == 0
    r = run_cli("sample", str(run), "--prompt", "ROMEO " * 40)
    assert r.returncode == 2 and "context is 64" in r.stderr and "--truncate" in r.stderr
    assert run_cli("sample", str(run), "--prompt", "ROMEO " * 40, "--truncate", "--max-new-tokens", "5").returncode == 0
    r = run_cli("sample", str(run), "--top-p", "0")
    assert r.returncode == 2 and "top-p" in r.stderr
    other = tmp_path / "other"
    assert run_cli("train", "digits-mlp", "loop.max_steps=2", "--run-dir", str(other)).returncode == 0
    r = run_cli("sample", str(other), "--prompt", "x")
    assert r.returncode == 2 and "not a language model" in r.stderr
    (run / "model" / "tokenizer.json").write_text('{"trainlab_tokenizer": "char", "chars": ["a", "b"]}')
    r = run_cli("sample", str(run), "--prompt", "a")
    assert r.returncode == 2 and "do not match" in r.stderr


def test_language_model_eval_reports_perplexity_and_bits_per_byte(tmp_path, text_dir):
    run = tmp_path / "lm"
    assert run_cli("train", "shakespeare-char", "loop.max_steps=60", *recipe_args("shakespeare-char", text_dir),
                   "--run-dir", str(run)).returncode == 0
    out = json.loads(run_cli("eval", str(run), "--json").stdout)
    m, b = out["metrics"], out["baseline"]
    assert set(m) == {"loss", "perplexity", "bits_per_byte"} and m["perplexity"] == pytest.approx(2.718281828 ** m["loss"])
    assert m["loss"] < b["loss"]  # 60 steps already beat unigram frequencies


USAGE_MISTAKES = [  # argparse's own message, prefixed by the sub-command, and the help to read
    (["scaling", "sweep", "stdlib-scaling", "--sizez", "1x16", "--out", "x"],
     "error: trainlab scaling sweep: unrecognized arguments: --sizez 1x16",
     "hint: did you mean --sizes? see trainlab scaling sweep --help"),
    (["train", "digits-mlp", "--run-dri", "d"],
     "error: trainlab train: unrecognized arguments: --run-dri d",
     "hint: did you mean --run-dir? see trainlab train --help"),
    (["scaling", "sweep", "stdlib-scaling"],
     "error: trainlab scaling sweep: the following arguments are required: --out",
     "hint: trainlab scaling sweep --help"),
    (["scaling", "fit", "points.csv", "--bootstrap", "x"],
     "error: trainlab scaling fit: argument --bootstrap: invalid int value: 'x'",
     "hint: trainlab scaling fit --help"),
    (["scaling", "sweep", "stdlib-scaling", "--tokens", "1k", "--flops", "1e9", "--out", "x"],
     "error: trainlab scaling sweep: argument --flops: not allowed with argument --tokens",
     "hint: trainlab scaling sweep --help"),
    (["trian", "digits-mlp"],
     "error: trainlab: argument COMMAND: invalid choice: 'trian' (choose from",  # the list's quoting varies by Python
     "hint: did you mean train? see trainlab --help"),
    (["scaling"],
     "error: trainlab scaling: the following arguments are required: SUBCOMMAND",
     "hint: trainlab scaling --help"),
    (["sample", "run", "--top-k"],
     "error: trainlab sample: argument --top-k: expected one argument",
     "hint: trainlab sample --help"),
    (["eval", "run", "--split", "tset"],
     "error: trainlab eval: argument --split: invalid choice: 'tset' (choose from",
     "hint: did you mean test? see trainlab eval --help"),
]


@pytest.mark.parametrize("args,error,hint", USAGE_MISTAKES, ids=[" ".join(a) for a, _, _ in USAGE_MISTAKES])
def test_usage_mistakes_are_one_error_line_with_a_hint_and_status_2(args, error, hint):
    r = run_cli(*args)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 2 and lines[1] == hint, r.stderr
    assert lines[0] == error or (error.endswith("(choose from") and lines[0].startswith(error)), r.stderr
    assert "usage:" not in r.stderr and "Traceback" not in r.stderr and r.stdout == ""


def test_help_is_still_argparses():
    for args in (["--help"], ["scaling", "sweep", "--help"], ["plan", "--help"]):
        r = run_cli(*args)
        assert r.returncode == 0 and r.stdout.startswith("usage: trainlab") and r.stderr == ""
