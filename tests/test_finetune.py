"""Fine-tuning end to end (issue 12): a GPT pre-trained here, then a classifier, LoRA, replay, gradual
unfreezing on its trunk; the masked-LM encoder; MiniLM; the fine-tuning recipes for a few steps each."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

import trainlab
from trainlab import config, loop
from tests.conftest import run_cli, train_killed_after

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SMALL_TEXT = ["data.max_bytes=300000", "data.split=tail", "data.vocab_size=512", "data.block_size=32"]
TINY_GPT = ["model.n_layer=2", "model.n_embd=32", "model.n_head=2"]
TASK = ['data.packages=["email","json"]', "data.block_size=32", "data.batch_size=8", "data.eval_batch_size=64",
        "loop.eval_every=2", "loop.log_every=1", "schedule.warmup_steps=0"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny GPT language model trained for a few steps on standard-library text."""
    run = tmp_path_factory.mktemp("pre") / "gpt"
    r = run_cli("train", "stdlib-gpt", *SMALL_TEXT, *TINY_GPT, "loop.steps=4", "loop.eval_every=4",
                "schedule.warmup_steps=0", "--run-dir", str(run))
    assert r.returncode == 0, r.stderr
    return run


def test_a_classifier_on_the_pretrained_trunk_loads_it_exactly_and_names_the_new_head(pretrained, tmp_path):
    run = tmp_path / "cls"
    r = run_cli("train", "stdlib-classes-gpt", f"model.init_from={pretrained}", *TASK, "loop.steps=3",
                'optim.freeze=["wte","blocks","norm"]', "--run-dir", str(run))
    assert r.returncode == 0, r.stderr
    assert f"initialized from {pretrained}; fresh: head.weight, head.bias" in r.stdout
    base, tuned = load_file(pretrained / "model/model.safetensors"), load_file(run / "model/model.safetensors")
    trunk = [k for k in tuned if not k.startswith("head.")]
    assert trunk and all(torch.equal(tuned[k], base["head.weight" if k == "wte.weight" else k]) for k in trunk)
    assert tuned["head.weight"].shape == (2, 32)
    cfg = config.load_resolved(run / "config.toml")
    assert cfg.model.n_layer == 2 and cfg.model.head == "classify" and cfg.data.tokenizer_path.endswith("tokenizer.json")
    assert run_cli("eval", str(run), "--split", "test").returncode == 0
    p = trainlab.load(run)
    assert p.predict(["def dumps(obj):\n    return json.dumps(obj, indent=2)\n"])[0] in ("email", "json")


def test_the_task_head_cannot_generate_and_the_encoder_cannot_sample(pretrained, tmp_path):
    run = tmp_path / "mlm"
    r = run_cli("train", "stdlib-mlm", *SMALL_TEXT, *TINY_GPT, "model.max_positions=32", "loop.steps=2",
                "loop.eval_every=2", "schedule.warmup_steps=0", "--run-dir", str(run))
    assert r.returncode == 0, r.stderr
    r = run_cli("sample", str(run), "--prompt", "def")
    assert r.returncode == 2 and r.stderr.count("\n") <= 2 and "masked" in r.stderr


def test_the_masked_lm_encoder_fine_tunes_into_a_classifier(tmp_path):
    pre = tmp_path / "mlm"
    r = run_cli("train", "stdlib-mlm", *SMALL_TEXT, *TINY_GPT, "model.max_positions=32", "loop.steps=3",
                "loop.eval_every=3", "schedule.warmup_steps=0", "--run-dir", str(pre))
    assert r.returncode == 0, r.stderr
    assert "mask_accuracy" in json.loads((pre / "summary.json").read_text())["metrics"]["val"]
    run = tmp_path / "enc"
    r = run_cli("train", "stdlib-classes-encoder", f"model.init_from={pre}", *TASK, "loop.steps=2",
                "--run-dir", str(run))
    assert r.returncode == 0, r.stderr
    assert "fresh: head.weight, head.bias" in r.stdout and "not used: mlm.bias, mlm.dense.bias" in r.stdout


