"""Replay: mix pre-training text into fine-tuning, against catastrophic forgetting.

With `data.replay_fraction = f`, every micro-batch of a fine-tuning on labelled text also carries windows of the
corpus the model was pre-trained on, so that they make up about the fraction f of its examples
(k = max(1, round(m f / (1 - f))) windows beside m labelled examples). The supervised objective then minimizes

    (1 - f) * task loss + f * next-token loss on the replayed windows

through the model's language-model read-out (`lm_logits`: a GPT classifier with tied weights keeps it). The
corpus is the one `data.replay_from` (default: model.init_from) was trained on, as its config.toml describes it;
its tokenizer must be the fine-tuning's. The windows of a step are one global draw that the processes of a
distributed run slice like the labelled examples (the same windows for any number of processes only when each
process's micro-batch is the same size).
"""

from __future__ import annotations

from pathlib import Path

import torch

from trainlab import config
from trainlab.errors import UserError


def wrap(data, cfg: config.Config):
    """`data` with replayed pre-training windows in its training stream (or `data` itself when f = 0)."""
    f = getattr(cfg.data, "replay_fraction", 0.0)
    if not f:
        return data
    from trainlab import models

    source = getattr(cfg.data, "replay_from", "") or getattr(cfg.model, "init_from", "")
    if not source or source.startswith(models.HF_PREFIX):
        raise UserError("data.replay_fraction needs the run the model was pre-trained in (its corpus is replayed)",
                        "set data.replay_from (or model.init_from) to a trainlab run folder of a language model")
    run = Path(source)
    if run.name == "model" and (run.parent / "config.toml").is_file():  # the run's model/ folder: the run
        run = run.parent
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
    if not cfg.model.tie_weights:
        raise UserError("data.replay_fraction reads tokens out through the embedding, and this GPT's output head is "
                        "not tied to it (model.tie_weights = false)", "replay with a GPT whose weights are tied")
    from trainlab.data import text
    from trainlab.data import tokenizer as tok_lib

    # Windows no longer than the fine-tuning's own context (the model's positions are built for it).
    corpus = text.TextData(pre.data.model_copy(update={"block_size": min(pre.data.block_size, cfg.data.block_size)}))
    ours = Path(cfg.data.tokenizer_path) if getattr(cfg.data, "tokenizer_path", "") else None
    if ours is None or tok_lib.digest(ours) != tok_lib.digest(corpus.folder / "tokenizer.json"):
        raise UserError(f"the replayed corpus of {source} is tokenized differently from this fine-tuning's text",
                        f"fine-tune from that run (model.init_from = '{source}'), which shares its tokenizer")
    return Replayed(data, corpus, f)


class Replayed:
    """A labelled-text source whose training stream also carries pre-training windows. Everything else
    (validation, evaluation, export, info) is the wrapped source's."""

    def __init__(self, data, corpus, fraction: float):
        self.data, self.corpus, self.fraction = data, corpus, fraction
        self.info = {**data.info, "replay_fraction": fraction}

    def __getattr__(self, name):
        return getattr(self.data, name)

    def stream(self, seed: int, policy, plan):
        # k windows beside each process's micro-batch of m examples; a step draws k for every micro-batch of
        # every process at once, and each process takes its own slice (as it does of the labelled examples).
        k = max(1, round(plan.micro * self.fraction / (1 - self.fraction)))
        world = plan.global_batch // (plan.hi - plan.lo)
        windows = self.corpus.train_batches(seed)
        windows.batch_size = k * plan.accum * world
        rank = plan.lo // (plan.hi - plan.lo)
        return ReplayStream(self.data.stream(seed, policy, plan), windows, plan,
                            (rank * k * plan.accum, (rank + 1) * k * plan.accum))


class ReplayStream:
    def __init__(self, base, windows, plan, mine: tuple[int, int]):
        self.base, self.windows, self.plan, self.mine = base, windows, plan, mine

    def next_step(self) -> list[dict[str, torch.Tensor]]:
        micro = self.base.next_step()
        extra = self.windows.next_step(1, *self.mine, len(micro))
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
