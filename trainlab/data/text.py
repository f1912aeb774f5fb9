"""Text for language models: corpora, whole-document splits, tokenize once into packed files, random windows.

    corpus     the Python standard library's own source (default: ~12 MB on every machine, no download),
               users' text files / folders / globs, JSONL with a text field, HF datasets saved on disk
    split      whole documents go to train / val / test by a stable hash of their name (the standard library:
               stratified by package, `stdlib_splits`)
    pack       every split tokenized once into a flat uint16 (uint32 when the vocabulary needs it) file, each
               document followed by <|endoftext|>; cached under data.cache_dir by a hash of corpus,
               tokenizer and settings
    batches    random windows of block_size + 1 tokens: idx = w[:-1], targets = w[1:]
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from typing import Literal

from pydantic import Field, PositiveInt

from trainlab import registry
from trainlab.config import DataTable
from trainlab.data import tokenizer as tok_lib
from trainlab.data.batches import DatasetStream, GlobalBatches
from trainlab.errors import UserError


class TextTable(DataTable):
    """Text for language models: tokenized once into packed files, trained on random windows."""

    tokenizer: Literal["bpe", "char"] = "bpe"  # byte-level BPE trained on the training split, or characters
    vocab_size: int = Field(4096, ge=2)  # bpe
    tokenizer_path: str = ""  # a tokenizer.json to use instead of training one (set by model.init_from)
    block_size: PositiveInt = 256  # tokens of context per training window
    # Hold out whole documents (by a stable hash of their names), or cut the concatenated text: the last
    # val_fraction + test_fraction of it ("tail": one-file corpora).
    split: Literal["documents", "tail"] = "documents"
    max_bytes: int = Field(0, ge=0)  # use documents (in a stable hash order) up to this many bytes (0 = all)
    cache_dir: str = ""  # packed token files are cached here (default: ~/.cache/trainlab)


class StdlibText(TextTable):
    source: Literal["stdlib"] = "stdlib"
    on_decode_error: Literal["skip", "error"] = "skip"  # a file that is not UTF-8: leave it out (counted) or stop


class TextFiles(TextTable):
    source: Literal["text"] = "text"
    path: str = ""  # a file, a folder or a glob
    on_decode_error: Literal["skip", "error"] = "skip"  # a file that is not UTF-8: leave it out (counted) or stop


class JSONLText(TextTable):
    source: Literal["jsonl"] = "jsonl"
    path: str = ""  # a file or a glob
    text_field: str = "text"  # the field holding the text


class HFDiskText(TextTable):
    source: Literal["hf_disk"] = "hf_disk"
    path: str = ""  # the folder of Dataset.save_to_disk
    text_field: str = "text"  # the column holding the text


@registry.source("stdlib", StdlibText, provides={"tokens"})
def build_stdlib(cfg: StdlibText):
    """The running Python's standard library source (~12 MB of text on every machine)."""
    return TextData(cfg)


@registry.source("text", TextFiles, provides={"tokens"})
def build_text(cfg: TextFiles):
    """Your text files: a file, a folder or a glob; one document per file."""
    return TextData(cfg)


@registry.source("jsonl", JSONLText, provides={"tokens"})
def build_jsonl(cfg: JSONLText):
    """JSONL: one document per line, its text in data.text_field."""
    return TextData(cfg)


@registry.source("hf_disk", HFDiskText, provides={"tokens"})
def build_hf_disk(cfg: HFDiskText):
    """A Hugging Face dataset saved with save_to_disk (needs `datasets`); its text column."""
    return TextData(cfg)

FORMAT_VERSION = 3  # 2: BPE vocabularies reserve <|pad|> and <|mask|>; stdlib splits by package; 3: BPE splits digits
SPLITS = ("train", "val", "test")


# ------------------------------------------------------------------------------------------------ corpora


