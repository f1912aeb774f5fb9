"""Training throughput of trainlab's GPT against transformers' GPT2LMHeadModel of identical size.

Same architecture choices as GPT-2 on both sides (learned positions, LayerNorm with biases, GELU MLP, tied
embeddings), same AdamW, same batch, same random tokens, same machine, one process. For each size, the two
models alternate in rounds of timed steps; the script prints each round, the medians, and the ratio
trainlab / transformers. Last line: `ratio: X.XX`, the smaller of the two sizes' median ratios.

    python benchmarks/gpt_throughput.py [--rounds 5] [--steps 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from trainlab.models.gpt import GPT, GPTConfig

SIZES = [
    # name, layers, heads, width, context, batch, vocab
    ("shakespeare-char (4 x 128, ctx 64, batch 12)", 4, 4, 128, 64, 12, 65),
    ("6 x 384 (ctx 256, batch 8, vocab 4096)", 6, 6, 384, 256, 8, 4096),
]


def trainlab_model(layers, heads, width, ctx, vocab):
    return GPT(GPTConfig(n_layer=layers, n_head=heads, n_embd=width, bias=True, norm="layer", pos="learned",
                         activation="gelu", tie_weights=True), vocab, ctx)


def hf_model(layers, heads, width, ctx, vocab):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=vocab, n_positions=ctx, n_embd=width, n_layer=layers, n_head=heads,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True)
    try:
        return GPT2LMHeadModel(cfg, attn_implementation="sdpa")  # its fastest attention on a CPU
    except TypeError:
        return GPT2LMHeadModel(cfg)


def steps_per_second(model, forward, idx, targets, steps: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    t = time.perf_counter()
    for _ in range(steps):
        loss = forward(model, idx, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return steps / (time.perf_counter() - t)


def tl_forward(model, idx, targets):
    return F.cross_entropy(model(idx).flatten(0, 1), targets.flatten())


def hf_forward(model, idx, targets):
    logits = model(input_ids=idx).logits  # the same loss, computed the same way
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    ratios = []
    for name, layers, heads, width, ctx, batch, vocab in SIZES:
        torch.manual_seed(0)
        tl, hf = trainlab_model(layers, heads, width, ctx, vocab), hf_model(layers, heads, width, ctx, vocab)
        n_tl, n_hf = sum(p.numel() for p in tl.parameters()), sum(p.numel() for p in hf.parameters())
        idx = torch.randint(0, vocab, (batch, ctx))
        targets = torch.randint(0, vocab, (batch, ctx))
        for m, f in ((tl, tl_forward), (hf, hf_forward)):  # warm-up: allocator, kernels
            steps_per_second(m, f, idx, targets, 3)
        tl_rates, hf_rates = [], []
        print(f"\n{name}: trainlab {n_tl:,} parameters, transformers {n_hf:,}")
        for r in range(args.rounds):
            tl_rates.append(steps_per_second(tl, tl_forward, idx, targets, args.steps) * batch * ctx)
            hf_rates.append(steps_per_second(hf, hf_forward, idx, targets, args.steps) * batch * ctx)
            print(f"  round {r}: trainlab {tl_rates[-1]:>9,.0f} tok/s   transformers {hf_rates[-1]:>9,.0f} tok/s")
        a, b = statistics.median(tl_rates), statistics.median(hf_rates)
        ratios.append(a / b)
        print(f"  median: trainlab {a:,.0f} tok/s, transformers {b:,.0f} tok/s, ratio {a / b:.2f}")
    print(f"ratio: {min(ratios):.2f}")


if __name__ == "__main__":
    main()
