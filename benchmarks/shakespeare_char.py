"""Validation loss against wall-clock time for the shakespeare-char recipe (nanoGPT's CPU quick start).

nanoGPT's README reports validation loss 1.88 after about 3 minutes on a CPU for this configuration (4 layers,
4 heads, 128 wide, context 64, batch 12, 2000 steps). This trains the same recipe through `trainlab train` on the
text file at PATH and prints validation loss at each evaluation with the seconds since training started.
Extra arguments are recipe overrides, so variants can be measured the same way:

    python benchmarks/shakespeare_char.py ../shared/data/tinyshakespeare.txt
    python benchmarks/shakespeare_char.py ../shared/data/tinyshakespeare.txt optim.lr=2e-3 loop.steps=1500

Last line: `final val loss: X.XXX after S s` (the last evaluation, S = training seconds up to it).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python benchmarks/shakespeare_char.py PATH [key=value ...]")
    path, overrides = sys.argv[1], sys.argv[2:]
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "trainlab", "train", "shakespeare-char", f"data.path={path}",
               f"data.cache_dir={tmp}/cache", "loop.eval_batches=8", *overrides, "--run-dir", str(run)]
        # Tokenize first (a separate, untimed run of zero steps would still build the model): pack the cache,
        # then time training alone, as nanoGPT's prepare.py runs before train.py.
        from trainlab.config import load_recipe
        from trainlab.data.text import TextData

        TextData(load_recipe("shakespeare-char", [f"data.path={path}", f"data.cache_dir={tmp}/cache"]).data)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        start = next(r["time"] for r in rows if r["split"] == "val")  # the step-0 evaluation opens training
        print(f"{'step':>6} {'seconds':>8} {'val loss':>9}")
        val = [r for r in rows if r["split"] == "val"]
        for r in val:
            print(f"{r['step']:>6} {r['time'] - start:>8.1f} {r['loss']:>9.3f}")
        under = [r for r in val if r["loss"] <= 1.88]
        if under:
            print(f"first val loss <= 1.88: {under[0]['loss']:.3f} at step {under[0]['step']}, "
                  f"{under[0]['time'] - start:.1f} s")
        else:
            print("val loss never reached 1.88")
        print(f"final val loss: {val[-1]['loss']:.3f} after {val[-1]['time'] - start:.0f} s")


if __name__ == "__main__":
    main()