def human_size(n: float, unit: str = "B") -> str:
    """A count in the decimal prefix that fits: 812 characters, 47.1 K characters, 3.2 M characters,
    1.1 G characters; bytes (unit "B") as 812 B, 47.1 KB, 3.2 MB, 1.1 GB."""
    prefixes = ["", "K", "M", "G", "T", "P"]
    i, v = 0, float(n)
    while abs(v) >= 999.95 and i < len(prefixes) - 1:  # 999,960 is 1.0 M, not 1000.0 K
        v /= 1000
        i += 1
    number = f"{v:,.0f}" if i == 0 else f"{v:.1f}"
    sep = "" if unit == "B" and i else " "
    return f"{number} {prefixes[i]}{sep}{unit}" if i else f"{number} {unit}"


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[Path]:
    """The standard library's .py files of the running interpreter, without tests and site-packages."""
    root = stdlib_root()
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test"}
    return sorted(f for f in root.rglob("*.py") if not skip & set(f.relative_to(root).parts))


def stdlib_name(f: Path) -> str:
    """A standard-library file's name as a document: its path inside the library ("asyncio/events.py"), the
    same on every machine with this Python version, so splits are too."""
    return f.relative_to(stdlib_root()).as_posix()


def stdlib_splits(val: float, test: float) -> dict[str, str]:
    """Every standard-library file's split (by stdlib_name), stratified by top-level package: within each package
    (the top-level modules form one group) files are ranked by a stable hash of their names, and the first
    round(val * n) go to validation, the next round(test * n) to test, at least one each when the package has 3
    or more files. The language-model corpus (data.source = "stdlib") and the labelled functions
    (data.source = "stdlib_classes") both split by this rule, so with equal fractions a model pre-trained on the
    first has never trained on the files the second validates and tests on."""
    groups: dict[str, list[str]] = {}
    for f in stdlib_files():
        name = stdlib_name(f)
        groups.setdefault(name.split("/")[0] if "/" in name else "", []).append(name)
    out: dict[str, str] = {}
    for names in groups.values():
        ranked = sorted(names, key=_bucket)
        n = len(ranked)
        n_val, n_test = round(val * n), round(test * n)
        if n >= 3:
            n_val, n_test = max(n_val, 1 if val > 0 else 0), max(n_test, 1 if test > 0 else 0)
        while n_val + n_test >= n and n_val + n_test > 0:  # at least one training file
            n_test, n_val = (n_test - 1, n_val) if n_test >= n_val else (n_test, n_val - 1)
        for i, name in enumerate(ranked):
            out[name] = "val" if i < n_val else "test" if i < n_val + n_test else "train"
    return out


def user_files(path: str) -> list[Path]:
    if any(ch in path for ch in "*?["):
        files = [Path(p) for p in sorted(glob.glob(path, recursive=True)) if Path(p).is_file()]
    elif Path(path).is_dir():
        files = sorted(f for f in Path(path).rglob("*") if f.is_file() and not f.name.startswith("."))
    elif Path(path).is_file():
        files = [Path(path)]
    else:
        raise UserError(f"text path {path} does not exist", "set data.path to a file, a folder or a glob")
    if not files:
        raise UserError(f"no files match {path}", "set data.path to a file, a folder or a glob")
    return files


def documents(cfg: TextTable) -> tuple[list[tuple[str, str]], int]:
    """(name, text) pairs and the number of files skipped for not being UTF-8."""
    if cfg.source == "jsonl":
        return _jsonl_documents(cfg), 0
    if cfg.source == "hf_disk":
        return _hf_documents(cfg), 0
    files = stdlib_files() if cfg.source == "stdlib" else user_files(_path(cfg))
    docs, skipped = [], 0
    for f in files:
        try:
            docs.append((stdlib_name(f) if cfg.source == "stdlib" else str(f), f.read_text(encoding="utf-8")))
        except UnicodeDecodeError as e:
            if getattr(cfg, "on_decode_error", "skip") == "error":
                raise UserError(f"{f} is not UTF-8 text ({e.reason} at byte {e.start})",
                                "set data.on_decode_error=skip to leave such files out") from None
            skipped += 1
    return docs, skipped