def test_a_lora_run_saves_only_adapters_that_peft_and_export_reproduce(pretrained, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = tmp_path / "lora"
    r = run_cli("train", "stdlib-gpt", f"model.init_from={pretrained}", *SMALL_TEXT, "model.lora.rank=4",
                'model.lora.targets=["attn","mlp"]', "optim.lr=0.05", "loop.steps=3", "loop.eval_every=3",
                "schedule.warmup_steps=0", "--run-dir", str(run))
    assert r.returncode == 0, r.stderr
    assert "16 LoRA adapter tensors" in r.stdout
    files = sorted(p.name for p in (run / "model").iterdir())
    assert files == ["adapter.safetensors", "config.json", "peft", "tokenizer.json"]
    adapter = load_file(run / "model/adapter.safetensors")
    assert all(".lora_" in k for k in adapter) and len(adapter) == 16
    assert f"({sum(t.numel() for t in adapter.values()):,} trained)" in r.stdout
    assert (run / "model/adapter.safetensors").stat().st_size < (pretrained / "model/model.safetensors").stat().st_size / 4
    ours = trainlab.load(run).model
    idx = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        logits = ours(idx)
        # The adapters moved the model: it is not the base any more.
        assert (logits - trainlab.load(pretrained).model(idx)).abs().max() > 1e-3
    # The run's peft/ folder on the base exported to Hugging Face gives the same logits in PEFT.
    assert run_cli("export", str(pretrained), "--format", "hf", "--out", str(tmp_path / "base")).returncode == 0
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), run / "model/peft").eval()
    with torch.no_grad():
        assert (peft(idx).logits - logits).abs().max() < 1e-4
    # Exporting the LoRA run merges the adapters into plain weights.
    assert run_cli("export", str(run), "--format", "hf", "--out", str(tmp_path / "merged")).returncode == 0
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()(idx).logits
    assert (merged - logits).abs().max() < 1e-4
    # Without its base, the adapter folder says so in one line.
    shutil.move(pretrained, tmp_path / "moved")
    try:
        r = run_cli("eval", str(run))
        assert r.returncode == 2 and "LoRA adapters for the base model" in r.stderr and "no longer exists" in r.stderr
    finally:
        shutil.move(tmp_path / "moved", pretrained)


def _finetune_cfg(pretrained, *extra):
    return config.load_recipe("stdlib-classes-gpt", [f"model.init_from={pretrained}", *TASK, "loop.steps=6",
                                                     "loop.eval_every=3", "loop.log_every=1", *extra])


