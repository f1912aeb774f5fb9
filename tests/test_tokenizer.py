"""Tokenizer files: a BPE run's tokenizer.json is Hugging Face's own format; the character format stays trainlab's.
And text typed on the command line: `trainlab sample --stop "\\n\\n"` means two newlines."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainlab.data import tokenizer as tok_lib
from trainlab.errors import UserError

TEXTS = [
    "Hello world, this is a test.\n\n  indented   runs of   spaces\tand\ttabs.\r\n",
    "héllo wörld — ünïcode: 日本語のテキスト, emoji 🙂🚀, Ελληνικά, русский.\n",
    "def main():\n    return [x ** 2 for x in range(10)]  # a comment\n\n\n",
    "<|endoftext|> between documents, and <|user|>a question<|end|><|assistant|>an answer<|end|>\n",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[str]:
    """A few KB of mixed text, written to a file and read back as the test's corpus."""
    f = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    lines = [f"line {i}: the {w} jumps over {i * 7} lazy dogs; naïve café №{i}\n"
             for i in range(80) for w in ("quick brown fox", "slow red cat")]
    f.write_text("".join(lines) + "".join(TEXTS) * 5, encoding="utf-8")
    text = f.read_text(encoding="utf-8")
    assert 4_000 < len(text.encode()) < 40_000
    return text.split("\n\n")


PROBES = TEXTS + [
    "", " ", "   ", "\n", "\n\n\n", "\t \t", "a  b   c    d",
    "<|endoftext|>", "x<|endoftext|>y", "<|endoftext|><|endoftext|>", "<|system|>be brief<|end|>",
    "never seen: ʕ•ᴥ•ʔ ∮ E⋅da = Q, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢, ﷽", "mixed\u00a0nbsp and\u200bzero width", "trailing spaces   ",
]


def test_bpe_tokenizer_json_is_hugging_face_format_and_encodes_the_same(tmp_path, corpus):
    from tokenizers import Tokenizer

    tok = tok_lib.train_tokenizer("bpe", iter(corpus), 320)
    path = tmp_path / "tokenizer.json"
    tok_lib.save(tok, path)
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert "model" in raw and raw["model"]["type"] == "BPE" and "trainlab_tokenizer" not in raw

    hf = Tokenizer.from_file(str(path))
    assert hf.get_vocab_size() == tok.vocab_size
    for name in tok_lib.SPECIAL_TOKENS:
        assert hf.token_to_id(name) == tok.tok.token_to_id(name) is not None
    for text in PROBES:
        ids = tok.encode(text)
        assert hf.encode(text).ids == ids, text
        assert hf.decode(ids, skip_special_tokens=True) == tok.decode(ids)

    for again in (tok_lib.load(path), tok_lib.load(str(path))):  # a str path as well as a Path
        assert again.kind == "bpe" and again.vocab_size == tok.vocab_size and again.eot_id == tok.eot_id
        assert [again.encode(t) for t in PROBES] == [tok.encode(t) for t in PROBES]


def test_a_tokenizer_json_saved_by_hugging_face_itself_loads(tmp_path, corpus):
    """Earlier trainlab versions wrote the same HF JSON; a file HF saves (pretty-printed) loads as well."""
    tok = tok_lib.train_tokenizer("bpe", iter(corpus), 300)
    tok.tok.save(str(tmp_path / "hf.json"), pretty=True)
    again = tok_lib.load(tmp_path / "hf.json")
    assert [again.encode(t) for t in PROBES] == [tok.encode(t) for t in PROBES]


def test_the_file_is_utf8_whatever_the_locale(tmp_path):
    """Byte-level vocabularies are full of non-ASCII ('Ġ'): under an ASCII locale saving used to fail."""
    script = (r"import sys; from trainlab.data import tokenizer as t; "  # ASCII only: the argv is decoded as ASCII
              r"tok = t.train_tokenizer('bpe', iter(['h\u00e9llo w\u00f6rld \u65e5\u672c ' * 50] * 20), 300); "
              r"t.save(tok, sys.argv[1]); "
              r"t.save(t.train_tokenizer('char', iter(['d\u00e9j\u00e0 \u65e5\u672c']), 0), sys.argv[2])")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path / "b.json"), str(tmp_path / "c.json")], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    from tokenizers import Tokenizer

    hf, ours = Tokenizer.from_file(str(tmp_path / "b.json")), tok_lib.load(tmp_path / "b.json")
    assert hf.encode("héllo 日本").ids == ours.encode("héllo 日本")
    char = tok_lib.load(tmp_path / "c.json")
    assert char.decode(char.encode("déjà 日本")) == "déjà 日本"


