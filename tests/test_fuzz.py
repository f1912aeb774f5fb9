"""Property-based tests of every reader of a file trainlab writes or accepts: random truncations, byte flips and
well-formed but wrong values must raise only UserError (or be read), never another exception, and must leave
every existing file unchanged. A bounded number of examples each: these run in the quick tier."""

import csv
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

from tests.conftest import tiny
from trainlab import checkpoint, config, files, loop, models, runs
from trainlab.data import images, tabular, text, tokenizer
from trainlab.errors import UserError

# TRAINLAB_FUZZ_EXAMPLES=500 searches longer (random seeds) when hunting for new failures by hand.
_LONG = int(os.environ.get("TRAINLAB_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=_LONG or 30, deadline=None, derandomize=not _LONG,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FUZZ_REPORT = settings(FUZZ, max_examples=_LONG or 10)  # each example draws a whole report (0.4 s)


# ------------------------------------------------------------------------------------------ damage


@st.composite
def damaged(draw, original: bytes) -> bytes:
    """The original bytes cut short, with some bytes flipped, or both."""
    data = bytearray(original)
    if draw(st.booleans()) and len(data) > 1:
        data = data[:draw(st.integers(0, len(data) - 1))]
    flips = draw(st.lists(st.tuples(st.integers(0, max(0, len(data) - 1)), st.integers(0, 255)), max_size=6))
    for i, b in flips:
        if data:
            data[i] = b
    return bytes(data)


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                        max_size=3), max_leaves=6)


@st.composite
def wrong_values(draw, obj):
    """The same JSON structure with one value somewhere replaced by any other JSON value (or removed)."""
    paths = []

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                paths.append(path + (k,))
                walk(v, path + (k,))
        elif isinstance(node, list):
            for i, v in enumerate(node[:4]):
                paths.append(path + (i,))
                walk(v, path + (i,))

    walk(obj, ())
    obj = json.loads(json.dumps(obj))
    path = draw(st.sampled_from(paths))
    node = obj
    for p in path[:-1]:
        node = node[p]
    if isinstance(node, dict) and draw(st.booleans()):
        del node[path[-1]]
    else:
        node[path[-1]] = draw(JSON_VALUES)
    return obj


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != runs.LOCK:
            h.update(str(p).encode() + p.read_bytes())
    return h.hexdigest()


def only_user_errors(folder: Path, fn, *args):
    """fn(*args) may return or raise UserError; nothing in `folder` but the fuzzed file may change."""
    before = digest(folder)
    try:
        fn(*args)
    except UserError as e:
        assert str(e) and "\n" not in e.message.strip()
    assert digest(folder) == before


# ------------------------------------------------------------------------------------------ a run folder


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fuzz") / "run"
    loop.train(tiny("digits-mlp", "loop.max_steps=4"), d)
    return d


