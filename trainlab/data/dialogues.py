"""Post-training data with a fixed content: conversations (supervised fine-tuning) and preference pairs (a reward
model, DPO). The prompts source, whose batches the current policy generates, is trainlab.data.rollouts.

    conversations   every row a conversation; the loss falls on the assistant's tokens (and its <|end|>)
    preferences     every row a prompt with a chosen and a rejected reply

The rows come from data.path (JSONL in the formats of trainlab.data.chat) or, with no path, from trainlab's
bundled task suite (trainlab.data.tasks: arithmetic, counting, lists, expressions; `data.suite` picks tasks):
its items become conversations (instruction -> reference answer), and preference pairs (the right answer over a
wrong one, or over the right answer buried in rambling). User rows are split by a hash of their content
(data.val_fraction, data.test_fraction); the suite has its own fixed held-out split.

The tokenizer is the starting model's (model.init_from sets data.tokenizer_path): post-training continues a
trained language model. Sequences longer than data.block_size are an error naming the row when the prompt alone
does not fit, and are cut (with a warning) when only the reply does. Rows whose reply is empty after cutting
would carry no loss: that too is an error naming them, never a batch whose loss is silently 0.

Validation: the loss and the objective's metrics on the validation split; with reference answers (the suite,
or rows with an "answer" field), also the greedy reply's exact-match rate on up to data.eval_prompts prompts.
"""

from __future__ import annotations

import hashlib
import json
import random
import warnings
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt

from trainlab import registry
from trainlab.config import DataTable
from trainlab.data import chat, tasks as tasks_lib
from trainlab.data import tokenizer as tok_lib
from trainlab.data.batches import BatchStream, DatasetStream
from trainlab.errors import UserError

SPLITS = ("train", "val", "test")


class PostTrainTable(DataTable):
    """Shared keys of the post-training sources."""

    path: str = ""  # JSONL file or glob (formats: trainlab.data.chat); empty: the bundled task suite
    suite: list[str] = ["all"]  # tasks of the bundled suite (trainlab.data.tasks) when data.path is empty
    suite_size: PositiveInt = 4000  # training items drawn from the suite
    suite_eval: PositiveInt = 300  # validation and test items drawn from the suite (each)
    tokenizer: Literal["bpe", "char"] = "bpe"  # the starting model's (set from model.init_from)
    tokenizer_path: str = ""  # the starting model's tokenizer.json (set from model.init_from)
    block_size: PositiveInt = 128  # tokens per sequence: prompt and reply
    eval_prompts: int = Field(200, ge=0)  # validation prompts answered greedily for exact match (0: none)
    max_new_tokens: PositiveInt = 24  # the longest reply generated (validation, rollouts)


class ConversationsTable(PostTrainTable):
    source: Literal["conversations"] = "conversations"
    packing: bool = False  # several conversations per row of block_size tokens (fewer pad tokens)


class PreferencesTable(PostTrainTable):
    source: Literal["preferences"] = "preferences"
    rambling_fraction: float = Field(0.3, ge=0, le=1)  # suite pairs whose rejected reply rambles around the answer
    # DPO's reference log-probabilities: computed for each batch by the frozen reference ("batch"), or once for
    # every training pair before the first step ("precompute": one forward per pair instead of one per visit)
    reference_logps: Literal["batch", "precompute"] = "batch"


@registry.source("conversations", ConversationsTable, provides={"conversations"})
def build_conversations(cfg: ConversationsTable) -> "Conversations":
    """Chat conversations (JSONL messages or prompt/completion, or the task suite): supervised fine-tuning."""
    return Conversations(cfg)


@registry.source("preferences", PreferencesTable, provides={"preferences"})
def build_preferences(cfg: PreferencesTable) -> "Preferences":
    """Preference pairs (prompt, chosen, rejected; or the task suite): reward models and DPO."""
    return Preferences(cfg)


# ------------------------------------------------------------------------------------------------- rows


