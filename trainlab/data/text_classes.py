"""Labelled text for classification (fine-tuning a pre-trained trunk): rows of token ids and a class per row.

    stdlib_classes   a real task that ships with Python: which standard-library package does a function come
                     from? One example per function or method (its source, or its docstring); label = the
                     top-level package. Split by file, with the `stdlib` text source's own rule
                     (text.stdlib_splits: stratified by package), so a GPT pre-trained on `data.source = "stdlib"`
                     with the same val/test fractions never saw a classification validation or test file.
    jsonl_classes    your own data: one JSON object per line with a text and a label (strings or integers),
                     split by data.split_seed, stratified by class

Every example is tokenized once into `block_size` token ids, right-padded with the tokenizer's `pad_id`. A longer
text keeps its first block_size tokens; a tokenizer whose post-processor adds special tokens ([CLS] ... [SEP] of
a BERT WordPiece) truncates inside them, so the closing token survives. Special tokens written literally in a text
("<|pad|>", "[PAD]", "<|endoftext|>") are encoded as ordinary text, so the padding id never occurs inside a real
text: models find the real tokens as `x != info["pad_id"]` (<|pad|>, [PAD]; a character vocabulary written before
format 2 pads with the document boundary, which no character encodes to). `encode` is the one function training
and `trainlab predict` share.

The tokenizer is data.tokenizer_path (a pre-trained run's tokenizer.json, or a Hugging Face folder's), else a
byte-level BPE trained on the training split's texts (the character vocabulary: every split's alphabet, as for
language models). The token arrays are cached under data.cache_dir, keyed by the settings, the files' sizes and
times, and the tokenizer file's hash. `data.label_fraction` keeps that fraction of the training labels (per class,
at least one each, by data.split_seed: the same subset for every run.seed, and 1% inside 10% inside 100%).
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt

from trainlab import registry
from trainlab.config import DataTable
from trainlab.data import Data, Split
from trainlab.data import text as text_lib
from trainlab.data import tokenizer as tok_lib
from trainlab.data.batches import BatchStream, eval_batches
from trainlab.errors import UserError

FORMAT_VERSION = 2  # 2: split by text.stdlib_splits
SPLITS = ("train", "val", "test")

# Packages of every CPython 3.11+ standard library with enough files (the split is by file) and functions that
# every split of the default 0.15/0.15 fractions holds some of each (counts on 3.11: README).
DEFAULT_PACKAGES = ["asyncio", "email", "encodings", "http", "importlib", "logging", "multiprocessing", "xml"]


class TextClassesTable(DataTable):
    """Labelled texts as rows of token ids: text classification."""

    tokenizer: Literal["bpe", "char"] = "bpe"  # byte-level BPE trained on the training split's texts, or characters
    vocab_size: int = Field(4096, ge=2)  # bpe
    tokenizer_path: str = ""  # a tokenizer.json to use instead (a pre-trained run's, a Hugging Face folder's)
    block_size: PositiveInt = 128  # tokens per example: a longer text keeps its first block_size (and a closing [SEP])
    label_fraction: float = Field(1.0, gt=0, le=1)  # keep this fraction of the training labels (per class, >= 1 each)
    trim: bool = True  # cut each batch to its longest example (false: always block_size columns, e.g. loop.compile)
    cache_dir: str = ""  # tokenized examples are cached here (default: ~/.cache/trainlab)
    # Against forgetting: this fraction of each step's examples are windows of the text the model was
    # pre-trained on, trained with next-token prediction beside the task (trainlab.data.replay; GPT only).
    replay_fraction: float = Field(0.0, ge=0, lt=1)
    replay_from: str = ""  # the pre-training run whose corpus is replayed (default: model.init_from)


class StdlibClasses(TextClassesTable):
    source: Literal["stdlib_classes"] = "stdlib_classes"
    packages: list[str] = DEFAULT_PACKAGES  # the classes: top-level packages of the running Python's standard library
    field: Literal["source", "docstring"] = "source"  # a function's text: its source code, or its docstring
    min_lines: PositiveInt = 3  # leave out functions with fewer lines of source


class JSONLClasses(TextClassesTable):
    source: Literal["jsonl_classes"] = "jsonl_classes"
    path: str = ""  # a JSONL file or a glob: one example per line
    text_field: str = "text"  # the field holding the text
    label_field: str = "label"  # the field holding the class: strings or integers


@registry.source("stdlib_classes", StdlibClasses, provides={"tokens", "labels"})
def build_stdlib_classes(cfg: StdlibClasses) -> "TextClassesData":
    """Which standard-library package a function comes from (its source or docstring); split by file."""
    return TextClassesData(cfg)


@registry.source("jsonl_classes", JSONLClasses, provides={"tokens", "labels"})
def build_jsonl_classes(cfg: JSONLClasses) -> "TextClassesData":
    """JSONL: one labelled text per line (data.text_field, data.label_field)."""
    return TextClassesData(cfg)


# ------------------------------------------------------------------------------------------------- examples


@dataclass
class Examples:
    texts: list[str]
    labels: np.ndarray  # int64 class indices
    class_names: list[str]
    split: np.ndarray  # uint8: 0 train, 1 val, 2 test
    files: dict[str, list[str]] | None = None  # stdlib: the files of each split (those with examples)
    skipped_files: int = 0  # stdlib: files that are not UTF-8 or do not parse


def stdlib_packages() -> dict[str, list[Path]]:
    """The running Python's top-level standard-library packages and their .py files (tests left out)."""
    out: dict[str, list[Path]] = {}
    for f in text_lib.stdlib_files():
        parts = text_lib.stdlib_name(f).split("/")
        if len(parts) > 1 and parts[0].isidentifier() and not parts[0].startswith("_"):
            out.setdefault(parts[0], []).append(f)
    return out


