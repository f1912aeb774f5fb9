"""Prompts answered by the policy being trained: the source of online post-training (PPO, GRPO).

Generation inside a step is this source, fed by the current policy; the loop is the one loop. A *round*:

  1. take the next data.prompts_per_round training prompts (a seeded order, pass after pass);
  2. generate data.group_size replies to each with the current weights (batched, KV cache, sampled at
     data.temperature from a generator seeded by the round: a resumed run draws the same);
  3. score them without gradients: the policy's own log-probabilities of its tokens (old_logp; not needed, so
     not computed, when the round is one optimizer step of one pass: the training forward gives them), the frozen
     reference's (ref_logp: trainlab.data.reference, when the objective `uses_reference`), the value head's
     values (a policy with model.value_head), and the rewards (trainlab.data.rewards; minus
     data.missing_eos_penalty for a reply that never wrote <|end|>);
  4. the objective's `prepare(rollout)` turns rewards into advantages (GRPO: relative to the group; PPO: a
     per-token KL penalty and GAE);
  5. the round's sequences are then the training batches: data.epochs_per_round passes, data.batch_size x
     loop.grad_accum sequences per optimizer step, in a seeded order.

The whole round is kept in the stream's state, so a checkpoint taken in the middle of a round resumes exactly.
With several processes each generates its share of the round's prompts; the rounds are gathered so that every
process holds the same round and takes its slice of each step (as fixed datasets do).

Logged after each step (the current round's): reward (and each function's mean), reward_std, zero_std_groups
(the fraction of groups whose replies all scored the same: no learning signal in GRPO), reply_tokens, ended
(the fraction that wrote <|end|>), kl (the mean summed log-ratio to the reference), gen_tokens_per_s and
gen_share (the share of step time spent generating). Validation: greedy replies to data.eval_prompts validation
prompts: their reward, exact match (with reference answers) and length.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt

from trainlab import registry
from trainlab.data import chat
from trainlab.data.dialogues import (SPLITS, PostTrainTable, base_info, cut, evaluate_answers, export_tokenizer,
                                     greedy_replies, load_tokenizer, pad_rows, rows_by_split)
from trainlab.data.rewards import Rewards
from trainlab.errors import UserError
from trainlab.objectives import token_logps


class PromptsTable(PostTrainTable):
    source: Literal["prompts"] = "prompts"
    group_size: PositiveInt = 8  # replies generated per prompt (GRPO's group; PPO often uses 1)
    prompts_per_round: PositiveInt = 16  # prompts answered per round of generation
    epochs_per_round: PositiveInt = 1  # passes over each round's replies (PPO's epochs; GRPO's iterations)
    temperature: float = Field(1.0, ge=0)  # sampling temperature of the replies (0 = greedy: no exploration)
    top_k: int = Field(0, ge=0)
    rewards: list[str] = ["suite"]  # reward functions (trainlab.data.rewards): exact, format, suite, MODULE:NAME
    reward_weights: list[float] = []  # one per reward function (default 1 each)
    reward_model: str = ""  # a reward-model run (objective.kind = "reward") whose score is added
    reward_model_weight: float = 1.0
    missing_eos_penalty: float = Field(0.0, ge=0)  # subtracted from the reward of a reply without <|end|>


@registry.source("prompts", PromptsTable, provides={"prompts"})
def build(cfg: PromptsTable) -> "Prompts":
    """Prompts the policy answers during training (PPO, GRPO), scored by reward functions or a reward model."""
    return Prompts(cfg)


class Prompts:
    unit = "tok"

    def __init__(self, cfg: PromptsTable):
        self.cfg = cfg
        self.tokenizer = load_tokenizer(cfg)
        self.template = chat.ChatTemplate(self.tokenizer)
        # (where, prompt messages, the row's other fields) of each split
        self.rows = {s: [(w, m, {k: v for k, v in r.items() if k != "prompt"}) for w, m, r in split]
                     for s, split in rows_by_split(cfg, chat.prompt, lambda s, i, it: (
                         f"suite item {s}/{i} ({it.task})", [("user", it.prompt)],
                         {"answer": it.answer, "task": it.task})).items()}
        # Every prompt through the template once: rounds, scoring and validation reuse the ids.
        self.ids = {s: [self.template.prompt_ids(m) for _, m, _ in self.rows[s]] for s in SPLITS}
        for s in SPLITS:  # a prompt must leave room for a reply
            for (where, _, _), ids in zip(self.rows[s], self.ids[s]):
                n = len(ids)
                if n + 1 > cfg.block_size:
                    raise UserError(f"{where}: the prompt takes {n} tokens; the context is {cfg.block_size} "
                                    "(data.block_size)", "shorten the prompt, or drop the row")
        columns = set.intersection(*(set(r) for _, _, r in self.rows["train"])) if self.rows["train"] else set()
        self.rewards = Rewards(cfg.rewards, cfg.reward_weights, columns) if cfg.rewards or not cfg.reward_model \
            else None
        self.answers = {s: [(m, r) for _, m, r in self.rows[s] if "answer" in r] for s in SPLITS}
        sizes = {s: len(self.rows[s]) for s in SPLITS}
        self.info = base_info(cfg, self.tokenizer, "prompts", sizes)
        self.batch_size = cfg.batch_size
        per_round = cfg.prompts_per_round * cfg.group_size * cfg.epochs_per_round
        self.batches_per_epoch = max(1, sizes["train"] // cfg.prompts_per_round * per_round // cfg.batch_size)
        self.reward_model = None  # loaded by the stream, on the policy's device

    def count(self, batch) -> int:
        return int((batch["targets"] != -100).sum())

    def stream(self, seed: int, policy, plan) -> "RolloutStream":
        return RolloutStream(self, seed, policy, plan)

    def score(self, msgs: list[chat.Messages], replies: list[str], rows: list[dict], prompt_ids: list[list[int]],
              reply_ids: list[list[int]]) -> tuple[torch.Tensor, dict]:
        """(N,) rewards of replies (texts, and their tokens, with or without a closing <|end|>) and each part's
        mean. A reward model reads the prompt and the reply's content, as it was trained (its score sits on the
        last content token); whether a reply ended is data.missing_eos_penalty's business."""
        total, parts = torch.zeros(len(replies)), {}
        if self.rewards is not None:
            total, parts = self.rewards([chat.render(m) for m in msgs], replies, rows)
        if self.reward_model is not None:
            model, device = self.reward_model
            end = self.template.end_id
            seqs = [p + (r[:-1] if r and r[-1] == end else r) for p, r in zip(prompt_ids, reply_ids)]
            width = min(max(len(s) for s in seqs), self.cfg.block_size)
            idx = pad_rows([s[:width] for s in seqs], width, self.tokenizer.pad_id)
            with torch.no_grad():
                rm = torch.cat([model(idx[i:i + 256].to(device)).float().cpu() for i in range(0, len(idx), 256)])
            parts["reward_model"] = float(rm.mean())
            total = total + self.cfg.reward_model_weight * rm
        return total, parts

    def validate(self, policy, limit: int = 0) -> dict[str, float]:
        if self.reward_model is None and self.cfg.reward_model:
            self._load_reward_model(policy)
        n = self.cfg.eval_prompts or None  # 0: every validation prompt
        rows, prompt_ids = self.rows["val"][:n], self.ids["val"][:n]
        if not rows:
            return {}
        replies = greedy_replies(policy.generate, self.template, [m for _, m, _ in rows], self.cfg.max_new_tokens)
        ids = [self.template.completion_ids(t) for t, _ in replies]
        reward, _ = self.score([m for _, m, _ in rows], [t for t, _ in replies], [r for _, _, r in rows], prompt_ids,
                               ids)
        out = {"reward": float(reward.mean()), "reply_tokens": float(np.mean([n for _, n in replies]))}
        scored = [(r, t) for (_, _, r), (t, _) in zip(rows, replies) if "answer" in r]
        if scored:
            from trainlab.data import tasks as tasks_lib

            out["exact_match"] = float(np.mean([tasks_lib.correct(r["answer"], t) for r, t in scored]))
        return out

    def _load_reward_model(self, policy) -> str:
        from trainlab.models import load_frozen

        model, fingerprint = load_frozen(self.cfg.reward_model, "data.reward_model", self.info)
        if getattr(model.cfg, "head", "") != "reward":
            raise UserError(f"data.reward_model = '{self.cfg.reward_model}' is not a reward model (its model.head is "
                            f"'{getattr(model.cfg, 'head', '?')}')", "give a run trained with objective.kind = "
                            "'reward' (model.head = 'reward')")
        self.reward_model = (model.to(policy.device), policy.device)
        return fingerprint

    def evaluate_model(self, model, split: str) -> dict:
        return evaluate_answers(model, self, split)

    def eval_batches(self, split: str, limit: int = 0):
        raise UserError("a prompts run is evaluated by generating replies, not by passes over fixed batches",
                        "use `trainlab eval RUN` (exact match of greedy replies)")

    def export(self, model_dir) -> None:
        export_tokenizer(self.cfg, model_dir)


