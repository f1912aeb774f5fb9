"""The frozen reference policy of DPO, PPO and GRPO: the model post-training started from.

It lives in the data source, like every model that does not train (trainlab/objectives: frozen models belong
to the source). It is the run's `model.init_from`, loaded once on the policy's device (trainlab.models.
load_frozen: its vocabulary must be the data's); or, for a LoRA policy, the policy itself with its adapters
switched off, which needs no second copy of the weights. The run records the reference's fingerprint; a resumed
run whose reference changed on disk since is refused (its KL terms would measure distance to another model).
"""

from __future__ import annotations

import torch

from trainlab.errors import UserError
from trainlab.objectives import token_logps


class Reference:
    def __init__(self, run, where: str, fingerprint: str):
        self.run, self.where, self.fingerprint = run, where, fingerprint  # run: idx (B, T) -> logits (B, T, V)
        self.table: dict[str, torch.Tensor] | None = None  # precomputed, by training row

    @classmethod
    def for_policy(cls, policy, info: dict) -> "Reference":
        from trainlab.models import lora, load_frozen

        if lora.layers(policy.model):
            def adapters_off(idx):
                with policy.gathered() as m, lora.adapters_off(policy.model):
                    return m(idx.to(policy.device))

            return cls(adapters_off, "the policy with its LoRA adapters off", "")
        if not policy.init_from:
            raise UserError("this objective compares the policy with a frozen reference: the model post-training "
                            "starts from, and this run starts from none", "set model.init_from to the run to start "
                            "from (e.g. the supervised fine-tuning run)")
        model, fingerprint = load_frozen(policy.init_from, "model.init_from", info)
        model.to(policy.device)

        @torch.no_grad()
        def frozen(idx):
            with policy.amp:
                return model(idx.to(policy.device))

        return cls(frozen, policy.init_from, fingerprint)

    @torch.no_grad()
    def logps(self, idx: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """(B, T) log-probabilities of the targets under the reference (0 where targets are -100), on the CPU;
        of its logits / temperature when the replies were sampled at that temperature."""
        logits = self.run(idx)
        return token_logps(logits / temperature, targets.to(logits.device)).cpu()

    def add(self, batch: dict[str, torch.Tensor], split: str) -> dict[str, torch.Tensor]:
        """A preference batch with ref_chosen / ref_rejected: the reference's summed log-probabilities of each
        reply (looked up when precomputed, computed otherwise)."""
        if self.table is not None and split == "train":
            return {**batch, **{k: v[batch["row"]] for k, v in self.table.items()}}
        out = dict(batch)
        for name in ("chosen", "rejected"):
            out[f"ref_{name}"] = self.logps(batch[f"{name}_idx"], batch[f"{name}_targets"]).sum(1)
        return out

    def precompute(self, batches) -> None:
        """Every training pair's reference log-probabilities, once; the rows are then looked up by index."""
        parts: dict[str, list] = {"ref_chosen": [], "ref_rejected": []}
        rows = []
        for b in batches:
            done = self.add(b, "precompute")
            rows.append(b["row"])
            for k in parts:
                parts[k].append(done[k])
        order = torch.cat(rows)
        self.table = {}
        for k, v in parts.items():
            table = torch.zeros(int(order.max()) + 1)
            table[order] = torch.cat(v)
            self.table[k] = table

    def check(self, recorded: str) -> None:
        """A resumed run's reference must be the one it started with."""
        if recorded and self.fingerprint and recorded != self.fingerprint:
            raise UserError(f"the reference model at {self.where} changed since this run started (its weights "
                            "differ)", "restore the model the run started from, or start a new run")