@pytest.mark.parametrize("extra", [
    ["data.replay_fraction=0.5"],
    ["optim.unfreeze_every=2", "optim.layer_decay=0.5"],
    ["model.lora.rank=2"],
    ["model.lora.rank=2", 'model.init_skip=["norm"]'],
], ids=["replay", "unfreeze+layer_decay", "lora", "lora+init_skip"])
def test_fine_tuning_options_resume_exactly(pretrained, tmp_path, monkeypatch, extra):
    cfg = _finetune_cfg(pretrained, *extra)
    full = loop.train(cfg, tmp_path / "full")
    train_killed_after(cfg, tmp_path / "cut", 3, monkeypatch)
    loop.train(cfg, tmp_path / "cut", resume=True)
    a, b = (trainlab.load(tmp_path / d).model.state_dict() for d in ("full", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [json.loads(line) for line in (tmp_path / "full/metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    if "data.replay_fraction=0.5" in extra:
        assert all("replay_ce" in r and "task_loss" in r for r in train)
        assert abs(train[0]["loss"] - 0.5 * (train[0]["task_loss"] + train[0]["replay_ce"])) < 1e-4
    assert full["status"] == "completed"


def test_gradual_unfreezing_trains_the_head_first(pretrained, tmp_path):
    cfg = _finetune_cfg(pretrained, "optim.unfreeze_every=100", "loop.steps=2")
    loop.train(cfg, tmp_path / "u")
    base, tuned = load_file(pretrained / "model/model.safetensors"), load_file(tmp_path / "u/model/model.safetensors")
    assert all(torch.equal(tuned[k], base["head.weight" if k == "wte.weight" else k]) for k in tuned
               if k.startswith(("blocks.", "wte.")))
    assert not torch.equal(tuned["norm.weight"], base["norm.weight"])  # the top layer (final norm + head) trains


def test_fine_tuning_mistakes_are_one_line(pretrained, tmp_path):
    cases = [
        (["stdlib-classes-gpt", f"model.init_from={pretrained}", "model.lora.rank=2", 'model.lora.targets=["nope"]'],
         "match no linear layer"),
        (["stdlib-classes-gpt", f"model.init_from={pretrained}", "model.lora.rank=999"], "is larger than the layer"),
        (["stdlib-classes-gpt", f"model.init_from={pretrained}", "data.replay_fraction=0.2",
          f"data.replay_from={tmp_path}"], "has no config.toml"),
        (["stdlib-classes-gpt", "model.init_from=hf:" + str(tmp_path / "nothing")], "does not exist"),
        (["stdlib-classes-gpt", f"model.init_from={pretrained}", "model.kind=encoder"], "holds a 'gpt' model"),
        (["stdlib-gpt", "objective.kind=supervised"], "needs a model that gives predictions"),
    ]
    for args, expect in cases:
        r = run_cli("train", *args, *TASK[1:], "loop.steps=1", "--run-dir", str(tmp_path / "bad"))
        assert r.returncode == 2 and expect in r.stderr, (args, r.stderr)
        assert r.stderr.count("error:") == 1
        assert not (tmp_path / "bad").exists()  # refused before anything was written: no folder left behind


@pytest.mark.slow
def test_minilm_fine_tunes_from_the_installed_package(tmp_path):
    run = tmp_path / "minilm"
    r = run_cli("train", "stdlib-classes-minilm", *TASK, "loop.steps=2", "data.batch_size=4", "--run-dir", str(run))
    assert r.returncode == 0, r.stderr
    assert "fresh: head.weight, head.bias" in r.stdout and "pooler.dense" in r.stdout
    assert json.loads((run / "model/config.json").read_text())["info"]["vocab_size"] == 30522
    p = trainlab.load(run)
    assert p.predict(["def f():\n    pass\n"])[0] in ("email", "json")


def test_labelled_text_is_refused_by_language_model_objectives_and_a_classifier_base_brings_its_objective(
        pretrained, tmp_path):
    r = run_cli("train", "stdlib-gpt", "data.source=stdlib_classes", 'data.packages=["email","json"]',
                "--run-dir", str(tmp_path / "x"))
    assert r.returncode == 2 and "trains on running text" in r.stderr and "model.head = 'classify'" in r.stderr
    cls = tmp_path / "cls"
    assert run_cli("train", "stdlib-classes-gpt", f"model.init_from={pretrained}", *TASK, "loop.steps=1",
                   "--run-dir", str(cls)).returncode == 0
    # A recipe that sets no head, started from the classifier: the classifier's head, and so its objective,
    # which running text cannot feed: one line, not a KeyError deep in the loop.
    r = run_cli("train", "stdlib-gpt", f"model.init_from={cls}", *SMALL_TEXT, "--run-dir", str(tmp_path / "again"))
    assert r.returncode == 2 and "objective.kind = 'supervised' needs data with labels" in r.stderr, r.stderr


def test_lora_keeps_training_and_saving_what_the_base_did_not_have(pretrained, tmp_path):
    run = tmp_path / "skip"
    r = run_cli("train", "stdlib-gpt", f"model.init_from={pretrained}", *SMALL_TEXT, "model.lora.rank=2",
                'model.init_skip=["norm"]', "loop.steps=2", "loop.eval_every=2", "optim.lr=0.05",
                "optim.unfreeze_every=1", "--run-dir", str(run))
    assert r.returncode == 0, r.stderr  # gradual unfreezing counts only the layers that have something to train
    saved = load_file(run / "model/adapter.safetensors")
    assert "norm.weight" in saved and not torch.equal(saved["norm.weight"], torch.ones_like(saved["norm.weight"]))
    torch.testing.assert_close(trainlab.load(run).model.norm.weight.detach(), saved["norm.weight"])
    # The base is retrained: the adapters refuse it instead of loading onto other weights.
    (pretrained / "model/model.safetensors").rename(pretrained / "model/kept.bin")
    try:
        shutil.copy(run / "model/adapter.safetensors", pretrained / "model/model.safetensors")
        r = run_cli("eval", str(run))
        assert r.returncode == 2 and "changed since" in r.stderr
    finally:
        (pretrained / "model/kept.bin").rename(pretrained / "model/model.safetensors")


def test_replay_gives_every_process_windows_of_its_own(pretrained, tmp_path):
    from trainlab import data as data_lib
    from trainlab.data import replay
    from trainlab.distributed import plan

    cfg = _finetune_cfg(pretrained, "data.replay_fraction=0.2", "data.batch_size=8")
    from trainlab import models

    cfg = models.resolve_init(cfg, say=lambda *_: None)
    data = replay.wrap(data_lib.build(cfg.data), cfg)
    got = []
    for rank in range(2):
        micro = data.stream(0, None, plan(8, 1, 2, rank)).next_step()
        assert len(micro) == 1 and len(micro[0]["x"]) == 4 and len(micro[0]["replay_idx"]) == 1
        got.append(micro[0]["replay_idx"])
    assert not torch.equal(got[0], got[1])
    one = data.stream(0, None, plan(8, 1, 1, 0)).next_step()[0]
    assert len(one["replay_idx"]) == 2  # round(8 x 0.2 / 0.8)


def test_masked_lm_eval_and_keys_and_hints(pretrained, tmp_path):
    pre = tmp_path / "mlm"
    assert run_cli("train", "stdlib-mlm", *SMALL_TEXT, *TINY_GPT, "model.max_positions=32", "loop.steps=2",
                   "loop.eval_every=2", "schedule.warmup_steps=0", "--run-dir", str(pre)).returncode == 0
    r = run_cli("eval", str(pre), "--split", "test")
    assert r.returncode == 0 and "masked_perplexity" in r.stdout and "masked tokens" in r.stdout, r.stderr
    out = json.loads((pre / "eval_test.json").read_text())
    assert out["objective"] == "masked_lm" and out["n"] > 0
    assert {"masked_loss", "masked_perplexity", "mask_accuracy"} <= set(out["metrics"]) & set(out["baseline"])
    keys = run_cli("recipes", "--keys").stdout
    assert "model.lora.rank = 0  (int)  # rank of each update" in keys
    assert "optim.layer_decay = 1.0" in keys and "Discriminative fine-tuning" in keys
    # A Hugging Face folder given without hf:, a context longer than the base's learned positions.
    assert run_cli("export", str(pretrained), "--format", "hf", "--out", str(tmp_path / "hf")).returncode == 0
    r = run_cli("train", "stdlib-gpt", f"model.init_from={tmp_path / 'hf'}", "--run-dir", str(tmp_path / "a"))
    assert r.returncode == 2 and f"write model.init_from = 'hf:{tmp_path / 'hf'}'" in r.stderr
    r = run_cli("train", "stdlib-gpt", f"model.init_from=hf:{tmp_path / 'hf'}", *SMALL_TEXT, "loop.steps=1",
                "loop.eval_every=1", "--run-dir", str(tmp_path / "b"))
    assert r.returncode == 0, r.stderr
    first = json.loads((tmp_path / "b/metrics.jsonl").read_text().splitlines()[0])
    base = json.loads((pretrained / "summary.json").read_text())["metrics"]["val"]
    assert abs(first["loss"] - base["loss"]) < 1e-4  # the imported Llama is the pre-trained GPT, exactly


def test_runs_of_an_earlier_text_format_are_refused_not_misread():
    from trainlab import files
    from trainlab.errors import UserError

    old = {"task": "language_modeling", "vocab_size": 512, "block_size": 32}
    with pytest.raises(UserError, match="earlier trainlab"):
        files.check_fits(old, {**old, "pad_id": 5}, "run/model")
    with pytest.raises(UserError, match="another tokenizer.json"):
        files.check_fits({**old, "pad_id": 5, "tokenizer_sha256": "a"}, {**old, "pad_id": 5, "tokenizer_sha256": "b"},
                         "run/model")