class RolloutStream:
    def __init__(self, data: Prompts, seed: int, policy, plan):
        self.data, self.cfg, self.seed, self.policy, self.plan = data, data.cfg, seed, policy, plan
        cfg = self.cfg
        per_round = cfg.prompts_per_round * cfg.group_size * cfg.epochs_per_round
        if per_round % plan.global_batch:
            raise UserError(f"a round holds data.prompts_per_round x data.group_size x data.epochs_per_round = {per_round} "
                            f"sequences, which the step's {plan.global_batch} (data.batch_size x loop.grad_accum) do "
                            "not divide", "make the round a multiple of the step's batch")
        world = policy.ctx.world if policy.ctx is not None else 1
        if cfg.prompts_per_round % world:
            raise UserError(f"data.prompts_per_round = {cfg.prompts_per_round} does not split over {world} "
                            "processes", f"make it a multiple of {world}")
        if len(data.rows["train"]) < cfg.prompts_per_round:
            raise UserError(f"the prompts hold {len(data.rows['train'])} training rows, fewer than "
                            f"data.prompts_per_round = {cfg.prompts_per_round}", "lower data.prompts_per_round")
        self.reference = None
        if getattr(policy.objective, "uses_reference", False):
            from trainlab.data.reference import Reference

            self.reference = Reference.for_policy(policy, data.info)
        self.rm_fingerprint = data._load_reward_model(policy) if cfg.reward_model else ""
        if getattr(policy.objective, "needs_values", False) and not hasattr(policy.model, "value_head"):
            raise UserError("this objective trains a value head beside the policy, and the model has none",
                            "set model.value_head = true")
        self.prepare = getattr(policy.objective, "prepare", None)
        self.round, self.pos, self.buffer, self.order, self.stats = 0, 0, None, None, {}
        self.gen_s = self.step_s = 0.0
        self.gen_tokens = 0
        self._t0 = None

    @property
    def epoch(self) -> int:
        return self.round * self.cfg.prompts_per_round // max(1, len(self.data.rows["train"]))

    # ------------------------------------------------------------------ a round
    def _prompts_of_round(self, r: int) -> list[int]:
        n, p = len(self.data.rows["train"]), self.cfg.prompts_per_round
        out = []
        for k in range(r * p, (r + 1) * p):
            epoch, i = divmod(k, n)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            out.append(int(torch.randperm(n, generator=g)[i]))
        return out

    def _new_round(self) -> None:
        cfg, policy, tpl = self.cfg, self.policy, self.data.template
        ctx = policy.ctx
        world, rank = (ctx.world, ctx.rank) if ctx is not None else (1, 0)
        chosen = self._prompts_of_round(self.round)
        share = len(chosen) // world
        mine = chosen[rank * share:(rank + 1) * share]
        prompt_ids = [self.data.ids["train"][i] for i in mine]
        room = cfg.block_size - max(len(p) for p in prompt_ids)
        t = time.perf_counter()
        replies = policy.generate([p for p in prompt_ids for _ in range(cfg.group_size)],
                                  max_new_tokens=min(cfg.max_new_tokens, room), temperature=cfg.temperature,
                                  top_k=cfg.top_k, seed=(self.seed * 1_000_003 + self.round) * 64 + rank,
                                  eos_id=tpl.end_id)
        if policy.device.type == "cuda":
            torch.cuda.synchronize(policy.device)
        self.gen_s += time.perf_counter() - t
        self.gen_tokens += sum(len(r) for r in replies) * world
        ended = [len(r) < min(cfg.max_new_tokens, room) for r in replies]  # stopped before the limit: wrote <|end|>
        if world > 1:
            import torch.distributed as dist

            got = [None] * world
            dist.all_gather_object(got, (replies, ended))
            replies = [r for part in got for r in part[0]]
            ended = [e for part in got for e in part[1]]
        self.buffer, self.stats = self._score(chosen, replies, ended)
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.round) * 7 + 1)
        n = len(replies)
        self.order = torch.cat([torch.randperm(n, generator=g) for _ in range(cfg.epochs_per_round)])
        self.pos = 0
        self.round += 1

    def _score(self, chosen: list[int], replies: list[list[int]], ended: list[bool]):
        cfg, policy, tpl, data = self.cfg, self.policy, self.data.template, self.data
        g = cfg.group_size
        msgs = [data.rows["train"][i][1] for i in chosen for _ in range(g)]
        rows = [data.rows["train"][i][2] for i in chosen for _ in range(g)]
        reply_tokens = [r + [tpl.end_id] if e else r for r, e in zip(replies, ended)]
        texts = [tpl.decode(r) for r in replies]
        prompt_ids = [data.ids["train"][i] for i in chosen for _ in range(g)]
        seqs = [p + r for p, r in zip(prompt_ids, reply_tokens)]
        starts = [len(s) - len(r) for s, r in zip(seqs, reply_tokens)]
        width = max(len(s) for s in seqs) - 1
        idx = pad_rows([s[:-1] for s in seqs], width, data.tokenizer.pad_id)
        targets = torch.full((len(seqs), width), -100, dtype=torch.long)
        for i, (s, a) in enumerate(zip(seqs, starts)):
            targets[i, a - 1:len(s) - 1] = torch.tensor(s[a:], dtype=torch.long)
        lengths = torch.tensor([len(s) - 1 for s in seqs])
        old, values = [], []
        # Log-probabilities of the distribution the replies were sampled from (logits / temperature, as TRL)
        temperature = cfg.temperature if cfg.temperature > 0 else 1.0
        needs_values = getattr(policy.objective, "needs_values", False)
        # One optimizer step per round, one pass: the policy that generated is the one that trains, so its
        # log-probabilities come from the training forward itself (ratio 1) and need no pass of their own.
        on_policy = cfg.epochs_per_round == 1 and len(seqs) == self.plan.global_batch and not needs_values
        with policy.gathered() as m:
            for i in range(0, 0 if on_policy else len(idx), 256):
                x = idx[i:i + 256].to(policy.device)
                if needs_values:
                    h = m.hidden(x)
                    logits = m.head(h)
                    values.append(m.values(h).float().cpu())
                else:
                    logits = m(x)
                old.append(token_logps(logits / temperature, targets[i:i + 256].to(logits.device)).cpu())
        buffer = {"idx": idx, "targets": targets, "length": lengths,
                  "ended": torch.tensor(ended, dtype=torch.bool), "group": torch.arange(len(seqs)) // g}
        if old:
            buffer["old_logp"] = torch.cat(old)
        if values:
            buffer["values"] = torch.cat(values) * (targets != -100)
        if temperature != 1.0:
            buffer["temperature"] = torch.full((len(seqs),), temperature)
        if self.reference is not None:
            buffer["ref_logp"] = torch.cat([self.reference.logps(idx[i:i + 256], targets[i:i + 256], temperature)
                                            for i in range(0, len(idx), 256)])
        reward, parts = data.score(msgs, texts, rows, prompt_ids, reply_tokens)
        if cfg.missing_eos_penalty:
            reward = reward - cfg.missing_eos_penalty * (~buffer["ended"]).float()
        buffer["reward"] = reward
        if self.prepare is not None:
            buffer.update(self.prepare(buffer))
        by_group = reward.view(-1, g)
        mask = targets != -100
        stats = {"reward": float(reward.mean()),
                 # the spread inside groups (what GRPO learns from; TRL's reward_std), 0 for groups of one
                 "reward_std": float(by_group.std(1).mean()) if g > 1 else 0.0,
                 "zero_std_groups": float((by_group.std(1) < 1e-6).float().mean()) if g > 1 else 0.0,
                 "reply_tokens": float(mask.sum(1).float().mean()), "ended": float(buffer["ended"].float().mean()),
                 **parts}
        if "ref_logp" in buffer and "old_logp" in buffer:
            stats["kl"] = float(((buffer["old_logp"] - buffer["ref_logp"]) * mask).sum(1).mean())
        return buffer, stats

    # ------------------------------------------------------------------ the loop's side
    def next_step(self) -> list[dict[str, torch.Tensor]]:
        self._t0 = time.perf_counter()
        if self.buffer is None or self.pos >= len(self.order):
            self._new_round()
        p = self.plan
        step = self.order[self.pos:self.pos + p.global_batch]
        take = step[p.lo:p.hi]
        self.pos += p.global_batch
        n = len(take) // p.accum
        # Every reply token of the step weighs the same, whatever micro-batch or process it falls in: the loss
        # of a micro-batch is its token sum x token_scale, which the loop's mean over micro-batches and processes
        # turns into (sum over the step's tokens) / (the step's tokens).
        world = self.policy.ctx.world if self.policy.ctx is not None else 1
        tokens = int((self.buffer["targets"][step] != -100).sum())
        scale = torch.full((n,), p.accum * world / max(tokens, 1))
        return [{**cut({k: v[take[i * n:(i + 1) * n]] for k, v in self.buffer.items()}, "length"),
                 "token_scale": scale} for i in range(p.accum)]

    def on_step(self, step: int, metrics: dict) -> dict[str, float]:
        if self._t0 is not None:
            self.step_s += time.perf_counter() - self._t0
        return {**self.stats, "gen_tokens_per_s": self.gen_tokens / max(self.gen_s, 1e-9),
                "gen_share": self.gen_s / max(self.step_s, 1e-9)}

    def state_dict(self) -> dict:
        return {"round": self.round, "pos": self.pos, "buffer": self.buffer, "order": self.order,
                "stats": self.stats, "reference": self.reference.fingerprint if self.reference else "",
                "reward_model": self.rm_fingerprint, "timing": [self.gen_s, self.step_s, self.gen_tokens]}

    def load_state_dict(self, state: dict) -> None:
        if self.reference is not None:
            self.reference.check(state.get("reference", ""))
        if state.get("reward_model") and self.rm_fingerprint and state["reward_model"] != self.rm_fingerprint:
            raise UserError(f"the reward model at {self.cfg.reward_model} changed since this run started (its weights "
                            "differ)", "restore the reward model the run started with, or start a new run")
        self.round, self.pos = int(state["round"]), int(state["pos"])
        self.buffer, self.order, self.stats = state["buffer"], state["order"], dict(state["stats"])
        self.gen_s, self.step_s, self.gen_tokens = state.get("timing", [0.0, 0.0, 0])