def _package_files(cfg: StdlibClasses) -> dict[str, list[Path]]:
    found = stdlib_packages()
    names = list(dict.fromkeys(cfg.packages))
    for name in names:
        if name not in found:
            raise UserError(f"data.packages: '{name}' is not a package of this Python's standard library (Python "
                            f"{sys.version_info.major}.{sys.version_info.minor} has {', '.join(sorted(found))})",
                            "pick packages from that list")
    if len(names) < 2:
        raise UserError(f"data.packages = {cfg.packages} gives {len(names)} class; classification needs at least two",
                        'list two or more packages, e.g. data.packages=["json", "email"]')
    return {name: found[name] for name in sorted(names)}




def functions(tree: ast.Module) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    """Top-level functions and the methods of classes (nested classes too), in source order; not functions
    defined inside functions."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node
        elif isinstance(node, ast.ClassDef):
            yield from functions(node)  # a ClassDef has a body like a module's


def source_text(lines: list[bytes], node: ast.AST) -> str:
    """The source of `node` (what ast.get_source_segment gives, in linear rather than quadratic time), with the
    lines after the first dedented by the indentation of the first: a method reads like a function."""
    first, last, col = node.lineno - 1, node.end_lineno - 1, node.col_offset
    chunk = list(lines[first:last + 1])
    chunk[-1] = chunk[-1][:node.end_col_offset]  # offsets are in UTF-8 bytes
    chunk[0] = chunk[0][col:]
    out = [chunk[0]] + [line[col:] if not line[:col].strip() else line for line in chunk[1:]]
    return b"\n".join(out).decode("utf-8", errors="replace")


def stdlib_examples(cfg: StdlibClasses) -> Examples:
    """Every function of data.packages with at least data.min_lines lines (and a docstring, for
    field = "docstring"); the split is its file's."""
    packages = _package_files(cfg)
    names = list(packages)
    texts, labels, split, skipped = [], [], [], 0
    files: dict[str, list[str]] = {s: [] for s in SPLITS}
    where = text_lib.stdlib_splits(cfg.val_fraction, cfg.test_fraction)  # the language-model corpus's own split
    for k, name in enumerate(names):
        for f in packages[name]:
            try:
                raw = f.read_bytes()
                with warnings.catch_warnings():  # invalid escape sequences in old code: not our business
                    warnings.simplefilter("ignore")
                    tree = ast.parse(raw.decode("utf-8"), filename=str(f))
            except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
                skipped += 1
                continue
            lines = re.split(rb"\r\n|\r|\n", raw)  # the line breaks ast counts (not form feeds)
            s = SPLITS.index(where[text_lib.stdlib_name(f)])
            n = len(texts)
            for node in functions(tree):
                if node.end_lineno - node.lineno + 1 < cfg.min_lines:
                    continue
                if cfg.field == "docstring":
                    t = ast.get_docstring(node)
                    if not t or not t.strip():
                        continue
                else:
                    t = source_text(lines, node)
                texts.append(t)
                labels.append(k)
                split.append(s)
            if len(texts) > n:
                files[SPLITS[s]].append(str(f))
    return Examples(texts, np.asarray(labels, dtype=np.int64), names, np.asarray(split, dtype=np.uint8), files,
                    skipped)