def test_char_tokenizer_keeps_its_own_format_and_old_files_load(tmp_path, monkeypatch):
    char = tok_lib.train_tokenizer("char", iter(["abc déf\n"]), 0)
    tok_lib.save(char, tmp_path / "c.json")
    raw = json.loads((tmp_path / "c.json").read_text(encoding="utf-8"))
    assert raw == {"trainlab_tokenizer": "char", "chars": sorted(set("abc déf\n")),
                   "specials": tok_lib.SPECIAL_TOKENS + [tok_lib.PAD, tok_lib.MASK]}
    assert char.pad_id == 5 and char.mask_id == 6
    # As an older trainlab wrote it (five specials implied, no padding or mask token) under a Latin-1 locale,
    # read under that locale: still loads, with its own ids.
    old = {"trainlab_tokenizer": "char", "chars": raw["chars"]}
    (tmp_path / "old.json").write_bytes(json.dumps(old, ensure_ascii=False).encode("latin-1"))
    import locale

    monkeypatch.setattr(locale, "getpreferredencoding", lambda do_setlocale=True: "latin-1")
    again = tok_lib.load(tmp_path / "old.json")
    assert again.encode("déf") == [i - 2 for i in char.encode("déf")]
    assert again.mask_id is None and again.pad_id == again.eot_id


def test_bad_tokenizer_files_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="no tokenizer at"):
        tok_lib.load(str(tmp_path / "none.json"))
    (tmp_path / "a.json").write_text("not json")
    with pytest.raises(UserError, match="not a tokenizer file"):
        tok_lib.load(tmp_path / "a.json")
    (tmp_path / "b.json").write_text('{"model": {"type": "Nope"}}')
    with pytest.raises(UserError, match="neither") as e:
        tok_lib.load(tmp_path / "b.json")
    assert "\n" not in e.value.message


# ------------------------------------------------------------------------------------- sample --stop escapes


@pytest.mark.parametrize("typed, meant", [
    (r"\n\n", "\n\n"), (r"a\tb", "a\tb"), (r"\r\n", "\r\n"), (r"\\n", "\\n"), (r"\u00e9t\u00E9", "été"),
    ("plain", "plain"), (r"C:\path\x", r"C:\path\x"), ("trailing\\", "trailing\\"), ("\n", "\n"), ("", ""),
])
def test_stop_strings_from_the_command_line_read_backslash_escapes(typed, meant):
    from trainlab.generate import unescape

    assert unescape(typed) == meant


def test_bad_unicode_escape_is_a_user_error():
    from trainlab.generate import unescape

    with pytest.raises(UserError, match="four hex digits"):
        unescape(r"\u12")


def test_sample_passes_unescaped_stop_strings_and_stops_at_a_blank_line(monkeypatch, capsys):
    """`trainlab sample --stop "\\n\\n"` (bash passes backslash-n): the model's fixed stream stops at the blank
    line. As in test_gpt's stop-string test, generate_ids is replaced by a script."""
    from trainlab import cli, models
    from trainlab import generate as gen
    from tests.test_gpt import tiny_gpt

    tok = tok_lib.CharTokenizer(list("ab\n\t"))
    model = tiny_gpt(vocab_size=tok.vocab_size)
    script = [tok.encode(c)[0] for c in "ab\na\t\nb\n\nbbb"]
    monkeypatch.setattr(models, "load", lambda path: (model, {"task": "language_modeling"}))
    monkeypatch.setattr(tok_lib, "load", lambda path: tok)
    monkeypatch.setattr(gen, "generate_ids", lambda *a, **k: iter(script))
    seen = {}
    real = gen.generate_text

    def spy(*a, **k):
        seen["stop"] = a[8]
        return real(*a, **k)

    monkeypatch.setattr(gen, "generate_text", spy)
    assert cli.main(["sample", "run", "--prompt", "a", "--stop", r"\n\n", "--stop", r"\tX"]) == 0
    assert seen["stop"] == ("\n\n", "\tX")
    assert capsys.readouterr().out == "a" + "ab\na\t\nb" + "\n"
    assert cli.main(["sample", "run", "--stop", r"\u12"]) == 2
    assert "four hex digits" in capsys.readouterr().err
