"""Hostile and unlucky inputs: damaged run-folder files, two writers on one folder, kills between the two
checkpoint links, inputs from outside. Each ends in one UserError (exit 2 on the command line) that names what
is wrong, and leaves every existing file as it was."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import REPO, run_cli, tiny
from trainlab import checkpoint, config, files, loop, runs
from trainlab.errors import UserError
from trainlab.eval import evaluate_run

OVERRIDES = ("loop.max_steps=12", "loop.eval_every=4", "loop.log_every=4")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ref") / "run"
    loop.train(tiny("digits-mlp"), d)
    runs.unlock(d)
    return d


def copy_of(trained: Path, tmp_path: Path) -> Path:
    d = tmp_path / "run"
    shutil.copytree(trained, d, symlinks=True)
    return d


def digest(d: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(d.rglob("*")):
        if p.is_file() and p.name != runs.LOCK:
            h.update(str(p.relative_to(d)).encode() + p.read_bytes())
    return h.hexdigest()


def state_path(d: Path) -> Path:
    return (d / "checkpoints" / "last").resolve() / "state.pt"


def edit_state(d: Path, fn) -> None:
    p = state_path(d)
    torch.save(fn(torch.load(p, weights_only=True)), p)


def resume(d: Path) -> None:
    loop.train(tiny("digits-mlp"), d, resume=True)


# ------------------------------------------------------------------------------------ files read back


@pytest.mark.parametrize("damage,expect", [
    (lambda s: {k: v for k, v in s.items() if k != "optimizer"}, "'optimizer' is missing"),
    (lambda s: {**s, "step": "twelve"}, "'step'"),
    (lambda s: {**s, "batches": {"nothing": 1}}, "data position"),
    (lambda s: {**s, "rng": {"python": 3}}, "random state"),
    (lambda s: [1, 2, 3], "holds a list"),
    (lambda s: {**s, "optimizer": {**s["optimizer"], "state": {
        0: {**s["optimizer"]["state"][0], "exp_avg": torch.zeros(3, 3)}}}}, "shape (3, 3)"),
])
def test_a_damaged_state_pt_is_one_error_naming_the_file(trained, tmp_path, damage, expect):
    d = copy_of(trained, tmp_path)
    edit_state(d, damage)
    before = digest(d)
    with pytest.raises(UserError) as e:
        resume(d)
    assert expect in str(e.value) and "state.pt" in str(e.value), str(e.value)
    assert "\n" not in str(e.value)
    assert digest(d) == before


def test_a_pickle_in_state_pt_never_runs_and_the_error_gives_no_unsafe_advice(trained, tmp_path):
    d = copy_of(trained, tmp_path)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"step": Payload()}, state_path(d))
    with pytest.raises(UserError) as e:
        resume(d)
    assert not marker.exists()
    assert "weights_only" not in str(e.value) and "does not open it" in str(e.value)


def test_a_missing_state_pt_is_named(trained, tmp_path):
    d = copy_of(trained, tmp_path)
    state_path(d).unlink()
    with pytest.raises(UserError, match="has no state.pt"):
        resume(d)


def test_weights_of_another_shape_are_one_line(trained, tmp_path):
    d = copy_of(trained, tmp_path)
    w = load_file(d / "model" / "model.safetensors")
    save_file({k: torch.zeros(3) for k in w}, d / "model" / "model.safetensors")
    with pytest.raises(UserError) as e:
        evaluate_run(d)
    assert "of another shape" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("text,expect", [
    ("[1, 2]", "holds a JSON list"),
    ('{"model": {"kind": "mlp"}}', "'info' is missing"),
    ('{"model": {"kind": "mlp"', "truncated"),
    (b'{"model": "\xff"}', "not UTF-8"),
])
def test_a_damaged_model_config_json_is_one_error(trained, tmp_path, text, expect):
    d = copy_of(trained, tmp_path)
    p = d / "model" / "config.json"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(UserError) as e:
        evaluate_run(d)
    assert expect in str(e.value) and "config.json" in str(e.value)


def test_an_edited_config_json_that_cannot_build_is_one_error(trained, tmp_path):
    d = copy_of(trained, tmp_path)
    p = d / "model" / "config.json"
    meta = json.loads(p.read_text())
    meta["info"]["input_shape"] = "wide"
    p.write_text(json.dumps(meta))
    with pytest.raises(UserError, match="cannot be built"):
        evaluate_run(d)


def test_data_that_no_longer_fits_the_model_is_caught_before_running(trained, tmp_path):
    d = copy_of(trained, tmp_path)
    p = d / "config.toml"
    p.write_text(p.read_text().replace('source = "digits"', 'source = "breast_cancer"'))
    with pytest.raises(UserError, match="trained on other data.*input shape"):
        evaluate_run(d)


def test_metrics_jsonl_keeps_good_rows_and_counts_bad_ones(tmp_path):
    p = tmp_path / "metrics.jsonl"
    good = [{"step": 1, "split": "train", "loss": 1.0}, {"step": 2, "split": "val", "loss": 0.5}]
    p.write_bytes(b"[1, 2]\n" + json.dumps(good[0]).encode() + b'\n{"step": 3}\n\xff\xfe\n'
                  + json.dumps(good[1]).encode() + b'\n{"step": 4, "split": "train", "lo')
    rows, bad = files.read_metrics(p)
    assert rows == good and bad == 4


def test_a_truncated_summary_is_one_error(tmp_path):
    p = tmp_path / "summary.json"
    p.write_text('{"status": "completed", "steps": 1')
    with pytest.raises(UserError, match="summary.json is damaged.*truncated"):
        files.read_summary(p)


# ------------------------------------------------------------------------------------ one writer per folder


def test_a_second_process_on_a_locked_run_folder_gets_one_error_naming_the_holder(tmp_path):
    d = tmp_path / "run"
    runs.lock(d)
    try:
        r = run_cli("train", "digits-mlp", "loop.max_steps=2", "--run-dir", str(d), process=True)
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") <= 2 and f"PID {os.getpid()}" in r.stderr
        r = run_cli("train", "digits-mlp", "loop.max_steps=2", "--run-dir", str(d), "--resume", process=True)
        assert r.returncode == 2
    finally:
        runs.unlock(d)
    assert [p.name for p in d.iterdir()] == [runs.LOCK]


def test_fresh_run_folders_are_claimed_atomically(tmp_path):
    """Two runs of one recipe started at once: each claims its own folder (held here by a child process)."""
    code = ("import sys, time; from trainlab import runs; d = runs.new_run_dir(sys.argv[1], 'r'); "
            "print(d, flush=True); time.sleep(30)")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        theirs = Path(child.stdout.readline().strip())
        ours = runs.new_run_dir(str(tmp_path), "r")
        assert theirs == tmp_path / "r" and ours == tmp_path / "r-2"
        runs.unlock(ours)
    finally:
        child.kill()
        child.wait()


def test_eval_and_report_read_a_folder_while_a_run_holds_it(trained, tmp_path):
    from trainlab.report import write_report

    d = copy_of(trained, tmp_path)
    runs.lock(d)  # a run is writing here: its lock is held, its last metrics line is half written
    try:
        with (d / "metrics.jsonl").open("a") as f:
            f.write('{"step": 13, "split": "tra')
        assert evaluate_run(d)["metrics"]["accuracy"] > 0
        assert "1 damaged line" in write_report(d).read_text()
    finally:
        runs.unlock(d)


@pytest.mark.parametrize("where", ["below-a-file", "proc"])
def test_a_run_folder_that_cannot_be_created_fails_before_any_work(tmp_path, where):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    target = blocker / "run" if where == "below-a-file" else Path("/proc/trainlab-test-run")
    r = run_cli("train", "digits-mlp", "--run-dir", str(target))
    assert r.returncode == 2 and r.stderr.startswith("error: cannot create run folder"), r.stderr
    assert "trainlab:" not in r.stdout  # nothing started


# ------------------------------------------------------------------------------------ kills between the links


def test_a_kill_between_the_moves_of_last_and_best_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    cfg = tiny("digits-overfit", "loop.max_steps=16")
    full, killed = tmp_path / "full", tmp_path / "killed"
    expected = loop.train(cfg, full)

    class Killed(Exception):
        pass

    real = checkpoint._point
    seen = []

    def point(root, name, target):
        # The kill lands after `last` has moved to the step of a new best, before `best` follows.
        if name == "best" and "last" in seen[-1:] and len(seen) > 2:
            raise Killed()
        seen.append(name)
        real(root, name, target)

    monkeypatch.setattr(checkpoint, "_point", point)
    with pytest.raises(Killed):
        loop.train(cfg, killed)
    monkeypatch.setattr(checkpoint, "_point", real)
    runs.unlock(killed)
    last, best = ((killed / "checkpoints" / n).resolve() for n in ("last", "best"))
    assert last != best  # the state the kill left: `best` one evaluation behind
    got = loop.train(cfg, killed, resume=True)
    a, b = load_file(full / "model/model.safetensors"), load_file(killed / "model/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert got["exported"] == expected["exported"] and got["best"] == expected["best"]


def test_a_resume_with_no_steps_left_writes_the_same_summary(trained, tmp_path):
    d = copy_of(trained, tmp_path)
    before = json.loads((d / "summary.json").read_text())
    resume(d)
    after = json.loads((d / "summary.json").read_text())

    def same(s):
        return {k: v for k, v in s.items() if k not in ("wall_s",)}
    assert same(after) == same(before)


def test_ctrl_c_leaves_an_interrupted_summary_and_a_resumable_run(tmp_path, monkeypatch):
    d = tmp_path / "run"
    real = checkpoint.commit

    def commit_then_interrupt(root, tmp, at, links):
        out = real(root, tmp, at, links)
        if at == 8:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(checkpoint, "commit", commit_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        loop.train(tiny("digits-mlp"), d)
    monkeypatch.setattr(checkpoint, "commit", real)
    runs.unlock(d)
    s = json.loads((d / "summary.json").read_text())
    assert s["status"] == "interrupted" and s["steps"] == 8 and s["resume_from"] == 8
    assert loop.train(tiny("digits-mlp"), d, resume=True)["status"] == "completed"


# ------------------------------------------------------------------------------------ inputs from outside


def test_a_decompression_bomb_is_one_error(tmp_path, monkeypatch):
    from PIL import Image

    from trainlab.data.images import load_image

    Image.new("L", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64 x 64 is then "too large" by PIL's own rule
    with pytest.raises(UserError, match="too large to decode safely"):
        load_image(tmp_path / "big.png", 8, True)


def test_a_gz_file_that_is_not_gzip_is_one_error(tmp_path):
    from trainlab.data.images import read_idx

    p = tmp_path / "x-idx3-ubyte.gz"
    p.write_bytes(b"plain bytes, not gzip" * 4)
    with pytest.raises(UserError, match="cannot read IDX file"):
        read_idx(str(p))


def test_an_image_folder_with_one_class_cannot_train_a_classifier(tmp_path):
    from PIL import Image

    (tmp_path / "cats").mkdir()
    for i in range(6):
        Image.new("L", (8, 8), 40 * i).save(tmp_path / "cats" / f"{i}.png")
    cfg = tiny("digits-cnn", "data.source=image_folder", f"data.path={tmp_path}", "data.image_size=8")
    with pytest.raises(UserError, match="at least two classes"):
        loop.train(cfg, tmp_path / "run")


def test_a_batch_that_cannot_fit_in_memory_fails_before_allocating(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be, that is the question\n" * 200)
    cfg = config.load_recipe("shakespeare-char", [f"data.path={corpus}", f"data.cache_dir={tmp_path / 'cache'}",
                                                  "data.batch_size=1000000000", "loop.max_steps=1"])
    with pytest.raises(UserError, match="needs at least .* for its logits alone"):
        loop.train(cfg, tmp_path / "run")


def test_an_empty_recipe_is_refused(tmp_path):
    p = tmp_path / "mine.toml"
    p.write_text("# to do\n[run]\n")
    with pytest.raises(UserError, match="is empty"):
        config.load_recipe(str(p))


@pytest.mark.parametrize("command", ["recipes --keys", "recipes digits-cnn --resolved", "--help"])
def test_a_reader_that_goes_away_ends_the_command_quietly(command):
    r = subprocess.run(f"{sys.executable} -m trainlab {command} | head -1", shell=True, capture_output=True,
                       text=True, cwd=REPO)
    assert r.stderr == "" and r.stdout.count("\n") == 1
