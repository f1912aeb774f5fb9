import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainlab.config import data_table
from trainlab.data import tokenizer as tok_lib
from trainlab.data.text import TextData, split_documents
from trainlab.errors import UserError
from trainlab.generate import generate_ids, generate_text, sample_next
from trainlab.models.gpt import GPT, GPTConfig, KVCache
from trainlab.objectives.next_token import NextToken


def tiny_gpt(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=50, block_size=32, n_layer=2, n_head=2, n_embd=32)
    cfg.update(kw)
    vocab, block = cfg.pop("vocab_size"), cfg.pop("block_size")
    if "mlp" in cfg:
        cfg["activation"] = cfg.pop("mlp")
    return GPT(GPTConfig(**cfg), vocab, block).eval()


@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_a_future_token_never_changes_an_earlier_logit(pos):
    m = tiny_gpt(pos=pos)
    a = torch.randint(0, 50, (1, 20))
    b = a.clone()
    b[0, 12:] = (b[0, 12:] + 7) % 50
    with torch.no_grad():
        la, lb = m(a), m(b)
    torch.testing.assert_close(la[:, :12], lb[:, :12])
    assert not torch.allclose(la[:, 12:], lb[:, 12:])


def test_attention_matches_a_naive_softmax_attention():
    m = tiny_gpt(pos="learned")
    attn = m.blocks[0].attn
    x = torch.randn(2, 10, 32)
    b, t, c = x.shape
    q, k, v = attn.qkv(x).split(c, dim=2)
    q, k, v = (z.view(b, t, 2, 16).transpose(1, 2) for z in (q, k, v))
    scores = q @ k.transpose(-2, -1) / math.sqrt(16)
    scores = scores.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf"))
    ref = attn.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, c))
    with torch.no_grad():
        torch.testing.assert_close(attn(x, None), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pos,moe", [("rope", 0), ("learned", 0), ("rope", 4)])
def test_kv_cache_logits_equal_a_full_forward(pos, moe):
    m = tiny_gpt(pos=pos, moe_experts=moe)
    seq = torch.randint(0, 50, (2, 24))
    with torch.no_grad():
        full = m(seq)
        cache = KVCache(m, 2, "cpu", torch.float32)
        parts = [m(seq[:, :10], cache), m(seq[:, 10:16], cache)]  # a prefix, then a chunk after it
        parts += [m(seq[:, i:i + 1], cache) for i in range(16, 24)]  # then one token at a time
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-4, atol=1e-5)


def test_greedy_generation_is_the_same_with_and_without_the_cache():
    m = tiny_gpt(block_size=16)
    prompt = [1, 2, 3]
    a = list(generate_ids(m, prompt, 30, temperature=0))  # runs past the context: the cache is refilled
    b = list(generate_ids(m, prompt, 30, temperature=0, use_cache=False))
    assert a[:13] == b[:13] and len(a) == 30


def test_sampling_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    g = torch.Generator().manual_seed(0)
    assert {int(sample_next(logits, 1.0, 2, 1.0, g)) for _ in range(50)} == {2, 3}
    # top-p 0.5: token 3 alone holds 0.64 of the mass
    assert {int(sample_next(logits, 1.0, 0, 0.5, g)) for _ in range(50)} == {3}
    assert int(sample_next(logits, 0.0, 0, 1.0, g)) == 3


def test_moe_routing_and_load_balancing_loss():
    m = tiny_gpt(moe_experts=4, moe_top_k=2)
    m.train()
    idx = torch.randint(0, 50, (4, 16))
    loss, metrics = NextToken(0.01).loss(m, {"idx": idx, "targets": idx})
    layer = m.moe_layers()[0]
    assert layer.load.sum().item() == pytest.approx(1.0)
    assert 0.9 < float(m.aux_loss().detach()) < 4.0  # 1 when perfectly balanced, n_experts when collapsed
    assert float(loss.detach()) == pytest.approx(float(metrics["ce"]) + 0.01 * float(metrics["moe_aux"]), rel=1e-5)
    loss.backward()
    assert layer.router.weight.grad.abs().sum() > 0  # the router learns through both terms
    # A router with uniform probabilities (P_e = 1/E) gives aux = E * sum_e f_e / E = 1, whatever the loads.
    with torch.no_grad():
        layer.router.weight.zero_()
        m(idx)
    assert float(layer.aux_loss) == pytest.approx(1.0)


