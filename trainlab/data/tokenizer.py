"""Tokenizers: byte-level BPE (trained with Hugging Face `tokenizers`) and characters.

Both reserve the same special tokens: a document boundary and the chat roles later stages need. Both save to
one `tokenizer.json` (the BPE file is HF's own format, loadable by `tokenizers.Tokenizer.from_file`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator

from trainlab.errors import UserError

EOT = "<|endoftext|>"  # between documents
SPECIAL_TOKENS = [EOT, "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]


class CharTokenizer:
    """One token per character seen in the corpus (plus the special tokens, which come first)."""

    kind = "char"

    def __init__(self, chars: list[str]):
        self.itos = SPECIAL_TOKENS + chars
        self.stoi = {s: i for i, s in enumerate(self.itos)}

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 0) -> "CharTokenizer":
        seen: set[str] = set()
        for t in texts:
            seen.update(t)
        return cls(sorted(seen))

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    @property
    def eot_id(self) -> int:
        return self.stoi[EOT]

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise UserError(f"character {e.args[0]!r} is not in this character-level vocabulary",
                            "use only characters from the training corpus, or a BPE tokenizer") from None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.itos[i] if i >= len(SPECIAL_TOKENS) else "" for i in ids)

    def to_json(self) -> dict:
        return {"trainlab_tokenizer": "char", "chars": self.itos[len(SPECIAL_TOKENS):]}


class BPETokenizer:
    """Byte-level BPE (GPT-2's scheme): any text encodes, nothing is ever unknown."""

    kind = "bpe"

    def __init__(self, tok):
        self.tok = tok

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "BPETokenizer":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    @property
    def eot_id(self) -> int:
        return self.tok.token_to_id(EOT)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts)]  # parallel in Rust, on all cores

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def to_json(self) -> dict:
        return json.loads(self.tok.to_str())


def train_tokenizer(kind: str, texts: Iterator[str] | list[str], vocab_size: int):
    if kind == "char":
        return CharTokenizer.train(texts)
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise UserError(f"data.vocab_size = {vocab_size} is below the 256 bytes + {len(SPECIAL_TOKENS)} special tokens "
                        "a byte-level BPE starts from", "raise data.vocab_size (e.g. 2048) or use data.tokenizer=char")
    return BPETokenizer.train(texts, vocab_size)


def save(tokenizer, path: Path) -> None:
    path.write_text(json.dumps(tokenizer.to_json(), ensure_ascii=False))


def load(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no tokenizer at {path}", "give the run folder of a language-model run")
    text = path.read_text(encoding="utf-8")
    meta = json.loads(text)
    if meta.get("trainlab_tokenizer") == "char":
        return CharTokenizer(meta["chars"])
    from tokenizers import Tokenizer

    return BPETokenizer(Tokenizer.from_str(text))