@pytest.fixture(scope="module")
def lm_tokenizer(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tok")
    tok = tokenizer.train_tokenizer("bpe", ["def f(x):\n    return x + 1\n" * 50, "héllo wörld " * 40], 300)
    tokenizer.save(tok, d / "tokenizer.json")
    return d / "tokenizer.json"


@pytest.fixture
def scratch(run, tmp_path) -> Path:
    d = tmp_path / "run"
    shutil.copytree(run, d, symlinks=True)
    return d


def fuzz_bytes(path: Path, damage: bytes, read) -> None:
    path.write_bytes(damage)
    only_user_errors(path.parent, read)


@FUZZ
@given(data=st.data())
def test_model_config_json(run, scratch, data):
    p = scratch / "model" / "config.json"
    original = json.loads((run / "model" / "config.json").read_text())
    if data.draw(st.booleans()):
        p.write_text(json.dumps(data.draw(wrong_values(original)), allow_nan=True))
    else:
        p.write_bytes(data.draw(damaged(json.dumps(original).encode())))
    only_user_errors(scratch / "model", models.load, scratch / "model")


@FUZZ
@given(data=st.data())
def test_summary_and_eval_json(run, scratch, data):
    evaluation = {"split": "val", "n": 3, "task": "classification", "metrics": {"accuracy": 1.0},
                  "baseline": {"name": "x"}}
    for name, read in (("summary.json", files.read_summary), ("eval_val.json", files.read_eval)):
        p = scratch / name
        original = json.loads((run / name).read_text()) if name == "summary.json" else evaluation
        if data.draw(st.booleans()):
            p.write_text(json.dumps(data.draw(wrong_values(original)), allow_nan=True))
        else:
            p.write_bytes(data.draw(damaged(json.dumps(original).encode())))
        only_user_errors(scratch, read, p)


@FUZZ_REPORT
@given(data=st.data())
def test_metrics_jsonl_and_the_report(run, scratch, data):
    from trainlab.report import write_report

    p = scratch / "metrics.jsonl"
    p.write_bytes(data.draw(damaged((run / "metrics.jsonl").read_bytes())))
    rows, bad = files.read_metrics(p)
    assert all(isinstance(r["step"], int) and isinstance(r["split"], str) for r in rows)
    before = digest(scratch)
    write_report(scratch)  # tolerates damage, notes it
    (scratch / "report.md").unlink()
    for png in scratch.glob("*.png"):
        png.unlink()
    assert digest(scratch) == before


@FUZZ
@given(data=st.data())
def test_config_toml(run, scratch, data):
    p = scratch / "config.toml"
    original = (run / "config.toml").read_bytes()
    if data.draw(st.booleans()):
        raw = __import__("tomllib").loads(original.decode())
        wrong = data.draw(wrong_values(raw))
        import tomli_w

        try:
            p.write_text(tomli_w.dumps(json.loads(json.dumps(wrong).replace("NaN", "0"))))
        except (TypeError, ValueError):
            return  # not representable in TOML (a null, a mixed list): no file to read
    else:
        p.write_bytes(data.draw(damaged(original)))
    only_user_errors(scratch, config.load_resolved, p)


@FUZZ
@given(data=st.data())
def test_checkpoint_state_and_weights(run, scratch, data):
    ckpt, intact = ((d / "checkpoints" / "last").resolve() for d in (scratch, run))
    for name in ("state.pt", "model.safetensors"):
        shutil.copy(intact / name, ckpt / name)
    target = data.draw(st.sampled_from(["state.pt", "model.safetensors"]))
    p = ckpt / target
    p.write_bytes(data.draw(damaged((intact / target).read_bytes())))
    model = models.build(config.load_resolved(scratch / "config.toml").model,
                         json.loads((scratch / "model" / "config.json").read_text())["info"])
    only_user_errors(ckpt, checkpoint.load, ckpt, model, True, True)


@FUZZ
@given(data=st.data())
def test_tokenizer_json(lm_tokenizer, tmp_path, data):
    p = tmp_path / "tokenizer.json"
    original = json.loads(lm_tokenizer.read_text())
    if data.draw(st.booleans()):
        p.write_text(json.dumps(data.draw(wrong_values(original))))
    else:
        p.write_bytes(data.draw(damaged(lm_tokenizer.read_bytes())))
    only_user_errors(tmp_path, tokenizer.load, p)


# ------------------------------------------------------------------------------------------ inputs from users


@FUZZ
@given(data=st.data())
def test_recipes(tmp_path, data):
    original = config.find_recipe("digits-cnn").read_bytes()
    p = tmp_path / "mine.toml"
    p.write_bytes(data.draw(damaged(original)))
    only_user_errors(tmp_path, config.load_recipe, str(p))


@FUZZ
@given(data=st.data())
def test_csv(tmp_path, data):
    rows = [["a", "b", "label"]] + [[f"{i * 0.5}", f"{i % 3}", "yes" if i % 2 else "no"] for i in range(20)]
    p = tmp_path / "t.csv"
    with p.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    p.write_bytes(data.draw(damaged(p.read_bytes())))
    only_user_errors(tmp_path, tabular.load_csv, str(p), data.draw(st.sampled_from(["", "label", "b"])),
                     data.draw(st.sampled_from(["auto", "classification", "regression", "unlabeled"])))


def _idx(x: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, x.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in x.shape) + x.tobytes()


@FUZZ
@given(data=st.data())
def test_idx_files(tmp_path, data):
    import gzip

    raw = _idx(np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4))
    zipped = data.draw(st.booleans())
    p = tmp_path / ("x-idx3-ubyte.gz" if zipped else "x-idx3-ubyte")
    p.write_bytes(data.draw(damaged(gzip.compress(raw) if zipped else raw)))
    only_user_errors(tmp_path, images.read_idx, str(p))


@FUZZ
@given(data=st.data())
def test_images(tmp_path, data):
    from PIL import Image

    p = tmp_path / f"x.{data.draw(st.sampled_from(['png', 'jpg', 'bmp', 'gif']))}"
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 3).save(p)
    p.write_bytes(data.draw(damaged(p.read_bytes())))
    only_user_errors(tmp_path, images.load_image, p, 8, data.draw(st.booleans()))


@FUZZ
@given(data=st.data())
def test_jsonl_and_text_files(tmp_path, data):
    rows = "".join(json.dumps({"text": f"document {i} é"}) + "\n" for i in range(5)).encode()
    jsonl, plain = tmp_path / "d.jsonl", tmp_path / "d.txt"
    jsonl.write_bytes(data.draw(damaged(rows)))
    plain.write_bytes(data.draw(damaged("some text, é\n".encode() * 5)))
    for source, path in (("jsonl", jsonl), ("text", plain)):
        cfg = config.data_table(source=source, path=str(path))
        only_user_errors(tmp_path, text.documents, cfg)