def test_flops_per_token_counts_active_experts_only():
    dense, moe = tiny_gpt(), tiny_gpt(moe_experts=8, moe_top_k=1)
    from trainlab.models import num_parameters

    assert num_parameters(moe) > 4 * num_parameters(dense) / 2
    assert moe.flops_per_token() == pytest.approx(dense.flops_per_token(), rel=0.05)


def test_overfits_a_single_batch_to_near_zero_loss():
    m = tiny_gpt()
    m.train()
    idx = torch.randint(0, 50, (4, 33))
    batch = {"idx": idx[:, :-1], "targets": idx[:, 1:]}
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    obj = NextToken()
    for _ in range(400):
        loss, _ = obj.loss(m, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.1  # from about ln(50) = 3.9


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_tokenizer_round_trip(tmp_path, kind):
    texts = ["def f(x):\n    return x * 2  # é, ünïcode ✓\n"] * 20 + ["class A:\n    pass\n"]
    tok = tok_lib.train_tokenizer(kind, iter(texts), 300)
    for t in texts + ["return x"]:
        assert tok.decode(tok.encode(t)) == t
    tok_lib.save(tok, tmp_path / "tokenizer.json")
    again = tok_lib.load(tmp_path / "tokenizer.json")
    assert again.encode(texts[0]) == tok.encode(texts[0]) and again.eot_id == tok.eot_id == 0
    if kind == "bpe":
        assert tok.decode(tok.encode("never seen: 日本")) == "never seen: 日本"  # byte-level: nothing unknown


def write_corpus(folder, n_docs=12, words=400):
    folder.mkdir()
    rng = np.random.default_rng(0)
    vocab = ["alpha", "beta", "gamma", "delta", "return", "def", "(x)", ":", "\n"]
    for i in range(n_docs):
        (folder / f"doc{i:02d}.txt").write_text(" ".join(rng.choice(vocab, words)))
    return folder


def test_packing_holds_out_whole_documents_and_is_cached(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "c")
    cfg = data_table(source="text", path=str(corpus), tokenizer="char", block_size=16, val_fraction=0.2,
                     test_fraction=0.1, cache_dir=str(tmp_path / "cache"))
    d = TextData(cfg)
    docs = d.info["documents"]
    assert docs["train"] + docs["val"] + docs["test"] == 12 and docs["val"] >= 1
    assert d.tokens["train"].dtype == np.uint16
    eot = d.tokenizer.eot_id
    assert int((np.asarray(d.tokens["val"]) == eot).sum()) == docs["val"]  # one boundary per document
    assert "tokenizing" in capsys.readouterr().out
    TextData(cfg)
    assert "tokenizing" not in capsys.readouterr().out  # the second time comes from the cache
    batch = next(d.train_batches(seed=0))
    assert batch["idx"].shape == (64, 16) and torch.equal(batch["idx"][:, 1:], batch["targets"][:, :-1])


def test_split_is_stable_per_document():
    docs = [(f"d{i}", f"text {i}") for i in range(200)]
    a = split_documents(docs, 0.1, 0.1)
    b = split_documents(list(reversed(docs)), 0.1, 0.1)
    assert sorted(a["val"]) == sorted(b["val"]) and 5 < len(a["val"]) < 40


def test_vocabulary_beyond_uint16_switches_to_uint32(tmp_path):
    (tmp_path / "c").mkdir()
    chars = "".join(chr(0x10000 + i) for i in range(70_000))  # 70,000 distinct characters
    (tmp_path / "c" / "a.txt").write_text(chars * 2)
    cfg = data_table(source="text", path=str(tmp_path / "c"), tokenizer="char", split="tail", block_size=8,
                     val_fraction=0.2, test_fraction=0.0, cache_dir=str(tmp_path / "cache"))
    d = TextData(cfg)
    assert d.info["vocab_size"] > 65_536 and d.tokens["train"].dtype == np.uint32
    assert int(np.asarray(d.tokens["train"]).max()) > 65_535  # stored, not wrapped around
    assert d.tokenizer.decode(np.asarray(d.tokens["train"][:100]).tolist()) == (chars * 2)[:100]


def test_non_utf8_files_are_skipped_with_a_count_or_refused(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "c", n_docs=6)
    (corpus / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 50)
    cfg = data_table(source="text", path=str(corpus), tokenizer="char", block_size=16, val_fraction=0.2,
                     test_fraction=0.0, cache_dir=str(tmp_path / "cache"))
    assert TextData(cfg).info["skipped_files"] == 1
    with pytest.raises(UserError, match="not UTF-8"):
        TextData(cfg.model_copy(update={"on_decode_error": "error", "cache_dir": str(tmp_path / "c2")}))


def test_empty_corpus_and_tiny_splits(tmp_path):
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "a.txt").write_text("")
    with pytest.raises(UserError, match="empty"):
        TextData(data_table(source="text", path=str(tmp_path / "e"), cache_dir=str(tmp_path / "cache")))
    with pytest.raises(UserError, match="does not exist"):
        TextData(data_table(source="text", path=str(tmp_path / "nope"), cache_dir=str(tmp_path / "cache")))