def load_tokenizer(cfg: PostTrainTable):
    if not cfg.tokenizer_path:
        raise UserError(f"data.source = '{cfg.source}' continues a trained language model, and this recipe names none",
                        "set model.init_from to a language-model run (e.g. runs/stdlib-gpt), whose tokenizer it uses")
    return tok_lib.load(cfg.tokenizer_path)


def user_rows(cfg: PostTrainTable) -> dict[str, list[tuple[str, dict]]]:
    """(where, row) of data.path's rows by split: a row's split is a hash of its content."""
    from trainlab.data.text import jsonl_rows, user_files

    out: dict[str, list] = {s: [] for s in SPLITS}
    for f, n, row in jsonl_rows(user_files(cfg.path)):
        key = json.dumps(row, sort_keys=True, ensure_ascii=False)
        b = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
        split = "val" if b < cfg.val_fraction else "test" if b < cfg.val_fraction + cfg.test_fraction else "train"
        out[split].append((f"{f} line {n}", row))
    if not out["train"]:
        raise UserError(f"data.path = '{cfg.path}' holds no training rows" + (
            "" if any(out.values()) else " (the files are empty)"), "give a JSONL file with one row per line")
    for s in ("val", "test"):  # tiny files: validation needs a row
        if not out[s] and len(out["train"]) > 1 and (cfg.val_fraction if s == "val" else cfg.test_fraction) > 0:
            out[s].append(out["train"].pop())
    return out


def check_fields(row: dict, where: str) -> None:
    """A row's "answer" and "task", when it has them, are text (numbers are read as their digits)."""
    for key in ("answer", "task"):
        if key in row:
            if isinstance(row[key], (int, float)) and not isinstance(row[key], bool):
                row[key] = str(row[key])
            if not isinstance(row[key], str):
                raise UserError(f"{where}: \"{key}\" is {type(row[key]).__name__}, not text",
                                f"write the {key} as a string")


def suite_items(cfg: PostTrainTable) -> dict[str, list[tasks_lib.Item]]:
    names = "all" if cfg.suite == ["all"] else cfg.suite
    unknown = [t for t in cfg.suite if t not in tasks_lib.TASKS and t != "all"]
    if unknown or not cfg.suite:
        raise UserError(f"data.suite = {cfg.suite} " + (f"names {unknown[0]!r}, which is not a task of the suite"
                                                        if unknown else "is empty") + f"; the tasks are "
                        f"{', '.join(tasks_lib.TASKS)}", 'pick some of them, or data.suite = ["all"]')
    return {s: tasks_lib.items(names, s, cfg.suite_size if s == "train" else cfg.suite_eval, cfg.split_seed)
            for s in SPLITS}


def rows_by_split(cfg: PostTrainTable, parse, from_item) -> dict[str, list[tuple]]:
    """(where, parsed, row) of each split: data.path's rows read by `parse(row, where)` (their "answer" and "task"
    checked), or the suite's items made by `from_item(split, i, item)`."""
    if not cfg.path:
        items = suite_items(cfg)
        return {s: [from_item(s, i, it) for i, it in enumerate(items[s])] for s in SPLITS}
    raw = user_rows(cfg)
    out = {s: [(w, parse(r, w), r) for w, r in raw[s]] for s in SPLITS}
    for s in SPLITS:
        for w, _, r in out[s]:
            check_fields(r, w)
    return out


def suite_row(item: tasks_lib.Item) -> dict:
    return {"prompt": item.prompt, "completion": item.answer, "answer": item.answer, "task": item.task}


def base_info(cfg: PostTrainTable, tokenizer, capability: str, sizes: dict[str, int]) -> dict:
    template = chat.ChatTemplate(tokenizer)
    return {"task": "chat", "capabilities": [capability], "tokenizer": tokenizer.kind,
            "vocab_size": tokenizer.vocab_size, "block_size": cfg.block_size, "pad_id": tokenizer.pad_id,
            "eot_id": tokenizer.eot_id, "end_id": template.end_id, "chat_template": chat.JINJA,
            "tokenizer_sha256": tok_lib.digest(cfg.tokenizer_path), "source": cfg.source, "split_sizes": sizes}


