"""Tokenizers: byte-level BPE (trained with Hugging Face `tokenizers`) and characters.

Both reserve the same special tokens: a document boundary, the chat roles later stages need, padding and the
masked-LM's mask (the last two since format 2). Both save to one UTF-8 `tokenizer.json`:

    bpe   Hugging Face's own format, nothing added: `tokenizers.Tokenizer.from_file(path)` loads it and
          encodes to the same ids
    char  trainlab's own small format, `{"trainlab_tokenizer": "char", "specials": [...], "chars": [...]}`
          (ids: the specials, then the characters; a file without "specials" has the first five); only `load`
          here reads it
"""

from __future__ import annotations

import json
import locale
from pathlib import Path
from typing import Iterable, Iterator

from trainlab.errors import UserError

EOT = "<|endoftext|>"  # between documents
SPECIAL_TOKENS = [EOT, "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
PAD, MASK = "<|pad|>", "<|mask|>"  # padding for batches of texts, the masked-LM's hidden token (format 2)
# The same roles under the names other tokenizers give them (a BERT WordPiece, a Llama or GPT-2 BPE imported
# from Hugging Face): looked up in this order.
_ROLE_NAMES = {"eot": [EOT, "</s>", "<|end_of_text|>", "[SEP]"], "pad": [PAD, "[PAD]", "<pad>"],
               "mask": [MASK, "[MASK]", "<mask>"]}


class CharTokenizer:
    """One token per character seen in the corpus (plus the special tokens, which come first). Saved in
    trainlab's own format (see the module docstring), not Hugging Face's."""

    kind = "char"

    def __init__(self, chars: list[str], specials: list[str] | None = None):
        # Files written before the padding and mask tokens existed name no specials: theirs are the first five.
        self.specials = list(specials) if specials is not None else SPECIAL_TOKENS + [PAD, MASK]
        self.itos = self.specials + chars
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

    @property
    def pad_id(self) -> int:  # an old vocabulary without <|pad|> pads with the document boundary
        return self.stoi.get(PAD, self.stoi[EOT])

    @property
    def mask_id(self) -> int | None:
        return self.stoi.get(MASK)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise UserError(f"character {e.args[0]!r} is not in this character-level vocabulary",
                            "use only characters from the training corpus, or a BPE tokenizer") from None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.itos[i] if i >= len(self.specials) else "" for i in ids)

    def to_json(self) -> dict:
        return {"trainlab_tokenizer": "char", "specials": self.specials, "chars": self.itos[len(self.specials):]}


class BPETokenizer:
    """Byte-level BPE (GPT-2's scheme): any text encodes, nothing is ever unknown."""

    kind = "bpe"

    def __init__(self, tok):
        # A Hugging Face tokenizer.json may carry its own truncation and padding (MiniLM's: 128 tokens, padded):
        # corpora are packed whole and labelled text is cut and padded by trainlab itself.
        tok.no_truncation()
        tok.no_padding()
        self.tok = tok

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "BPETokenizer":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        # Every digit is a token of its own (as Llama's and DeepSeek's tokenizers do): a number is spelled the
        # same way wherever it appears, so models can copy and compute with it (format 3).
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False)])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS + [PAD, MASK], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def _role(self, role: str) -> int | None:
        for name in _ROLE_NAMES[role]:
            if (i := self.tok.token_to_id(name)) is not None:
                return i
        return None

    @property
    def eot_id(self) -> int | None:
        return self._role("eot")

    @property
    def pad_id(self) -> int:
        """<|pad|> ([PAD] in a BERT vocabulary); a tokenizer without one pads with its document boundary."""
        pad = self._role("pad")
        return pad if pad is not None else (self.eot_id if self.eot_id is not None else 0)

    @property
    def mask_id(self) -> int | None:
        return self._role("mask")

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
    if vocab_size < 256 + len(SPECIAL_TOKENS) + 2:
        raise UserError(f"data.vocab_size = {vocab_size} is below the 256 bytes + {len(SPECIAL_TOKENS) + 2} special tokens "
                        "a byte-level BPE starts from", "raise data.vocab_size (e.g. 2048) or use data.tokenizer=char")
    return BPETokenizer.train(texts, vocab_size)


def digest(path: str | Path) -> str:
    """The identity of a tokenizer file: runs record it, and a model is never fed another tokenizer's ids."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def save(tokenizer, path: str | Path) -> None:
    """Write `tokenizer.json` as UTF-8 (whatever the locale: a byte-level vocabulary is full of non-ASCII)."""
    Path(path).write_text(json.dumps(tokenizer.to_json(), ensure_ascii=False), encoding="utf-8")


def load(path: str | Path):
    """A tokenizer saved by `save`: trainlab's character format, or any Hugging Face `tokenizer.json`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no tokenizer at {path}", "give the run folder of a language-model run")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:  # a character vocabulary written by an older trainlab under a non-UTF-8 locale
        try:
            text = raw.decode(locale.getpreferredencoding(False))
        except UnicodeDecodeError:
            raise UserError(f"{path} is not UTF-8 text", "give the tokenizer.json written by a training run") from None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not a tokenizer file (not JSON: {e.msg})",
                        "give the tokenizer.json written by a training run") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path} is not a tokenizer file", "give the tokenizer.json written by a training run")
    if meta.get("trainlab_tokenizer") == "char":
        return CharTokenizer(meta["chars"], meta.get("specials", SPECIAL_TOKENS))
    from tokenizers import Tokenizer

    try:
        return BPETokenizer(Tokenizer.from_str(text))
    except Exception as e:  # the Rust side raises a bare Exception for a file it cannot read
        why = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"{path} is neither a trainlab character tokenizer nor a Hugging Face tokenizer.json ({why})",
                        "give the tokenizer.json written by a training run") from None