def jsonl_examples(cfg: JSONLClasses) -> Examples:
    """The rows of data.path, checked (each problem is one line naming the file and line), split by
    data.split_seed, stratified by class."""
    from trainlab.data.split import split_indices

    texts, raw_labels = [], []
    kind: tuple[type, str] | None = None  # the labels' type and where it was first seen
    files = text_lib.user_files(text_lib._path(cfg))
    for f, n, row in text_lib.jsonl_rows(files):
        where = f"{f} line {n}"
        if not isinstance(row, dict):
            example = json.dumps({cfg.text_field: "...", cfg.label_field: "..."})
            raise UserError(f"{where} is not a JSON object (got {type(row).__name__})",
                            f"give one object per line, e.g. {example}")
        if cfg.text_field not in row:
            raise UserError(f"{where} has no text field '{cfg.text_field}' (its fields: {_fields(row)})",
                            "set data.text_field to the field holding the text")
        t = row[cfg.text_field]
        if not isinstance(t, str):
            raise UserError(f"{where}: the text field '{cfg.text_field}' holds {_json_type(t)}, not a string",
                            "give the text as a JSON string")
        if not t.strip():
            raise UserError(f"{where}: the text field '{cfg.text_field}' is empty",
                            "remove the row or give its text")
        if cfg.label_field not in row:
            raise UserError(f"{where} has no label field '{cfg.label_field}' (its fields: {_fields(row)})",
                            "set data.label_field to the field holding the class")
        y = row[cfg.label_field]
        if isinstance(y, bool) or not isinstance(y, (str, int)):
            raise UserError(f"{where}: the label {json.dumps(y)[:40]} is {_json_type(y)}; labels must be strings "
                            "or integers", "give each class as a string (\"spam\") or an integer (0, 1, ...)")
        if kind is None:
            kind = (type(y), where)
        elif type(y) is not kind[0]:
            raise UserError(f"{where}: the label {json.dumps(y)[:40]} is {_json_type(y)}, but {kind[1]} has "
                            f"{_json_type(kind[0]())} label",
                            "give every label as a string, or every label as an integer")
        texts.append(t)
        raw_labels.append(y)
    if not texts:
        raise UserError(f"{cfg.path} holds no examples" + (" (the file is empty)" if len(files) == 1 else ""),
                        "give a JSONL file with one labelled text per line")
    names = sorted(set(raw_labels))  # integers numerically, strings alphabetically
    if len(names) < 2:
        raise UserError(f"all {len(texts)} examples in {cfg.path} have the label {json.dumps(names[0])}: "
                        "classification needs at least two classes", f"check data.label_field ('{cfg.label_field}')")
    lookup = {v: i for i, v in enumerate(names)}
    labels = np.asarray([lookup[v] for v in raw_labels], dtype=np.int64)
    idx = split_indices(len(texts), cfg.val_fraction, cfg.test_fraction, cfg.split_seed, labels)
    split = np.zeros(len(texts), dtype=np.uint8)
    split[idx["val"]], split[idx["test"]] = 1, 2
    return Examples(texts, labels, [str(v) for v in names], split)


