"""Training throughput of the stdlib-gpt recipe on 1 and 2 processes, and on a GPU with and without torch.compile.

CPU (default): the same recipe, global batch and steps, run as `trainlab train` (1 process, all cores) and as
`torchrun --standalone --nproc_per_node 2 -m trainlab train` (2 processes with gloo, one thread each, which
is torchrun's default), alternating for --rounds rounds. Throughput is read from the runs' metrics.jsonl (the
loop's own tokens/s over each log window of 10 steps, first window skipped as warm-up). Prints each round, the
medians and `ratio: X.XX` = 2 processes / 1 process. On a 2-core machine both layouts share the same two
cores: the question is whether two single-threaded processes plus a gradient all-reduce per step beat one
process with two threads.

GPU (--gpu): one process on CUDA in bf16, eager vs `loop.compile=true`, on a GPT-2-small-sized model (12 x 768,
context 1024) trained on the stdlib corpus; prints tokens/s and MFU (the loop's, from the GPU's data-sheet
peak) and `ratio: X.XX` = compiled / eager.

    python benchmarks/distributed_throughput.py [--rounds 3] [--steps 60]
    python benchmarks/distributed_throughput.py --gpu [--rounds 3] [--steps 60]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
GPT2_SMALL = ["model.n_layer=12", "model.n_head=12", "model.n_embd=768", "data.block_size=1024",
              "data.batch_size=16", "data.vocab_size=8192", "model.norm=layer", "model.activation=gelu"]


def run(launcher: list[str], overrides: list[str], steps: int, run_dir: Path) -> tuple[float, float]:
    """Median tokens/s and MFU over the log windows of one training run (the first window is warm-up)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    args = ["train", "stdlib-gpt", f"loop.max_steps={steps}", f"loop.eval_every={steps}", "loop.eval_batches=1",
            "loop.log_every=10", *overrides, "--run-dir", str(run_dir)]
    r = subprocess.run([*launcher, *args], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(launcher + args)}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in rows if r["split"] == "train" and "throughput" in r][1:]
    return (statistics.median(r["throughput"] for r in windows),
            statistics.median(r.get("mfu", 0.0) for r in windows))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--gpu", action="store_true", help="single-GPU bf16 throughput and MFU, eager vs compiled")
    args = p.parse_args()

    one = [sys.executable, "-m", "trainlab"]
    if args.gpu:
        layouts = {"eager": (one, [*GPT2_SMALL, "loop.device=cuda", "loop.precision=bf16"]),
                   "compiled": (one, [*GPT2_SMALL, "loop.device=cuda", "loop.precision=bf16", "loop.compile=true"])}
    else:
        layouts = {"1 process": (one, []),
                   "2 processes": ([TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "trainlab"], [])}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in layouts}
    with tempfile.TemporaryDirectory() as tmp:
        run(one, next(iter(layouts.values()))[1], 20, Path(tmp) / "warm")  # packs the corpus once, untimed
        for k in range(args.rounds):
            for name, (launcher, overrides) in layouts.items():
                tps, mfu = run(launcher, overrides, args.steps, Path(tmp) / "run")
                results[name].append((tps, mfu))
                print(f"round {k + 1}: {name:<12} {tps:>10,.0f} tok/s" + (f"  MFU {mfu:.1%}" if args.gpu else ""),
                      flush=True)
    medians = {name: statistics.median(t for t, _ in rs) for name, rs in results.items()}
    for name, rs in results.items():
        print(f"median {name:<12} {medians[name]:>10,.0f} tok/s"
              + (f"  MFU {statistics.median(m for _, m in rs):.1%}" if args.gpu else ""))
    a, b = list(medians.values())
    print(f"ratio: {b / a:.2f}")


if __name__ == "__main__":
    main()
