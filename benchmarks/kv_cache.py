"""KV-cache decoding against recomputing the whole prefix, at 512 new tokens.

The model is the stdlib-gpt size with a 1024-token context (so 512 new tokens fit without cropping); both
runs decode greedily from the same prompt, and the script checks they produce the same tokens.
Prints the median of several runs of each and the speed-up; last line: `kv-cache speedup: X.XX`.

    python benchmarks/kv_cache.py [--runs 3] [--new-tokens 512]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from trainlab.generate import generate_ids
from trainlab.models.gpt import GPT, GPTConfig


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=512)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=4, n_head=4, n_embd=128), 4096, 1024).eval()
    prompt = torch.randint(0, 4096, (16,)).tolist()
    times: dict[str, list[float]] = {"cache": [], "recompute": []}
    outputs = {}
    for _ in range(args.runs):
        for name in times:
            t = time.perf_counter()
            outputs[name] = list(generate_ids(model, prompt, args.new_tokens, temperature=0, use_cache=name == "cache"))
            times[name].append(time.perf_counter() - t)
    assert outputs["cache"] == outputs["recompute"], "the cache changed the generated tokens"
    c, r = statistics.median(times["cache"]), statistics.median(times["recompute"])
    print(f"{args.new_tokens} new tokens: with cache {c:.2f} s ({args.new_tokens / c:,.0f} tok/s), "
          f"recomputing {r:.2f} s ({args.new_tokens / r:,.0f} tok/s); medians of {args.runs}")
    print(f"kv-cache speedup: {r / c:.2f}")


if __name__ == "__main__":
    main()
