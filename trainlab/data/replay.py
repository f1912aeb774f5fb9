"""Replay: mix pre-training text into fine-tuning, against catastrophic forgetting.

With `data.replay_fraction = f`, every step of a fine-tuning on labelled text also carries windows of the
corpus the model was pre-trained on, so that they make up the fraction f of the step's examples
(R = round(B f / (1 - f)) windows beside B labelled examples). The supervised objective then minimizes

    (1 - f) * task loss + f * next-token loss on the replayed windows

through the model's language-model read-out (`lm_logits`: a GPT classifier with tied weights keeps it). The
corpus is the one `data.replay_from` (default: model.init_from) was trained on, as its config.toml describes it;
its tokenizer must be the fine-tuning's.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from trainlab import config
from trainlab.errors import UserError


def wrap(data, cfg: config.Config):
    """`data` with replayed pre-training windows in its training stream (or `data` itself when f = 0)."""
    f = getattr(cfg.data, "replay_fraction", 0.0)
    if not f:
        return data
    source = getattr(cfg.data, "replay_from", "") or getattr(cfg.model, "init_from", "")
    if not source or source.startswith("hf:"):
        raise UserError("data.replay_fraction needs the run the model was pre-trained in (its corpus is replayed)",
                        "set data.replay_from (or model.init_from) to a trainlab run folder of a language model")
    run = Path(source)
    if not (run / "config.toml").is_file():
        raise UserError(f"data.replay_from = '{source}' has no config.toml describing its corpus",
                        "give the folder of a finished `trainlab train` run of a language model")
    pre = config.load_resolved(run / "config.toml")
    if not hasattr(pre.data, "block_size") or pre.data.source not in ("stdlib", "text", "jsonl", "hf_disk"):
        raise UserError(f"data.replay_from = '{source}' was not trained on text (data.source = '{pre.data.source}')",
                        "replay the run of a language model")
    if getattr(cfg.model, "kind", "") != "gpt":
        raise UserError("data.replay_fraction replays next-token prediction, which needs model.kind = 'gpt'",
                        "remove data.replay_fraction")
    from trainlab.data import text

    corpus = text.TextData(pre.data)
    ours = Path(cfg.data.tokenizer_path) if getattr(cfg.data, "tokenizer_path", "") else None
    if ours is None or _digest(ours) != _digest(corpus.folder / "tokenizer.json"):
        raise UserError(f"the replayed corpus of {source} is tokenized differently from this fine-tuning's text",
                        f"fine-tune from that run (model.init_from = '{source}'), which shares its tokenizer")
    return Replayed(data, corpus, f)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Replayed:
    """A labelled-text source whose training stream also carries pre-training windows. Everything else
    (validation, evaluation, export, info) is the wrapped source's."""

    def __init__(self, data, corpus, fraction: float):
        self.data, self.corpus, self.fraction = data, corpus, fraction
        self.per_batch = max(1, round(data.batch_size * fraction / (1 - fraction)))
        self.info = {**data.info, "replay_fraction": fraction}

    def __getattr__(self, name):
        return getattr(self.data, name)

    def stream(self, seed: int, policy, plan):
        windows = self.corpus.train_batches(seed)
        windows.batch_size = self.per_batch
        return ReplayStream(self.data.stream(seed, policy, plan), windows, plan, self.data.batch_size)


class ReplayStream:
    def __init__(self, base, windows, plan, batch_size: int):
        self.base, self.windows, self.plan, self.batch_size = base, windows, plan, batch_size

    def next_step(self) -> list[dict[str, torch.Tensor]]:
        micro = self.base.next_step()
        p, r, b = self.plan, self.windows.batch_size, self.batch_size
        # This process's share of the step's replayed windows, in proportion to its share of the examples.
        extra = self.windows.next_step(p.batches, p.lo * r // b, p.hi * r // b, len(micro))
        return [{**m, "replay_idx": e["idx"], "replay_targets": e["targets"]} for m, e in zip(micro, extra)]

    def on_step(self, step: int, metrics: dict) -> dict:
        return self.base.on_step(step, metrics)

    @property
    def epoch(self) -> int:
        return self.base.epoch

    def state_dict(self) -> dict:
        return {"base": self.base.state_dict(), "replay": self.windows.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.base.load_state_dict(state["base"])
        self.windows.load_state_dict(state["replay"])