class Rows:
    """Equal-length tensors, one row per example (what BatchStream indexes)."""

    def __init__(self, **tensors: torch.Tensor):
        self.t = tensors

    def __len__(self) -> int:
        return len(next(iter(self.t.values())))


class RowBatches(BatchStream):
    """Seeded batches of Rows, cut to their longest row (columns that are padding in every row are dropped)."""

    def __init__(self, rows: Rows, batch_size: int, seed: int, lengths: str):
        super().__init__(rows, batch_size, seed)
        self.lengths = lengths

    def _fetch(self, ids, params=None) -> dict[str, torch.Tensor]:
        return cut({k: v[ids] for k, v in self.split.t.items()}, self.lengths)


def cut(batch: dict[str, torch.Tensor], lengths: str) -> dict[str, torch.Tensor]:
    """Drop the columns past the batch's longest row in every 2-D tensor of `batch`."""
    n = int(batch[lengths].max())
    return {k: v[:, :n] if v.ndim == 2 else v for k, v in batch.items()}


def pad_rows(seqs: list[list[int]], width: int, value: int) -> torch.Tensor:
    out = torch.full((len(seqs), width), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def fit(ids: list[int], mask: list[int], block: int, where: str) -> tuple[list[int], list[int], bool]:
    """A sequence of at most block + 1 tokens (the inputs and targets of `block` positions), cutting the reply;
    an error when the prompt (the tokens before the first learned one) does not leave room for one."""
    first = mask.index(1) if 1 in mask else len(mask)
    if first >= block:
        raise UserError(f"{where}: the prompt takes {first} tokens; the context is {block} (data.block_size)",
                        "shorten the prompt, drop the row, or raise data.block_size up to the model's context")
    cut_ = len(ids) > block + 1
    return ids[:block + 1], mask[:block + 1], cut_


# ------------------------------------------------------------------------------------------------- conversations


class Conversations:
    unit = "tok"

    def __init__(self, cfg: ConversationsTable):
        self.cfg = cfg
        self.tokenizer = load_tokenizer(cfg)
        self.template = chat.ChatTemplate(self.tokenizer)
        rows = rows_by_split(cfg, chat.conversation, lambda s, i, it: (
            f"suite item {s}/{i} ({it.task})", chat.conversation(suite_row(it), ""), suite_row(it)))
        self.answers = {s: [(_prompt_of(r, w), r) for w, _, r in rows[s] if "answer" in r] for s in SPLITS}
        self.splits = {s: self._encode(rows[s], s) for s in SPLITS}
        sizes = {s: len(self.splits[s]) for s in SPLITS}
        if sizes["train"] == 0:
            raise UserError("the conversations hold no training rows", "give data.path rows, or a data.suite")
        self.info = base_info(cfg, self.tokenizer, "conversations", sizes)
        self.batch_size = min(cfg.batch_size, sizes["train"])
        self.batches_per_epoch = sizes["train"] // self.batch_size

    def _encode(self, rows, split: str) -> Rows:
        block, pad = self.cfg.block_size, self.tokenizer.pad_id
        seqs, cut_rows = [], 0
        for where, msgs, _ in rows:
            ids, mask = self.template.encode(msgs)
            ids, mask, was_cut = fit(ids, mask, block, where)
            cut_rows += was_cut
            targets = [t if m else -100 for t, m in zip(ids[1:], mask[1:])]
            if all(t == -100 for t in targets):
                raise UserError(f"{where}: no assistant token is left to learn from", "shorten the prompt")
            seqs.append((ids[:-1], targets))
        if cut_rows:
            warnings.warn(f"{cut_rows} {split} conversations were longer than data.block_size = {block} tokens; "
                          "their replies were cut (raise data.block_size, or shorten them)", stacklevel=2)
        if self.cfg.packing and split == "train":
            seqs = _pack(seqs, block)
        idx = pad_rows([s for s, _ in seqs], block, pad)
        targets = pad_rows([t for _, t in seqs], block, -100)
        return Rows(idx=idx, targets=targets, length=torch.tensor([len(s) for s, _ in seqs], dtype=torch.long))

    def __len__(self) -> int:
        return len(self.splits["train"])

    def count(self, batch) -> int:
        return int((batch["targets"] != -100).sum())

    def stream(self, seed: int, policy, plan) -> DatasetStream:
        return DatasetStream(RowBatches(self.splits["train"], self.cfg.batch_size, seed, "length"), plan)

    def eval_batches(self, split: str, limit: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        rows = self.splits[split]
        for k, start in enumerate(range(0, len(rows), self.cfg.eval_batch_size)):
            if limit and k >= limit:
                return
            yield cut({n: v[start:start + self.cfg.eval_batch_size] for n, v in rows.t.items()}, "length")

    def validate(self, policy, limit: int = 0) -> dict[str, float]:
        from trainlab.policy import evaluate

        out = evaluate(policy.forward, self.eval_batches("val", limit), policy.device, policy.amp, policy.ctx)
        if self.answers["val"] and self.cfg.eval_prompts:
            out.update(answer_metrics(policy.generate, self.template, self.answers["val"][:self.cfg.eval_prompts],
                                      self.cfg.max_new_tokens))
        return out

    def evaluate_model(self, model, split: str) -> dict:
        return evaluate_answers(model, self, split)

    def export(self, model_dir) -> None:
        export_tokenizer(self.cfg, model_dir)


def _prompt_of(row: dict, where: str) -> chat.Messages:
    msgs = chat.conversation(row, where)
    last = max(i for i, (r, _) in enumerate(msgs) if r == "assistant")
    return msgs[:last]


def _pack(seqs: list[tuple[list[int], list[int]]], block: int) -> list[tuple[list[int], list[int]]]:
    """Conversations laid end to end into rows of at most `block` positions, in order (a conversation never
    spans two rows). Attention is causal over the whole row, as in pre-training on packed documents."""
    out, ids, tgt = [], [], []
    for s, t in seqs:
        if ids and len(ids) + len(s) > block:
            out.append((ids, tgt))
            ids, tgt = [], []
        ids, tgt = ids + s, tgt + t
    if ids:
        out.append((ids, tgt))
    return out


def export_tokenizer(cfg: PostTrainTable, model_dir) -> None:
    import shutil

    shutil.copyfile(cfg.tokenizer_path, Path(model_dir) / "tokenizer.json")


# ------------------------------------------------------------------------------------------------- answers


def answer_metrics(generate, template: chat.ChatTemplate, pairs: list[tuple[chat.Messages, dict]],
                   max_new_tokens: int, batch: int = 128) -> dict[str, float]:
    """Greedy replies to the prompts of `pairs` (prompt messages, row with "answer"): the exact-match rate, the
    rate of well-formed replies (suite rows) and the mean reply length in tokens."""
    replies = greedy_replies(generate, template, [p for p, _ in pairs], max_new_tokens, batch)
    exact = [tasks_lib.correct(r["answer"], text) for (_, r), (text, _) in zip(pairs, replies)]
    out = {"exact_match": float(np.mean(exact)), "reply_tokens": float(np.mean([n for _, n in replies]))}
    with_task = [(r, text) for (_, r), (text, _) in zip(pairs, replies) if r.get("task") in tasks_lib.TASKS]
    if with_task:
        out["well_formed"] = float(np.mean([tasks_lib.well_formed(r["task"], t) for r, t in with_task]))
    return out


def greedy_replies(generate, template, prompts: list[chat.Messages], max_new_tokens: int,
                   batch: int = 128) -> list[tuple[str, int]]:
    """(text, tokens) of the greedy reply to each prompt, generated in batches with the KV cache."""
    out = []
    for start in range(0, len(prompts), batch):
        ids = [template.prompt_ids(p) for p in prompts[start:start + batch]]
        for r in generate(ids, max_new_tokens=max_new_tokens, temperature=0.0, eos_id=template.end_id):
            out.append((template.decode(r), len(r)))
    return out


def evaluate_answers(model, data, split: str) -> dict:
    """`trainlab eval` of a post-trained model: exact match of greedy replies on the split's prompts with a
    reference answer, per task, beside the baseline of always giving the most common training answer."""
    from trainlab.generate import generate

    pairs = data.answers.get(split, [])
    if not pairs:
        raise UserError(f"the '{split}' split has no prompts with a reference answer to score",
                        "evaluate a run on the task suite, or give rows an \"answer\" field")
    replies = greedy_replies(lambda ids, **k: generate(model, ids, **k), data.template, [p for p, _ in pairs],
                             data.cfg.max_new_tokens)
    common = _most_common([r["answer"] for _, r in data.answers["train"]] or [""])
    exact = np.array([tasks_lib.correct(r["answer"], t) for (_, r), (t, _) in zip(pairs, replies)], dtype=float)
    base = np.array([tasks_lib.correct(r["answer"], common) for _, r in pairs], dtype=float)
    metrics = {"exact_match": float(exact.mean()), "reply_tokens": float(np.mean([n for _, n in replies]))}
    tasks = [r.get("task", "") for _, r in pairs]
    per_task = {t: float(exact[[i for i, x in enumerate(tasks) if x == t]].mean()) for t in sorted(set(tasks)) if t}
    if per_task:
        metrics["per_task"] = per_task
    return {"split": split, "n": len(pairs), "task": "chat", "metrics": metrics,
            "baseline": {"name": f"always the most common training answer ({common!r})",
                         "exact_match": float(base.mean())},
            "examples": [{"prompt": chat.render(p), "reply": t, "answer": r["answer"]}
                         for (p, r), (t, _) in list(zip(pairs, replies))[:5]]}


def _most_common(values: list[str]) -> str:
    from collections import Counter

    return Counter(values).most_common(1)[0][0]


# ------------------------------------------------------------------------------------------------- preferences


class Preferences:
    """Batches of pairs: chosen_idx/chosen_targets and rejected_idx/rejected_targets (B, T) right-padded, targets
    -100 outside the reply; with an objective that `uses_reference` (DPO), also ref_chosen/ref_rejected (B,):
    the frozen reference's summed log-probabilities of each reply, and their token counts."""

    unit = "ex"

    def __init__(self, cfg: PreferencesTable):
        self.cfg = cfg
        self.tokenizer = load_tokenizer(cfg)
        self.template = chat.ChatTemplate(self.tokenizer)
        pairs = rows_by_split(cfg, chat.preference, self._suite_pair)
        self.answers = {s: [(p.prompt, r) for _, p, r in pairs[s] if "answer" in r] for s in SPLITS}
        self.splits = {s: self._encode(pairs[s]) for s in SPLITS}
        sizes = {s: len(self.splits[s]) for s in SPLITS}
        self.info = base_info(cfg, self.tokenizer, "preferences", sizes)
        self.batch_size = min(cfg.batch_size, sizes["train"])
        self.batches_per_epoch = sizes["train"] // self.batch_size
        self.reference = None  # set by the stream when the objective asks for one

    def _suite_pair(self, split: str, i: int, item: tasks_lib.Item):
        rng = random.Random(f"{self.cfg.split_seed}/{split}/{i}")
        rambling = rng.random() < self.cfg.rambling_fraction
        bad = tasks_lib.rambling_answer(item, rng) if rambling else tasks_lib.wrong_answer(item, rng)
        row = {"prompt": item.prompt, "chosen": item.answer, "rejected": bad, "answer": item.answer, "task": item.task}
        return f"suite item {split}/{i} ({item.task})", chat.preference(row, ""), row

    def _encode(self, pairs) -> Rows:
        block, pad = self.cfg.block_size, self.tokenizer.pad_id
        out: dict[str, list] = {"chosen": [], "rejected": []}
        for where, p, _ in pairs:
            for name in out:
                ids, mask = self.template.encode(p.prompt + getattr(p, name))
                ids, mask, _ = fit(ids, mask, block, where)
                targets = [t if m else -100 for t, m in zip(ids[1:], mask[1:])]
                out[name].append((ids[:-1], targets))
        t = {}
        for name, seqs in out.items():
            t[f"{name}_idx"] = pad_rows([s for s, _ in seqs], block, pad)
            t[f"{name}_targets"] = pad_rows([x for _, x in seqs], block, -100)
        t["length"] = torch.tensor([max(len(a[0]), len(b[0])) for a, b in zip(out["chosen"], out["rejected"])],
                                   dtype=torch.long)
        t["row"] = torch.arange(len(pairs))  # which pair: precomputed reference log-probabilities are looked up
        return Rows(**t)

    def count(self, batch) -> int:
        return len(batch["chosen_idx"])

    def stream(self, seed: int, policy, plan):
        return PreferenceStream(self, seed, policy, plan)

    def eval_batches(self, split: str, limit: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        rows = self.splits[split]
        size = self.cfg.eval_batch_size
        for k, start in enumerate(range(0, len(rows), size)):
            if limit and k >= limit:
                return
            yield cut({n: v[start:start + size] for n, v in rows.t.items()}, "length")

    def validate(self, policy, limit: int = 0) -> dict[str, float]:
        from trainlab.policy import evaluate

        batches = self.eval_batches("val", limit)
        if getattr(policy.objective, "uses_reference", False):
            # All of them before evaluating: under FSDP each reference pass gathers the weights on every rank,
            # and `evaluate` hands each rank a different subset of the batches.
            batches = [self.reference.add(b, "val") for b in batches]
        out = evaluate(policy.forward, batches, policy.device, policy.amp, policy.ctx)
        if getattr(policy.model, "generates", False) and self.answers["val"] and self.cfg.eval_prompts:
            out.update(answer_metrics(policy.generate, self.template, self.answers["val"][:self.cfg.eval_prompts],
                                      self.cfg.max_new_tokens))
        return out

    def evaluate_model(self, model, split: str) -> dict:
        if getattr(model, "generates", False):
            return evaluate_answers(model, self, split)
        return evaluate_reward_model(model, self, split)

    def export(self, model_dir) -> None:
        export_tokenizer(self.cfg, model_dir)


@torch.no_grad()
def evaluate_reward_model(model, data: Preferences, split: str) -> dict:
    """A reward model on held-out pairs: how often it scores the chosen reply above the rejected one."""
    right, margins, n = 0.0, [], 0
    for b in data.eval_batches(split):
        sc, sr = model(b["chosen_idx"]).float(), model(b["rejected_idx"]).float()
        right += float((sc > sr).sum())
        margins.append(sc - sr)
        n += len(sc)
    if n == 0:
        raise UserError(f"the '{split}' split holds no preference pairs", "evaluate another split")
    return {"split": split, "n": n, "task": "chat", "metrics": {"accuracy": right / n,
                                                               "margin": float(torch.cat(margins).mean())},
            "baseline": {"name": "a coin flip", "accuracy": 0.5, "margin": 0.0}}


class PreferenceStream(DatasetStream):
    """The pairs in seeded batches; reference log-probabilities added when the objective uses a reference."""

    def __init__(self, data: Preferences, seed: int, policy, plan):
        super().__init__(RowBatches(data.splits["train"], data.cfg.batch_size, seed, "length"), plan)
        self.reference = None
        if getattr(policy.objective, "uses_reference", False):
            from trainlab.data.reference import Reference

            self.reference = data.reference = Reference.for_policy(policy, data.info)
            if data.cfg.reference_logps == "precompute":
                self.reference.precompute(data.eval_batches("train"))

    def next_step(self) -> list[dict[str, torch.Tensor]]:
        parts = super().next_step()
        if self.reference is None:
            return parts
        return [self.reference.add(b, "train") for b in parts]

    def state_dict(self) -> dict:
        return {**super().state_dict(), "reference": self.reference.fingerprint if self.reference else ""}

    def load_state_dict(self, state: dict) -> None:
        if self.reference is not None:
            self.reference.check(state.get("reference", ""))
        super().load_state_dict(state)
