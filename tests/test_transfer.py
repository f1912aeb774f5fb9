"""Transfer learning: LoRA, task heads on trunks, the encoder and masked-LM objective, discriminative rates and
gradual unfreezing (issue 12). Runs of whole recipes are in tests/test_finetune.py."""

from __future__ import annotations

import pytest
import torch

from trainlab import config
from trainlab.errors import UserError
from trainlab.models import build, lora
from trainlab.objectives.masked_lm import MaskedLM, MaskedLMConfig
from trainlab.optim import Unfreezer, param_groups

LM_INFO = {"task": "language_modeling", "vocab_size": 97, "block_size": 16, "pad_id": 1, "mask_id": 2}
CLS_INFO = {"task": "classification", "num_classes": 3, "vocab_size": 97, "block_size": 16, "pad_id": 1,
            "capabilities": ["tokens", "labels"]}


def tiny(kind="gpt", info=LM_INFO, **keys):
    torch.manual_seed(0)
    return build(config.table("model", kind=kind, n_layer=2, n_embd=32, n_head=2, **keys), info)


# ------------------------------------------------------------------------------------------------ LoRA


def test_lora_trains_only_adapters_and_starts_as_the_base():
    base = tiny()
    x = torch.randint(3, 97, (2, 12))
    adapted = tiny(lora={"rank": 4, "targets": ["attn", "mlp"]})
    adapted.load_state_dict(base.state_dict(), strict=False)
    trained = [n for n, p in adapted.named_parameters() if p.requires_grad]
    assert trained and all(".lora_" in n for n in trained)
    assert len(trained) == 2 * 2 * 4  # 2 blocks x (qkv, proj, up, down) x (A, B)
    base.eval(), adapted.eval()
    torch.testing.assert_close(adapted(x), base(x))  # B = 0: exactly the base model
    # The names of the base weights are unchanged: a pre-trained state dict loads into the adapted model.
    assert set(base.state_dict()) <= set(adapted.state_dict())


def test_lora_merge_gives_the_adapted_outputs():
    m = tiny(lora={"rank": 4, "alpha": 8.0})
    with torch.no_grad():
        for layer in lora.layers(m).values():
            layer.lora_B.normal_(0, 0.1)
    m.eval()
    x = torch.randint(3, 97, (2, 12))
    plain = tiny()
    plain.load_state_dict(lora.merged_state_dict(m))
    plain.eval()
    torch.testing.assert_close(plain(x), m(x), atol=1e-5, rtol=1e-5)


def test_lora_on_a_classifier_also_trains_the_new_head():
    m = tiny(info=CLS_INFO, head="classify", lora={"rank": 2})
    trained = {n for n, p in m.named_parameters() if p.requires_grad}
    assert {"head.weight", "head.bias"} <= trained
    assert set(lora.adapter_state_dict(m)) == trained


def test_lora_bad_targets_and_rank_are_one_line_errors():
    with pytest.raises(UserError, match=r"match no linear layer.*") as e:
        tiny(lora={"rank": 2, "targets": ["nope"]})
    assert "qkv" in e.value.hint
    with pytest.raises(UserError, match=r"rank = 64 is larger than the layer"):
        tiny(lora={"rank": 64})


# ------------------------------------------------------------------------------------------------ heads


def test_gpt_classifier_ignores_right_padding():
    m = tiny(info=CLS_INFO, head="classify").eval()
    x = torch.randint(3, 97, (1, 7))
    padded = torch.cat([x, torch.full((1, 5), 1)], 1)
    for pooling in ("last", "mean"):
        m.cfg = m.cfg.model_copy(update={"pooling": pooling})
        torch.testing.assert_close(m(padded), m(x))