def jsonl_rows(files: list[Path]) -> Iterator[tuple[Path, int, object]]:
    """(file, line number, value) of every non-blank line of JSONL files. A file that is not UTF-8 or cannot be
    read, or a line that is not JSON, is one UserError naming the file and line."""
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:  # JSON is UTF-8 by definition: a file that is not cannot be read as rows
            line = f.read_bytes()[:e.start].count(b"\n") + 1
            raise UserError(f"{f} is not UTF-8 text (line {line}, byte {e.start})",
                            "convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
        except OSError as e:
            raise UserError(f"cannot read {f} ({e.strerror or type(e).__name__})", "check data.path") from None
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{f} line {n} is not JSON: {e.msg}", "give one JSON object per line") from None
            yield f, n, row


def _jsonl_documents(cfg: TextTable) -> list[tuple[str, str]]:
    docs = []
    for f, n, row in jsonl_rows(user_files(_path(cfg))):
        if not isinstance(row, dict) or not isinstance(row.get(cfg.text_field), str):
            raise UserError(f"{f} line {n} has no text field '{cfg.text_field}'", "set data.text_field")
        docs.append((f"{f}:{n}", row[cfg.text_field]))
    return docs


def _hf_documents(cfg: TextTable) -> list[tuple[str, str]]:
    try:
        from datasets import load_from_disk
    except ImportError:
        raise UserError("data.source = 'hf_disk' needs the `datasets` package", "pip install datasets") from None
    try:
        ds = load_from_disk(_path(cfg))
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"cannot load a dataset saved on disk at {cfg.path}: {e}",
                        "give a folder written by Dataset.save_to_disk") from None
    parts = dict(ds) if hasattr(ds, "keys") else {"": ds}  # a DatasetDict: every split's rows are documents
    rows = []
    for key, part in parts.items():
        if cfg.text_field not in part.column_names:
            raise UserError(f"the dataset has no column '{cfg.text_field}'; it has {part.column_names}",
                            "set data.text_field")
        rows += [(f"{key}:{i}", t) for i, t in enumerate(part[cfg.text_field])]
    return rows


def _path(cfg: TextTable) -> str:
    if not cfg.path:
        raise UserError(f"data.source = '{cfg.source}' needs data.path", f"add data.path=/path/to/your/{cfg.source}")
    return cfg.path