def test_jsonl_source(tmp_path):
    rows = [json.dumps({"body": f"line {i} " * 30}) for i in range(20)]
    (tmp_path / "d.jsonl").write_text("\n".join(rows) + "\n")
    d = TextData(data_table(source="jsonl", path=str(tmp_path / "d.jsonl"), text_field="body", tokenizer="char",
                            block_size=16, cache_dir=str(tmp_path / "cache")))
    assert sum(d.info["documents"].values()) == 20
    with pytest.raises(UserError, match="no text field 'text'"):
        TextData(data_table(source="jsonl", path=str(tmp_path / "d.jsonl"), cache_dir=str(tmp_path / "c2")))


def test_prompt_longer_than_the_context():
    m = tiny_gpt(block_size=8)
    tok = tok_lib.CharTokenizer(list("abcdefghij"))
    with pytest.raises(UserError, match="context is 8"):
        list(generate_text(m, tok, "abcdefghij", 5))
    out = "".join(generate_text(m, tok, "abcdefghij", 5, temperature=0, truncate=True))
    assert len(out) <= 5


def test_stop_strings_are_held_back_while_they_may_still_match(monkeypatch):
    """The model's stream is fixed ("abcabd..."): "ab" could start the stop string "abd", so it is held back
    after "abc" until "abd" arrives; nothing of the stop string is ever shown."""
    from trainlab import generate as gen

    tok = tok_lib.CharTokenizer(list("abcd"))
    script = [tok.encode(c)[0] for c in "abcabdcc"]
    monkeypatch.setattr(gen, "generate_ids", lambda *a, **k: iter(script))
    pieces = list(gen.generate_text(tiny_gpt(vocab_size=tok.vocab_size), tok, "a", 8, stop=("abd",)))
    assert "".join(pieces) == "abc"
    assert pieces[0] == "abc"  # shown as soon as "c" ruled the stop string out; the next "ab" waited
    pieces = list(gen.generate_text(tiny_gpt(vocab_size=tok.vocab_size), tok, "a", 8, stop=("abx",)))
    assert "".join(pieces) == "abcabdcc"  # never matched: everything held back is shown at the end


@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_batched_generation_with_left_padding_matches_one_row_at_a_time(pos):
    from trainlab.generate import generate

    m = tiny_gpt(pos=pos)
    prompts = [[5, 6, 7, 8, 9], [3], [10, 11, 12]]
    alone = [generate(m, [p], 12, temperature=0)[0] for p in prompts]
    together = generate(m, prompts, 12, temperature=0)
    assert together == alone
    # Past the context (32) the cache is refilled with the recent half; rows still agree.
    long = [generate(m, [p], 40, temperature=0)[0] for p in prompts]
    assert generate(m, prompts, 40, temperature=0) == long


