"""Supervised fine-tuning (instruction tuning): next-token cross-entropy on the assistant's tokens only.

The prompt's tokens are context, not targets: the conversations source marks them -100. The loss is the mean
over the reply tokens of a micro-batch (their <|end|> included, so the model learns where to stop). A
conversation with no reply token left is refused when the data is built (trainlab.data.dialogues), so no batch
can carry a loss of 0 because every label was masked (TRL issue #6668).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from trainlab import registry
from trainlab.config import ObjectiveTable


class SFTConfig(ObjectiveTable):
    kind: Literal["sft"] = "sft"


@registry.objective("sft", SFTConfig, needs={"token_logits"}, data_needs={"conversations"})
def build(cfg: SFTConfig, info: dict):
    """Cross-entropy of the assistant's reply tokens (instruction tuning)."""
    return SFT()


class SFT:
    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        logits = model(batch["idx"])  # (B, T, V)
        targets = batch["targets"]
        ce = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
        keep = targets != -100
        acc = ((logits.argmax(-1) == targets) & keep).sum() / keep.sum()
        return ce, {"ce": ce.detach(), "token_accuracy": acc.detach()}
