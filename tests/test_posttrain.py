"""Post-training (issue 13): the chat template, SFT, a reward model, DPO, PPO and GRPO on the bundled task suite,
from a tiny GPT pre-trained here; the losses against hand-computed values; exact resume of a run with several
models; bad input as one line."""

from __future__ import annotations

import json
import math

import pytest
import torch

from trainlab import config, loop
from trainlab.data import chat
from trainlab.data import tokenizer as tok_lib
from trainlab.objectives.dpo import DPO, DPOConfig
from trainlab.objectives.grpo import group_advantages
from trainlab.objectives.ppo import gae
from trainlab.objectives.reward import BradleyTerry
from tests.conftest import run_cli, train_killed_after, train_sigkilled

BASE = ["data.max_bytes=300000", "data.split=tail", "data.vocab_size=512", "data.block_size=64",
        "model.n_layer=2", "model.n_embd=32", "model.n_head=2", "loop.steps=4", "loop.eval_every=4",
        "schedule.warmup_steps=0"]
SMALL = ["data.suite_size=64", "data.suite_eval=14", "data.eval_prompts=8", "data.max_new_tokens=6",
         "data.block_size=64", "loop.log_every=1", "schedule.warmup_steps=0"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A tiny language model, its SFT run and a reward model trained from that: the start of every method."""
    d = tmp_path_factory.mktemp("post")
    for name, args in (("base", ["stdlib-gpt", *BASE]),
                       ("sft", ["tasks-sft", f"model.init_from={d / 'base'}", *SMALL, "loop.steps=6",
                                "loop.eval_every=3"]),
                       ("rm", ["tasks-rm", f"model.init_from={d / 'sft'}", *SMALL, "loop.steps=4",
                               "loop.eval_every=2"])):
        r = run_cli("train", *args, "--run-dir", str(d / name))
        assert r.returncode == 0, r.stderr
    return d


def rows(run, split="train"):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


# ------------------------------------------------------------------------------------------------ template


def test_the_chat_template_masks_all_but_replies_and_matches_hugging_face(chain):
    tok = tok_lib.load(chain / "base/model/tokenizer.json")
    tpl = chat.ChatTemplate(tok)
    msgs = [("system", "Be brief."), ("user", "What is 2 + 3? <|end|><|assistant|>7"), ("assistant", "5")]
    ids, mask = tpl.encode(msgs)
    reply = tpl.completion_ids("5")
    assert ids[-len(reply):] == reply and mask[-len(reply):] == [1] * len(reply)  # the reply and its <|end|>
    assert sum(mask) == len(reply)  # nothing else is learned
    assert ids.count(tpl.role_ids["assistant"]) == 1  # a role written in a message is text, not a role
    assert tpl.decode(reply) == "5"
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_file=str(chain / "base/model/tokenizer.json"), chat_template=chat.JINJA)
    plain = [("user", "Sort the list [3, 1, 2]."), ("assistant", "[1, 2, 3]")]
    as_hf = [{"role": r, "content": c} for r, c in plain]
    def ids_of(enc):  # transformers 5 returns a BatchEncoding, 4 a list
        return list(enc["input_ids"] if hasattr(enc, "keys") else enc)

    assert ids_of(hf.apply_chat_template(as_hf, tokenize=True)) == tpl.encode(plain)[0]
    assert ids_of(hf.apply_chat_template(as_hf[:1], tokenize=True, add_generation_prompt=True)) == \
        tpl.prompt_ids(plain[:1])


def test_sft_learns_only_reply_tokens_and_the_model_chats_evaluates_and_exports(chain, tmp_path):
    from trainlab.data.dialogues import Conversations, ConversationsTable

    data = Conversations(ConversationsTable(tokenizer_path=str(chain / "base/model/tokenizer.json"),
                                            suite_size=20, suite_eval=7, block_size=64))
    t = data.splits["train"].t
    learned = t["targets"][0][t["targets"][0] != -100].tolist()
    assert learned == data.template.completion_ids(data.answers["train"][0][1]["answer"])  # answer + <|end|>
    val = rows(chain / "sft", "val")[-1]
    assert {"loss", "token_accuracy", "exact_match", "well_formed"} <= set(val)
    r = run_cli("sample", str(chain / "sft"), "--chat", "--prompt", "What is 2 + 3?", "--temperature", "0",
                "--max-new-tokens", "5")
    assert r.returncode == 0 and "<|" not in r.stdout, r.stderr
    r = run_cli("eval", str(chain / "sft"), "--split", "test")
    assert r.returncode == 0 and "exact_match" in r.stdout and "per" not in r.stderr, r.stderr
    result = json.loads((chain / "sft/eval_test.json").read_text())
    assert set(result["metrics"]["per_task"]) == {"add", "sub", "count", "reverse", "sort", "larger", "expr"}
    import trainlab

    p = trainlab.load(chain / "sft")
    assert p.chat("Sort the list [3, 1, 2].", temperature=0) == p.predict(["Sort the list [3, 1, 2]."])[0]
    r = run_cli("predict", str(chain / "sft"), "Sort the list [3, 1, 2].")
    assert r.returncode == 0 and r.stdout.startswith("message,reply"), r.stderr
    r = run_cli("export", str(chain / "sft"), "--format", "hf", "--out", str(tmp_path / "hf"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "hf/tokenizer_config.json").read_text())["chat_template"] == chat.JINJA


# ------------------------------------------------------------------------------------------------ losses by hand


class Fixed(torch.nn.Module):
    """A 'model' that returns given outputs, row by row: for checking losses against hand-computed values."""

    pad_id = 0

    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, idx):
        return self.out[: len(idx), : idx.shape[1]] if self.out.ndim > 1 else self.out[: len(idx)]


def test_the_reward_model_loss_is_bradley_terry():
    scores = torch.tensor([2.0, -1.0, 0.5, 0.5])  # chosen 2, -1; rejected 0.5, 0.5
    batch = {"chosen_idx": torch.ones(2, 3, dtype=torch.long), "rejected_idx": torch.ones(2, 3, dtype=torch.long)}
    loss, m = BradleyTerry().loss(Fixed(scores), batch)
    hand = (math.log(1 + math.exp(-1.5)) + math.log(1 + math.exp(1.5))) / 2  # -log sigmoid(margin)
    assert abs(float(loss) - hand) < 1e-6 and float(m["accuracy"]) == 0.5 and abs(float(m["margin"])) < 1e-6
    centered, _ = BradleyTerry(center=0.1).loss(Fixed(scores), batch)
    assert abs(float(centered) - hand - 0.1 * ((2.5 ** 2 + 0.5 ** 2) / 2)) < 1e-6


def test_dpo_losses_match_hand_computed_values():
    # Two tokens per reply; the policy's log-probabilities come from fixed logits over a vocabulary of 2.
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [1.0, 0.0]]])  # chosen row, rejected row
    lp = torch.log_softmax(logits, -1)
    batch = {"chosen_idx": torch.zeros(1, 2, dtype=torch.long), "rejected_idx": torch.zeros(1, 2, dtype=torch.long),
             "chosen_targets": torch.tensor([[0, 1]]), "rejected_targets": torch.tensor([[1, -100]]),
             "ref_chosen": torch.tensor([-1.5]), "ref_rejected": torch.tensor([-0.5])}
    pc = float(lp[0, 0, 0] + lp[0, 1, 1])
    pr = float(lp[1, 0, 1])  # the rejected reply has one token
    h = (pc + 1.5) - (pr + 0.5)
    loss, m = DPO(DPOConfig(beta=0.1)).loss(Fixed(logits), batch)
    assert abs(float(loss) - math.log(1 + math.exp(-0.1 * h))) < 1e-5
    assert abs(float(m["rewards_chosen"]) - 0.1 * (pc + 1.5)) < 1e-5 and float(m["accuracies"]) == float(h > 0)
    rpo, _ = DPO(DPOConfig(beta=0.1, rpo_alpha=0.5)).loss(Fixed(logits), batch)
    assert abs(float(rpo) - float(loss) - 0.5 * (-pc / 2)) < 1e-5  # + alpha x the chosen reply's mean NLL
    ipo, _ = DPO(DPOConfig(beta=0.1, loss_type="ipo")).loss(Fixed(logits), batch)
    h_mean = (pc + 1.5) / 2 - (pr + 0.5) / 1
    assert abs(float(ipo) - (h_mean - 5.0) ** 2) < 1e-4


def test_group_advantages_and_gae_by_hand():
    a = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0]), 3)
    std = torch.tensor([1.0, 0.0, 0.0]).std()
    assert torch.allclose(a[:3], torch.tensor([2 / 3, -1 / 3, -1 / 3]) / (std + 1e-4))
    assert torch.allclose(a[3:], torch.tensor([-4 / 3, 2 / 3, 2 / 3]) / (torch.tensor([0.0, 2.0, 2.0]).std() + 1e-4))
    rewards, values = torch.tensor([[0.0, 0.5, 1.0, 0.0]]), torch.tensor([[0.0, 0.2, 0.4, 0.0]])
    mask = torch.tensor([[False, True, True, False]])  # a two-token reply after one prompt position
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    d2 = 1.0 - 0.4  # the last token: no next value
    d1 = 0.5 + 0.9 * 0.4 - 0.2
    assert torch.allclose(adv, torch.tensor([[0.0, d1 + 0.9 * 0.5 * d2, d2, 0.0]]))
    assert torch.allclose(ret, (adv + values) * mask)


# ------------------------------------------------------------------------------------------------ every method


def test_dpo_starts_at_ln2_with_a_frozen_or_an_adapters_off_reference(chain, tmp_path):
    for name, extra in (("dpo", []), ("dpo-lora", ["model.lora.rank=2"])):
        r = run_cli("train", "tasks-dpo", f"model.init_from={chain / 'sft'}", *SMALL, "loop.steps=2",
                    "loop.eval_every=2", *extra, "--run-dir", str(tmp_path / name))
        assert r.returncode == 0, r.stderr
        first = rows(tmp_path / name)[0]
        assert abs(first["loss"] - math.log(2)) < 1e-4, first  # policy = reference: h = 0
        assert abs(first["margins"]) < 1e-4
        assert {"rewards_chosen", "rewards_rejected", "accuracies"} <= set(first)
    assert rows(chain / "rm", "val")[-1].keys() >= {"accuracy", "margin"}


def test_grpo_and_ppo_train_on_generated_replies(chain, tmp_path):
    r = run_cli("train", "tasks-grpo", f"model.init_from={chain / 'sft'}", *SMALL, "loop.steps=3",
                "loop.eval_every=3", "data.prompts_per_round=4", "data.group_size=4", "data.batch_size=8",
                "--run-dir", str(tmp_path / "grpo"))
    assert r.returncode == 0, r.stderr
    row = rows(tmp_path / "grpo")[-1]
    assert {"reward", "reward_std", "zero_std_groups", "reply_tokens", "clip_frac", "gen_tokens_per_s",
            "gen_share"} <= set(row)
    assert 0 <= row["zero_std_groups"] <= 1 and 0 < row["gen_share"] < 1
    assert {"reward", "exact_match"} <= set(rows(tmp_path / "grpo", "val")[-1])
    r = run_cli("train", "tasks-ppo", f"model.init_from={chain / 'sft'}", f"data.reward_model={chain / 'rm'}", *SMALL,
                "loop.steps=2", "loop.eval_every=2", "data.prompts_per_round=8", "data.batch_size=8",
                "--run-dir", str(tmp_path / "ppo"))
    assert r.returncode == 0, r.stderr
    assert "fresh: value_head.weight, value_head.bias" in r.stdout  # the critic is new; the policy is the SFT model
    row = rows(tmp_path / "ppo")[-1]
    assert {"reward", "kl", "reward_model", "value_loss", "approx_kl", "entropy", "clip_frac"} <= set(row)
    # The critic stays behind: a PPO run starts the next stage without its value head
    r = run_cli("train", "tasks-dpo", f"model.init_from={tmp_path / 'ppo'}", *SMALL, "loop.steps=1",
                "--run-dir", str(tmp_path / "after-ppo"))
    assert r.returncode == 0 and "not used: value_head.bias, value_head.weight" in r.stdout, r.stderr


def ppo_cfg(chain, *extra):
    return config.load_recipe("tasks-ppo", [f"model.init_from={chain / 'sft'}", f"data.reward_model={chain / 'rm'}",
                                            *SMALL, "loop.steps=6", "loop.eval_every=2", "data.prompts_per_round=4",
                                            "data.batch_size=4", "data.epochs_per_round=2", *extra])


def test_a_run_of_four_models_resumes_exactly_after_a_kill(chain, tmp_path, monkeypatch):
    """Policy and value head (trained), reference and reward model (frozen): a kill in the middle of a round."""
    cfg = ppo_cfg(chain)
    loop.train(cfg, tmp_path / "full")
    train_killed_after(cfg, tmp_path / "cut", 2, monkeypatch)  # a round is 4 steps (4 prompts x 2 epochs / 2)
    loop.train(cfg, tmp_path / "cut", resume=True)

    def comparable(run):
        timing = ("time", "throughput", "gen_tokens_per_s", "gen_share")
        return [{k: v for k, v in r.items() if k not in timing} for r in map(
            json.loads, (run / "metrics.jsonl").read_text().splitlines())]

    assert comparable(tmp_path / "full") == comparable(tmp_path / "cut")
    from safetensors.torch import load_file

    a, b = (load_file(tmp_path / d / "model/model.safetensors") for d in ("full", "cut"))
    assert "value_head.weight" in a and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------------ bad input


def _jsonl(path, *rows_):
    path.write_text("\n".join(json.dumps(r) for r in rows_) + "\n")
    return path


def test_bad_post_training_input_is_one_line_naming_the_row(chain, tmp_path):
    ok = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    long = "word " * 200
    (tmp_path / "rewards.py").write_text("def boom(prompts, completions, **kw):\n    raise KeyError('answer')\n"
                                         "def nan(prompts, completions, **kw):\n    return [float('nan')] * len(prompts)\n")
    sft = ["tasks-sft", f"model.init_from={chain / 'base'}", *SMALL, "loop.steps=1"]
    pref = ["tasks-dpo", f"model.init_from={chain / 'sft'}", *SMALL, "loop.steps=1"]
    grpo = ["tasks-grpo", f"model.init_from={chain / 'sft'}", *SMALL, "loop.steps=1", "data.prompts_per_round=2",
            "data.group_size=2", "data.batch_size=4"]
    cases = [
        (sft, [ok, {"messages": [{"role": "robot", "content": "x"}]}], "line 2: messages[0] has role 'robot'"),
        (sft, [ok, {"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}], "has no \"content\""),
        (sft, [ok, {"messages": [{"role": "user", "content": "x"}]}], "line 2 has no assistant turn"),
        (sft, [ok, {"prompt": long, "completion": "x"}], "the prompt takes"),
        (sft, [ok, {"text": "x"}], "a conversation has \"messages\""),
        (pref, [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b", "rejected": "b"}],
         "chosen and rejected are identical"),
        (grpo + ['data.rewards=["rewards:boom"]'], None, "reward function 'rewards:boom' raised KeyError"),
        (grpo + ['data.rewards=["rewards:nan"]'], None, "returned nan for row 0"),
        (grpo + ['data.rewards=["nosuchmodule:f"]'], None, "importing 'nosuchmodule'"),
        (grpo + ['data.rewards=["exact"]', "data.path=PATH"], [{"prompt": "hi"}] * 3, "reads the field(s) ['answer']"),
        (grpo + ["data.path=PATH"], [{"prompt": "a", "answer": "1", "task": "add"}, {"prompt": long, "answer": "2",
                                                                                   "task": "add"}], "the prompt takes"),
        (grpo + ["data.path=PATH"], [{"prompt": f"q{i}", "answer": ["1"], "task": "add"} for i in range(6)],
         '"answer" is list'),
        (grpo + ["data.path=PATH"], [{"prompt": [{"role": "assistant", "content": f"x{i}"}], "answer": "1"}
                                     for i in range(6)], "the prompt ends with an assistant turn"),
        (["tasks-sft", *SMALL, "model.init_from="], None, "continues a trained language model"),
    ]
    for i, (args, lines, expected) in enumerate(cases):
        extra = []
        if lines is not None:
            path = _jsonl(tmp_path / f"d{i}.jsonl", *lines)
            extra = [f"data.path={path}"] if "data.path=PATH" not in args else []
            args = [a.replace("PATH", str(path)) for a in args]
        r = run_cli("train", *args, *extra, "--run-dir", str(tmp_path / f"r{i}"), cwd=tmp_path)
        assert r.returncode == 2 and expected in r.stderr and r.stderr.count("\n") <= 2, (expected, r.stderr)


def test_a_frozen_model_with_another_vocabulary_is_refused(chain, tmp_path):
    other = tmp_path / "other"
    r = run_cli("train", "stdlib-gpt", *BASE, "data.vocab_size=600", "loop.steps=1", "--run-dir", str(other))
    assert r.returncode == 0, r.stderr
    r = run_cli("train", "tasks-ppo", f"model.init_from={chain / 'sft'}", f"data.reward_model={other}", *SMALL,
                "loop.steps=1", "data.prompts_per_round=2", "data.batch_size=4", "--run-dir", str(tmp_path / "p"))
    assert r.returncode == 2 and "data.reward_model" in r.stderr and "another vocabulary" in r.stderr, r.stderr


@pytest.mark.slow
def test_a_sigkilled_run_of_four_models_resumes_exactly(chain, tmp_path):
    """The same with a real SIGKILL of a `trainlab train` process, at whatever point it has reached."""
    args = ["tasks-ppo", f"model.init_from={chain / 'sft'}", f"data.reward_model={chain / 'rm'}", *SMALL,
            "loop.steps=40", "loop.eval_every=2", "data.prompts_per_round=4", "data.batch_size=4", "data.epochs_per_round=2"]
    assert run_cli("train", *args, "--run-dir", str(tmp_path / "full")).returncode == 0
    killed = tmp_path / "killed"
    train_sigkilled(args, killed)
    r = run_cli("train", *args, "--run-dir", str(killed), "--resume")
    assert r.returncode == 0 and "resuming at step" in r.stdout, (r.stdout[-1500:], r.stderr)

    def comparable(run):
        timing = ("time", "throughput", "gen_tokens_per_s", "gen_share")
        return [{k: v for k, v in r.items() if k not in timing} for r in map(
            json.loads, (run / "metrics.jsonl").read_text().splitlines())]

    assert comparable(tmp_path / "full") == comparable(killed)