def test_padding_never_changes_the_logits_of_real_tokens():
    m = tiny_gpt()
    x = torch.tensor([[4, 5, 6, 7]])
    padded = torch.tensor([[0, 0, 4, 5, 6, 7]])
    a = m(x)
    b = m(padded, pad=torch.tensor([2]))[:, 2:]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert m.hidden(x).shape == (1, 4, 32)  # the trunk's final hidden states, for other heads


def test_generation_stops_each_row_at_its_own_eos():
    from trainlab.generate import generate

    m = tiny_gpt()
    free = generate(m, [[1, 2], [3, 4]], 20, temperature=1.0, seed=0)
    eos = free[0][5]  # a token row 0 emits (maybe earlier too)
    out = generate(m, [[1, 2], [3, 4]], 20, temperature=1.0, seed=0, eos_id=eos, check_every=4)
    assert out[0] == free[0][:free[0].index(eos)] and len(out[0]) <= 5
    assert out[1] == (free[1][:free[1].index(eos)] if eos in free[1] else free[1])


def test_loop_logs_tokens_per_second_and_mfu_and_resumes_text_exactly(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from trainlab import checkpoint, config, loop

    corpus = write_corpus(tmp_path / "c", n_docs=10, words=600)
    args = ["data.source=text", f"data.path={corpus}", "data.tokenizer=char", "data.block_size=32",
            "data.batch_size=4", f"data.cache_dir={tmp_path / 'cache'}", "model.n_layer=1", "model.n_embd=32",
            "model.n_head=2", "loop.steps=12", "loop.eval_every=6", "loop.eval_batches=2", "loop.log_every=3",
            "loop.peak_flops=1e12"]
    cfg = config.load_recipe("stdlib-gpt", args)
    loop.train(cfg, tmp_path / "a")
    rows = [json.loads(line) for line in (tmp_path / "a/metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "throughput" in r]
    assert logged and all(0 < r["mfu"] < 1 and r["throughput"] > 0 for r in logged)

    # A crash right after the step-6 checkpoint, then --resume: the same weights as the uninterrupted run.
    real_save = checkpoint.save

    def crash_after_step_6(root, step, *a, **kw):
        out = real_save(root, step, *a, **kw)
        if step == 6:
            raise RuntimeError("simulated crash")
        return out

    monkeypatch.setattr(checkpoint, "save", crash_after_step_6)
    with pytest.raises(RuntimeError):
        loop.train(cfg, tmp_path / "b")
    monkeypatch.undo()
    loop.train(cfg, tmp_path / "b", resume=True)
    a, b = load_file(tmp_path / "a/model/model.safetensors"), load_file(tmp_path / "b/model/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_hugging_face_dataset_saved_on_disk(tmp_path):
    from datasets import Dataset, DatasetDict

    texts = [f"document {i}: " + "lorem ipsum dolor " * 20 for i in range(30)]
    Dataset.from_dict({"content": texts}).save_to_disk(str(tmp_path / "ds"))
    d = TextData(data_table(source="hf_disk", path=str(tmp_path / "ds"), text_field="content", tokenizer="char",
                            block_size=16, cache_dir=str(tmp_path / "cache")))
    assert sum(d.info["documents"].values()) == 30
    DatasetDict({"a": Dataset.from_dict({"content": texts[:10]}), "b": Dataset.from_dict({"content": texts[10:]})}
                ).save_to_disk(str(tmp_path / "dd"))
    d = TextData(data_table(source="hf_disk", path=str(tmp_path / "dd"), text_field="content", tokenizer="char",
                            block_size=16, cache_dir=str(tmp_path / "cache")))
    assert sum(d.info["documents"].values()) == 30
    with pytest.raises(UserError, match="no column 'text'"):
        TextData(data_table(source="hf_disk", path=str(tmp_path / "ds"), cache_dir=str(tmp_path / "c2")))
