"""Self-supervised learning, bidirectional: hide some tokens and predict them from both sides (BERT).

Of every window, `mask_prob` (15%) of the positions are chosen; of those, 80% become the mask token, 10% a
random token and 10% stay as they are (so the model cannot tell a chosen token from its looks). The loss is
the cross-entropy on the chosen positions only. Masks are drawn from torch's generator, which checkpoints save:
a resumed run draws the same masks. Validation (the model in eval mode) draws its masks from a generator seeded
by the batch itself, so the same held-out windows are always scored on the same masks, and evaluating does not
move the training generator.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from trainlab import registry
from trainlab.config import ObjectiveTable
from trainlab.errors import UserError


class MaskedLMConfig(ObjectiveTable):
    kind: Literal["masked_lm"] = "masked_lm"
    mask_prob: float = Field(0.15, gt=0, lt=1)  # fraction of positions chosen for prediction
    replace_mask: float = Field(0.8, ge=0, le=1)  # of the chosen: replaced by the mask token
    replace_random: float = Field(0.1, ge=0, le=1)  # of the chosen: replaced by a random token (the rest stay)


@registry.objective("masked_lm", MaskedLMConfig, needs={"masked_token_logits"}, data_needs={"tokens"},
                    refuses={"labels"})
def build(cfg: MaskedLMConfig, info: dict):
    """Masked-token prediction (BERT): 15% of positions, 80% [MASK] / 10% random / 10% kept."""
    if info.get("mask_id") is None:
        raise UserError("objective.kind = 'masked_lm' needs a tokenizer with a mask token; this data's "
                        f"'{info.get('tokenizer')}' tokenizer has none", "use data.tokenizer = 'bpe' (it reserves "
                        "<|mask|>), or a tokenizer.json with [MASK]")
    if cfg.replace_mask + cfg.replace_random > 1:
        raise UserError(f"objective.replace_mask + objective.replace_random = {cfg.replace_mask + cfg.replace_random:g} "
                        "exceeds 1", "keep their sum at most 1 (the rest of the chosen tokens stay as they are)")
    return MaskedLM(cfg, info["mask_id"], info["vocab_size"], [*info.get("special_ids", []), info["mask_id"]])


class MaskedLM:
    def __init__(self, cfg: MaskedLMConfig, mask_id: int, vocab_size: int, special_ids: list[int] = ()):
        self.cfg, self.mask_id, self.vocab_size = cfg, mask_id, vocab_size
        self.special = torch.tensor(sorted(special_ids), dtype=torch.long)

    @staticmethod
    def eval_generator(idx: torch.Tensor) -> torch.Generator:
        """The masks of a held-out window: a CPU generator seeded by the window itself, so validation and
        `trainlab eval` score the same positions on any device."""
        return torch.Generator().manual_seed(int(idx[:, :16].sum()) * 7919 + idx.numel())

    def corrupt(self, idx: torch.Tensor, g: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(corrupted input, targets with -100 where nothing is predicted). Draws from torch's generator on
        idx's device, or from `g` (a CPU generator: eval_generator) on the CPU."""
        c = self.cfg
        dev = "cpu" if g is not None else idx.device
        eligible = torch.ones_like(idx, dtype=torch.bool)
        special = self.special.to(idx.device)
        if len(special):  # document boundaries and padding are never chosen, nor drawn as random tokens
            eligible = ~torch.isin(idx, special)
        u = torch.rand(idx.shape, device=dev, generator=g).to(idx.device)
        r = torch.rand(idx.shape, device=dev, generator=g).to(idx.device)
        random_ids = torch.randint(0, self.vocab_size, idx.shape, device=dev, generator=g).to(idx.device)
        chosen = (u < c.mask_prob) & eligible
        targets = torch.where(chosen, idx, torch.full_like(idx, -100))
        to_mask = chosen & (r < c.replace_mask)
        to_random = chosen & (r >= c.replace_mask) & (r < c.replace_mask + c.replace_random)
        if len(special):
            to_random &= ~torch.isin(random_ids, special)  # a special drawn: the token stays as it is
        x = torch.where(to_mask, torch.full_like(idx, self.mask_id), idx)
        x = torch.where(to_random, random_ids, x)
        return x, targets

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        idx = batch["idx"]
        x, targets = self.corrupt(idx, None if model.training else self.eval_generator(idx))
        chosen = targets != -100
        if hasattr(model, "mlm"):  # read out only the chosen positions: 15% of the (B, T, vocab) logits
            logits = model.mlm(model.hidden(x)[chosen], model.wte.weight)
        else:
            logits = model(x)[chosen]
        ce = F.cross_entropy(logits.float(), targets[chosen]) if len(logits) else logits.sum() * 0.0
        acc = (logits.argmax(-1) == targets[chosen]).float().mean() if len(logits) else torch.zeros((), device=idx.device)
        return ce, {"ce": ce.detach(), "mask_accuracy": acc.detach()}