def test_encoder_ignores_padding_and_sees_both_sides():
    m = tiny("encoder", info=CLS_INFO, head="classify", dropout=0.0).eval()
    x = torch.randint(3, 97, (1, 7))
    padded = torch.cat([x, torch.full((1, 5), 1)], 1)
    torch.testing.assert_close(m.hidden(padded)[:, :7], m.hidden(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m(padded), m(x), atol=1e-5, rtol=1e-5)
    y = x.clone()
    y[0, -1] = 3 if x[0, -1] != 3 else 4  # bidirectional: changing the last token changes the first's state
    assert not torch.allclose(m.hidden(y)[0, 0], m.hidden(x)[0, 0])


def test_classify_head_needs_labelled_text():
    with pytest.raises(UserError, match="needs labelled text"):
        tiny(head="classify")


def test_head_decides_the_objective_and_the_pairing():
    cfg = config.validate({"data": {"source": "stdlib"}, "model": {"kind": "encoder"}})
    assert cfg.objective.kind == "masked_lm"
    with pytest.raises(UserError, match=r"needs a model that gives predictions.*model.head = 'lm'"):
        config.validate({"data": {"source": "stdlib"}, "model": {"kind": "gpt"}, "objective": {"kind": "supervised"}})


# ------------------------------------------------------------------------------------------------ masked LM


def test_masking_follows_bert_proportions_and_spares_special_tokens():
    torch.manual_seed(0)
    obj = MaskedLM(MaskedLMConfig(), mask_id=2, vocab_size=1000, special_ids=[0, 1])
    idx = torch.randint(3, 1000, (64, 512))
    idx[:, ::50] = 0  # document boundaries are never chosen
    x, targets = obj.corrupt(idx)
    chosen = targets != -100
    assert abs(chosen.float().mean().item() - 0.15 * 0.98) < 0.005
    assert not chosen[:, ::50].any()
    masked = (x == 2) & chosen
    kept = (x == idx) & chosen
    assert abs(masked.sum().item() / chosen.sum().item() - 0.8) < 0.01
    assert abs(kept.sum().item() / chosen.sum().item() - 0.1) < 0.01  # (plus random draws equal to the token)
    assert torch.equal(x[~chosen], idx[~chosen])  # nothing else changes
    assert torch.equal(targets[chosen], idx[chosen])


def test_validation_masks_are_fixed_and_leave_the_training_generator_alone():
    m = tiny("encoder", dropout=0.0).eval()
    obj = MaskedLM(MaskedLMConfig(), mask_id=2, vocab_size=97, special_ids=[1])
    batch = {"idx": torch.randint(3, 97, (4, 16))}
    torch.manual_seed(5)
    before = torch.get_rng_state()
    a, _ = obj.loss(m, batch)
    b, _ = obj.loss(m, batch)
    assert torch.equal(torch.get_rng_state(), before)
    assert a.item() == b.item()
    m.train()
    obj.loss(m, batch)
    assert not torch.equal(torch.get_rng_state(), before)  # training draws from the checkpointed generator


def test_masked_lm_needs_a_mask_token():
    from trainlab import objectives

    with pytest.raises(UserError, match="needs a tokenizer with a mask token"):
        objectives.build(config.table("objective", kind="masked_lm"), {**LM_INFO, "mask_id": None, "tokenizer": "char"},
                         "encoder")


# ------------------------------------------------------------------------------------------------ schedules


def test_layer_decay_gives_each_block_its_rate():
    m = build(config.table("model", kind="gpt", n_layer=3, n_embd=32, n_head=2), LM_INFO)
    groups = param_groups(m, 0.1, layer_decay=0.5)
    rate = {id(p): g["lr_mult"] for g in groups for p in g["params"]}
    named = dict(m.named_parameters())
    assert rate[id(named["norm.weight"])] == 1.0
    assert rate[id(named["blocks.2.attn.qkv.weight"])] == 0.5
    assert rate[id(named["blocks.0.attn.qkv.weight"])] == 0.125
    assert rate[id(named["wte.weight"])] == 0.0625  # tied with the head: listed once, as the embedding


def test_unfreezing_goes_top_down_one_layer_per_period():
    m = tiny(info=CLS_INFO, head="classify")
    u = Unfreezer(m, every=10)
    trains = lambda: {n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("blocks") else "")  # noqa: E731
                      for n, p in m.named_parameters() if p.requires_grad}
    assert u(0) == 1 and trains() == {"norm", "head"}
    assert u(10) == 2 and trains() == {"norm", "head", "blocks.1"}
    assert u(25) == 3 and trains() == {"norm", "head", "blocks.1", "blocks.0"}
    assert u(1000) == 4 and "wte" in trains()


def test_layer_rates_need_blocks():
    mlp = build(config.table("model", kind="mlp"), {"task": "classification", "num_classes": 2, "input_shape": [4]})
    with pytest.raises(UserError, match="optim.layer_decay needs a model made of Transformer blocks"):
        param_groups(mlp, 0.0, layer_decay=0.9)