def _bucket(name: str) -> float:
    """A stable number in [0, 1) per document name: the same document always lands in the same split."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64


def split_documents(docs: list[tuple[str, str]], val: float, test: float) -> dict[str, list[str]]:
    ranked = sorted(docs, key=lambda d: _bucket(d[0]))
    out = {s: [] for s in SPLITS}
    for name, text in ranked:
        b = _bucket(name)
        out["val" if b < val else "test" if b < val + test else "train"].append(text)
    # Tiny corpora: make sure validation (and test, when asked for) hold at least one document.
    for s, want in (("val", val > 0), ("test", test > 0)):
        if want and not out[s] and len(out["train"]) > 1:
            out[s].append(out["train"].pop())
    return out


def split_corpus(cfg: TextTable, docs: list[tuple[str, str]]) -> dict[str, list[str]]:
    """The texts of each split, by data.split: whole documents by hash (the standard library: `stdlib_splits`,
    stratified by package over the whole library, whatever max_bytes kept), or the tail of the text."""
    if cfg.split == "tail":  # like nanoGPT's shakespeare: the first 90% of the text trains, the rest validates
        text = "\n".join(t for _, t in docs)
        a = int(len(text) * (1 - cfg.val_fraction - cfg.test_fraction))
        b = int(len(text) * (1 - cfg.test_fraction))
        return {"train": [text[:a]], "val": [text[a:b]], "test": [text[b:]] if b < len(text) else []}
    if cfg.source == "stdlib":
        where = stdlib_splits(cfg.val_fraction, cfg.test_fraction)
        return {s: [t for name, t in sorted(docs, key=lambda d: _bucket(d[0])) if where[name] == s] for s in SPLITS}
    return split_documents(docs, cfg.val_fraction, cfg.test_fraction)


# ------------------------------------------------------------------------------------------------ packing


def cache_root(cfg: TextTable) -> Path:
    return Path(cfg.cache_dir) if cfg.cache_dir else Path.home() / ".cache" / "trainlab"


def _corpus_key(cfg: TextTable) -> str:
    if cfg.source == "stdlib":
        files = stdlib_files()
    elif cfg.source == "hf_disk":
        files = [f for f in sorted(Path(_path(cfg)).rglob("*")) if f.is_file()]
    else:
        files = user_files(_path(cfg))
    ident = [sys.version] + [f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files]
    settings = {k: getattr(cfg, k, None) for k in ("source", "text_field", "tokenizer", "vocab_size", "val_fraction",
                                                   "test_fraction", "max_bytes", "on_decode_error", "split")}
    if cfg.tokenizer_path:  # a given tokenizer: its content, not its settings, decides the tokens
        settings["tokenizer_file"] = hashlib.sha256(_read_bytes(cfg.tokenizer_path)).hexdigest()
    blob = json.dumps([FORMAT_VERSION, settings, ident])
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def pack(cfg: TextTable) -> Path:
    """The cache folder with tokenizer.json, {train,val,test}.bin and meta.json; built once per key."""
    root = cache_root(cfg)
    folder = root / f"{cfg.source}-{cfg.tokenizer}-{_corpus_key(cfg)}"
    if (folder / "meta.json").is_file():
        return folder
    docs, skipped = documents(cfg)
    if cfg.max_bytes:  # a representative subset: documents in hash order until the budget is spent
        kept, total = [], 0
        for d in sorted(docs, key=lambda d: _bucket(d[0])):
            if total >= cfg.max_bytes:
                break
            kept.append(d)
            total += len(d[1].encode())
        docs = kept
    docs = [d for d in docs if d[1]]
    if not docs:
        raise UserError(f"the corpus from data.source = '{cfg.source}' is empty"
                        + (f" ({skipped} files skipped as not UTF-8)" if skipped else ""),
                        "point data.path at non-empty UTF-8 text")
    splits = split_corpus(cfg, docs)
    print(f"tokenizing {len(docs):,} documents ({human_size(sum(len(t) for _, t in docs), 'characters')}"
          + (f", {skipped} non-UTF-8 files skipped" if skipped else "") + f") into {folder}", flush=True)
    # BPE learns its merges from the training split only; a character vocabulary is the alphabet of the whole
    # corpus (as in nanoGPT), or a character first seen in validation could not be encoded at all.
    if cfg.tokenizer_path:
        tokenizer = tok_lib.load(Path(cfg.tokenizer_path))
    else:
        source_texts = splits["train"] if cfg.tokenizer == "bpe" else [t for s in SPLITS for t in splits[s]]
        tokenizer = tok_lib.train_tokenizer(cfg.tokenizer, iter(source_texts), cfg.vocab_size)
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32  # ids up to 65,535 fit in 16 bits
    tmp = scratch_folder(folder)
    tok_lib.save(tokenizer, tmp / "tokenizer.json")
    meta = {"version": FORMAT_VERSION, "dtype": np.dtype(dtype).name, "vocab_size": tokenizer.vocab_size,
            "tokenizer": tokenizer.kind, "skipped_files": skipped, "splits": {}}
    for s in SPLITS:
        n_tok = _write_tokens(tokenizer, splits[s], tmp / f"{s}.bin", dtype)
        meta["splits"][s] = {"documents": len(splits[s]), "tokens": n_tok,
                             "bytes": sum(len(t.encode()) for t in splits[s])}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    return publish(tmp, folder)


def scratch_folder(folder: Path) -> Path:
    """An empty temporary folder beside the cache folder `folder`, to build it in (see `publish`)."""
    tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def publish(tmp: Path, folder: Path) -> Path:
    """Rename a finished cache folder into place: readers see all of it or none; when another process built
    the same one first, keep theirs."""
    try:
        os.rename(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _read_bytes(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"cannot read data.tokenizer_path {path}: {e.strerror}",
                        "give the tokenizer.json of a trained run (its model/ folder)") from None


def _write_tokens(tokenizer, texts: list[str], path: Path, dtype) -> int:
    from tqdm import tqdm

    eot, chunk, n = tokenizer.eot_id, 256, 0
    with open(path, "wb") as f:
        for i in tqdm(range(0, len(texts), chunk), desc=path.stem, unit="chunk", disable=not sys.stderr.isatty()):
            for ids in tokenizer.encode_batch(texts[i:i + chunk]):
                a = np.asarray(ids + [eot], dtype=dtype)
                f.write(a.tobytes())
                n += len(a)
    return n


# ------------------------------------------------------------------------------------------------ batches


class WindowStream(GlobalBatches):
    """Random windows of block_size + 1 tokens; window positions of batch s come from a generator seeded by
    (seed, s), so the whole state is the batch count. Processes of a distributed run read different windows
    of the same global batch (see GlobalBatches.next_step)."""

    def __init__(self, tokens: np.ndarray, batch_size: int, block_size: int, seed: int):
        self.tokens, self.batch_size, self.block_size, self.seed = tokens, batch_size, block_size, seed
        self.step = 0
        self.batches_per_epoch = max(1, len(tokens) // (batch_size * block_size))  # one pass, in expectation

    @property
    def epoch(self) -> int:
        return self.step // self.batches_per_epoch

    def _draw(self) -> tuple[torch.Tensor, None]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step)
        starts = torch.randint(0, len(self.tokens) - self.block_size - 1, (self.batch_size,), generator=g)
        self.step += 1
        return starts, None

    def _fetch(self, starts: torch.Tensor, params: None) -> dict[str, torch.Tensor]:
        w = np.stack([self.tokens[s:s + self.block_size + 1] for s in starts.tolist()]).astype(np.int64)
        w = torch.from_numpy(w)
        return {"idx": w[:, :-1], "targets": w[:, 1:]}

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])


class TextData:
    unit = "tok"

    def __init__(self, cfg: TextTable):
        self.cfg = cfg
        self.folder = pack(cfg)
        meta = json.loads((self.folder / "meta.json").read_text())
        self.tokenizer = tok_lib.load(self.folder / "tokenizer.json")
        self.tokens = {s: np.memmap(self.folder / f"{s}.bin", dtype=meta["dtype"], mode="r")
                       if meta["splits"][s]["tokens"] else np.zeros(0, meta["dtype"]) for s in SPLITS}
        for s in ("train", "val"):
            if len(self.tokens[s]) < cfg.block_size + 2:
                raise UserError(f"the {s} split has {len(self.tokens[s])} tokens, fewer than data.block_size + 2 = "
                                f"{cfg.block_size + 2}", "use more text, a smaller data.block_size, or other fractions")
        bpt = {s: m["bytes"] / m["tokens"] if m["tokens"] else 0.0 for s, m in meta["splits"].items()}
        self.info = {"task": "language_modeling", "vocab_size": meta["vocab_size"], "block_size": cfg.block_size,
                     "tokenizer": meta["tokenizer"], "eot_id": self.tokenizer.eot_id, "bytes_per_token": bpt,
                     "pad_id": self.tokenizer.pad_id, "mask_id": self.tokenizer.mask_id,
                     "special_ids": sorted({i for i in (self.tokenizer.eot_id, self.tokenizer.pad_id) if i is not None}),
                     "split_sizes": {s: m["tokens"] for s, m in meta["splits"].items()},
                     "documents": {s: m["documents"] for s, m in meta["splits"].items()},
                     "skipped_files": meta["skipped_files"], "source": cfg.source,
                     "tokenizer_sha256": tok_lib.digest(self.folder / "tokenizer.json")}

    def count(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["idx"].numel()

    @property
    def batch_size(self) -> int:
        return self.cfg.batch_size

    @property
    def batches_per_epoch(self) -> int:
        return max(1, len(self.tokens["train"]) // (self.cfg.batch_size * self.cfg.block_size))  # in expectation

    def stream(self, seed: int, policy, plan) -> DatasetStream:
        return DatasetStream(self.train_batches(seed), plan)

    def validate(self, policy, limit: int = 0) -> dict[str, float]:
        from trainlab.data import validate_dataset

        return validate_dataset(self, policy, limit)

    def train_batches(self, seed: int) -> WindowStream:
        return WindowStream(self.tokens["train"], self.cfg.batch_size, self.cfg.block_size, seed)

    def eval_batches(self, split: str, limit: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        """Consecutive non-overlapping windows from the start of the split: the same tokens every time."""
        t, T, B = self.tokens[split], self.cfg.block_size, self.cfg.eval_batch_size
        n_windows = (len(t) - 1) // T
        for k, first in enumerate(range(0, n_windows, B)):
            if limit and k >= limit:
                return
            rows = [np.asarray(t[i * T:i * T + T + 1], dtype=np.int64) for i in range(first, min(first + B, n_windows))]
            w = torch.from_numpy(np.stack(rows))
            yield {"idx": w[:, :-1], "targets": w[:, 1:]}

    def export(self, model_dir: Path) -> None:
        shutil.copyfile(self.folder / "tokenizer.json", model_dir / "tokenizer.json")