def _fields(row: dict) -> str:
    keys = list(row)
    return ", ".join(map(repr, keys[:8])) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "") or "none"


def _json_type(v) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number with a fraction", str: "a string",
            list: "a list", dict: "an object", type(None): "null"}.get(type(v), type(v).__name__)


# ------------------------------------------------------------------------------------------------- encoding


def encode(tokenizer, texts: list[str], block_size: int, what: str = "example") -> tuple[np.ndarray, np.ndarray]:
    """Texts -> (int64 (N, block_size) token ids right-padded with tokenizer.pad_id, int64 (N,) real lengths).
    The first block_size tokens of a longer text; a Hugging Face tokenizer truncates through its own truncation,
    so the special tokens its post-processor adds ([CLS] ... [SEP]) stay. Special tokens written in a text are
    encoded as text. Training and prediction both call this."""
    pad = tokenizer.pad_id
    if isinstance(tokenizer, tok_lib.BPETokenizer):
        from tokenizers import Tokenizer

        enc = Tokenizer.from_str(tokenizer.tok.to_str())  # a copy: the settings below are not saved anywhere
        added = enc.post_processor.num_special_tokens_to_add(False) if enc.post_processor is not None else 0
        if block_size <= added:
            raise UserError(f"data.block_size = {block_size} leaves no room for text beside the {added} special "
                            "tokens this tokenizer adds to every text", f"raise data.block_size above {added}")
        enc.no_padding()
        enc.enable_truncation(max_length=block_size)
        enc.encode_special_tokens = True  # "<|pad|>" or "[PAD]" in a text is text, never the padding token
        rows = [e.ids for e in enc.encode_batch(texts)]
    else:  # characters: one token each, so cutting the text first is the same and faster
        rows = [tokenizer.encode(t[:block_size]) for t in texts]
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    ids = np.full((len(rows), block_size), pad, dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
    if len(rows) and lengths.min() == 0:
        i = int(lengths.argmin())
        raise UserError(f"{what} {i} is empty: it has no tokens", "give every text some content")
    inside = (ids == pad) & (np.arange(block_size)[None, :] < lengths[:, None])
    if inside.any():  # cannot happen with trainlab's BPE (<|pad|>), BERT ([PAD]) or characters; a foreign
        i = int(inside.any(1).argmax())  # tokenizer could still add its padding token to every text
        raise UserError(f"{what} {i} encodes to the padding token (id {pad}) inside its text, so models could not "
                        "tell its tokens from padding",
                        "use a tokenizer with a padding token of its own ([PAD], <|pad|>)")
    return ids, lengths


def trim(x: torch.Tensor, pad_id: int) -> torch.Tensor:
    """A batch of right-padded rows cut to its longest real row (at least one column)."""
    if x.numel() == 0:
        return x
    n = max(1, int((x != pad_id).sum(1).max()))
    return x[:, :n] if n < x.shape[1] else x


class TrimmedBatchStream(BatchStream):
    """BatchStream whose batches are cut to their longest example (the same examples, the same state)."""

    def __init__(self, split, batch_size: int, seed: int, pad_id: int | None):
        super().__init__(split, batch_size, seed)
        self.pad_id = pad_id

    def _fetch(self, ids: torch.Tensor, params) -> dict[str, torch.Tensor]:
        batch = super()._fetch(ids, params)
        if self.pad_id is not None:
            batch["x"] = trim(batch["x"], self.pad_id)
        return batch


# ---------------------------------------------------------------------------------------------------- cache


def _key(cfg: TextClassesTable) -> str:
    if cfg.source == "stdlib_classes":
        files = [f for fs in _package_files(cfg).values() for f in fs]
        settings = {k: getattr(cfg, k) for k in ("packages", "field", "min_lines")}
        settings["packages"] = sorted(set(cfg.packages))
        ident = [sys.version]
    else:
        files = text_lib.user_files(text_lib._path(cfg))
        settings = {k: getattr(cfg, k) for k in ("text_field", "label_field", "split_seed")}
        ident = []
    ident += [f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files]
    settings.update({k: getattr(cfg, k) for k in ("source", "tokenizer", "vocab_size", "block_size", "val_fraction",
                                                  "test_fraction")})
    if cfg.tokenizer_path:  # a given tokenizer: its content decides the tokens
        settings["tokenizer_file"] = hashlib.sha256(text_lib._read_bytes(cfg.tokenizer_path)).hexdigest()
        settings.pop("vocab_size")
    blob = json.dumps([FORMAT_VERSION, settings, ident], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def prepare(cfg: TextClassesTable) -> Path:
    """The cache folder of `cfg`: tokenizer.json, tokens.npy (N, block_size), labels.npy, split.npy, meta.json;
    built once per key (written to a temporary folder, then renamed)."""
    root = text_lib.cache_root(cfg)
    folder = root / f"{cfg.source}-{_key(cfg)}"
    if (folder / "meta.json").is_file():
        return folder
    start = time.perf_counter()
    ex = stdlib_examples(cfg) if cfg.source == "stdlib_classes" else jsonl_examples(cfg)
    counts = {s: np.bincount(ex.labels[ex.split == k], minlength=len(ex.class_names)) for k, s in enumerate(SPLITS)}
    lacking = [n for n, c in zip(ex.class_names, counts["train"]) if c == 0]
    if lacking:
        stdlib = cfg.source == "stdlib_classes"
        raise UserError(f"{'classes' if len(lacking) > 1 else 'class'} {', '.join(map(repr, lacking))} "
                        f"{'have' if len(lacking) > 1 else 'has'} no training examples ("
                        + ("all its files fall in validation or test)" if stdlib else "too few examples)"),
                        "leave it out of data.packages" if stdlib else "add examples of it")
    if not counts["val"].sum():
        raise UserError(f"the validation split of data.source = '{cfg.source}' is empty",
                        "raise data.val_fraction, or give more data")
    print(f"tokenizing {len(ex.texts):,} examples of {len(ex.class_names)} classes "
          f"(train/val/test {', '.join(str(int(counts[s].sum())) for s in SPLITS)}) into {folder}", flush=True)
    for s in ("val", "test"):
        empty = [n for n, c in zip(ex.class_names, counts[s]) if c == 0]
        if empty and (s == "val" or cfg.test_fraction > 0):
            print(f"note: the {s} split has no examples of {', '.join(empty)}"
                  + (" (the split is by file)" if cfg.source == "stdlib_classes" else ""), flush=True)
    train_texts = [t for t, s in zip(ex.texts, ex.split) if s == 0]
    if cfg.tokenizer_path:
        tokenizer = tok_lib.load(Path(cfg.tokenizer_path))
    elif cfg.tokenizer == "bpe":
        tokenizer = tok_lib.train_tokenizer("bpe", iter(train_texts), cfg.vocab_size)
    else:  # a character vocabulary covers every split, or a character first seen in validation could not encode
        tokenizer = tok_lib.train_tokenizer("char", iter(ex.texts), 0)
    ids, lengths = encode(tokenizer, ex.texts, cfg.block_size)
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
    tmp = text_lib.scratch_folder(folder)
    if cfg.tokenizer_path:
        shutil.copyfile(cfg.tokenizer_path, tmp / "tokenizer.json")  # the file as given, byte for byte
    else:
        tok_lib.save(tokenizer, tmp / "tokenizer.json")
    np.save(tmp / "tokens.npy", ids.astype(dtype))
    np.save(tmp / "labels.npy", ex.labels)
    np.save(tmp / "split.npy", ex.split)
    meta = {"version": FORMAT_VERSION, "source": cfg.source, "class_names": ex.class_names,
            "tokenizer": tokenizer.kind, "vocab_size": tokenizer.vocab_size, "pad_id": tokenizer.pad_id,
            "eot_id": tokenizer.eot_id, "mask_id": tokenizer.mask_id, "examples": len(ex.texts),
            "truncated": int((lengths >= cfg.block_size).sum()), "mean_tokens": float(lengths.mean()),
            "skipped_files": ex.skipped_files, "files": ex.files,
            "seconds": round(time.perf_counter() - start, 2)}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    return text_lib.publish(tmp, folder)


# ----------------------------------------------------------------------------------------------------- data


def labelled_subset(labels: np.ndarray, train: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """`fraction` of the training indices `train`, per class (at least one each), in a fixed order per class drawn
    from (seed, class): a smaller fraction's subset lies inside a larger one's."""
    if fraction >= 1:
        return train
    kept = []
    for c in np.unique(labels[train]):
        members = train[labels[train] == c]
        order = np.random.default_rng([seed, int(c)]).permutation(len(members))
        kept.append(members[order[:max(1, round(fraction * len(members)))]])
    return np.sort(np.concatenate(kept))


class TextClassesData(Data):
    """Rows of token ids (x: int64 (N, block_size), right-padded) and class indices (y), in the Data contract;
    batches are cut to their longest example (data.trim)."""

    def __init__(self, cfg: TextClassesTable):
        folder = prepare(cfg)
        meta = json.loads((folder / "meta.json").read_text())
        x = torch.from_numpy(np.load(folder / "tokens.npy").astype(np.int64))
        labels = np.load(folder / "labels.npy")
        split = np.load(folder / "split.npy")
        y = torch.from_numpy(labels)
        idx = {s: np.flatnonzero(split == k) for k, s in enumerate(SPLITS)}
        idx["train"] = labelled_subset(labels, idx["train"], cfg.label_fraction, cfg.split_seed)
        splits = {s: Split(x[torch.from_numpy(i)], y[torch.from_numpy(i)]) for s, i in idx.items()}
        names = meta["class_names"]
        per_class = np.bincount(labels[idx["train"]], minlength=len(names))
        info = {"task": "classification", "source": cfg.source, "num_classes": len(names), "class_names": names,
                "vocab_size": meta["vocab_size"], "block_size": cfg.block_size, "pad_id": meta["pad_id"],
                "eot_id": meta["eot_id"], "mask_id": meta["mask_id"], "tokenizer": meta["tokenizer"],
                "split_sizes": {s: len(v) for s, v in splits.items()}, "capabilities": ["tokens", "labels"],
                "examples_per_class": {n: int(c) for n, c in zip(names, per_class)},
                "label_fraction": cfg.label_fraction,
                "truncated_fraction": meta["truncated"] / max(1, meta["examples"]),
                "tokenizer_sha256": tok_lib.digest(folder / "tokenizer.json")}
        super().__init__(splits, info, cfg)
        self.folder, self.meta = folder, meta
        self.files = meta.get("files")  # stdlib_classes: the files of each split

    @property
    def pad_id(self) -> int:
        return self.info["pad_id"]

    def train_batches(self, seed: int) -> TrimmedBatchStream:
        pad = self.pad_id if self.cfg.trim else None
        return TrimmedBatchStream(self.splits["train"], self.cfg.batch_size, seed, pad)

    def eval_batches(self, split: str, limit: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        for batch in eval_batches(self.splits[split], self.cfg.eval_batch_size, limit):
            if self.cfg.trim:
                batch["x"] = trim(batch["x"], self.pad_id)
            yield batch

    def export(self, model_dir) -> None:
        shutil.copyfile(self.folder / "tokenizer.json", Path(model_dir) / "tokenizer.json")
