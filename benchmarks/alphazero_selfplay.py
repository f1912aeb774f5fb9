"""AlphaZero self-play from random weights: how fast tic-tac-toe stops losing to perfect play, and how often the
connect-four model beats the one-step lookahead player.

Trains the bundled recipes as `trainlab train` does (one process, --threads threads), reads the validation rows
of each run's metrics.jsonl (the current model searching without noise against the reference players, half the
games moving first), then plays the exported model (the best by the recipe's loop.monitor) in a larger final
match: --final-games against perfect minimax (tic-tac-toe) or the lookahead player (connect-four). Writes
docs/benchmarks/alphazero.md, alphazero.json and alphazero.png (wins/draws/losses against minimax, and against
lookahead, over the training minutes) and prints `minutes to never losing: X` (the first validation from which
on the model lost no game to minimax, in minutes since training started).

    python benchmarks/alphazero_selfplay.py [--games tictactoe connect4] [--threads 2] [--final-games 100]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "docs" / "benchmarks"
RECIPE = {"tictactoe": "tictactoe-alphazero", "connect4": "connect4-alphazero"}
OPPONENT = {"tictactoe": "minimax", "connect4": "lookahead"}


def train(game: str, threads: int, run_dir: Path, overrides: list[str]) -> float:
    """Train the game's recipe into run_dir; the wall time in seconds."""
    shutil.rmtree(run_dir, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t = time.time()
    r = subprocess.run([sys.executable, "-m", "trainlab", "train", RECIPE[game], f"loop.threads={threads}",
                        *overrides, "--run-dir", str(run_dir)], capture_output=True, text=True, env=env, cwd=REPO)
    if r.returncode != 0:
        sys.exit(f"training {game} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return time.time() - t


def curve(run_dir: Path, opponent: str) -> list[dict]:
    """Per validation: step, minutes since the first row, and the fractions won, drawn and lost vs opponent."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    t0 = rows[0]["time"]
    out = []
    for r in rows:
        if r["split"] != "val":
            continue
        score, lost = r[f"score_vs_{opponent}"], r[f"losses_vs_{opponent}"]
        won = 2 * score - 1 + lost  # score = won + drawn / 2, won + drawn + lost = 1
        out.append({"step": r["step"], "minutes": (r["time"] - t0) / 60, "wins": round(won, 4) + 0.0,
                    "draws": round(1 - won - lost, 4) + 0.0, "losses": lost})  # + 0.0: no "-0.0"
    return out


def final_match(run_dir: Path, opponent: str, games: int) -> dict:
    """The exported model against the opponent in `games` games (half moving first)."""
    from trainlab import config, models
    from trainlab.rl import players
    from trainlab.rl.selfplay import SelfPlay

    cfg = config.load_resolved(run_dir / "config.toml")
    model, _ = models.load(run_dir / "model")
    data = SelfPlay(cfg.data)
    return players.match(data.model_player(model, "cpu"), data.reference(opponent), data.game, games, seed=12345)


def never_losing(points: list[dict]) -> float | None:
    """Minutes at the first validation from which on no game was lost."""
    for i, p in enumerate(points):
        if all(q["losses"] == 0 for q in points[i:]):
            return p["minutes"]
    return None


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for ax, (game, res) in zip(axes[0], results.items()):
        pts = res["curve"]
        x = [p["minutes"] for p in pts]
        for key, color in (("wins", "tab:green"), ("draws", "tab:gray"), ("losses", "tab:red")):
            ax.plot(x, [p[key] for p in pts], marker="o", ms=3, color=color, label=key)
        ax.set_title(f"{game}: the model vs {res['opponent']} (validation)")
        ax.set_xlabel("training minutes")
        ax.set_ylabel("fraction of games")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--games", nargs="+", default=["tictactoe", "connect4"], choices=list(RECIPE))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--final-games", type=int, default=100)
    p.add_argument("--keep", help="train into this folder (kept) instead of a temporary one")
    args = p.parse_args()

    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="alphazero-"))
    results = {}
    for game in args.games:
        run_dir = base / game
        wall = train(game, args.threads, run_dir, [])
        opponent = OPPONENT[game]
        pts = curve(run_dir, opponent)
        summary = json.loads((run_dir / "summary.json").read_text())
        final = final_match(run_dir, opponent, args.final_games)
        results[game] = {"recipe": RECIPE[game], "opponent": opponent, "threads": args.threads,
                         "train_wall_s": round(wall, 1), "steps": summary["steps"],
                         "exported_step": summary["exported"]["step"], "curve": pts,
                         "minutes_to_never_losing": never_losing(pts), "final_match": final}
        print(f"{game}: trained in {wall / 60:.1f} min; final match vs {opponent}: {final}")
        if game == "tictactoe":
            m = results[game]["minutes_to_never_losing"]
            print(f"minutes to never losing: {m:.2f}" if m is not None else "minutes to never losing: never")
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    write(results, args.threads)


def write(results: dict, threads: int) -> None:
    """The games measured now replace theirs in alphazero.json; the other games' results stay."""
    OUT.mkdir(parents=True, exist_ok=True)
    old = json.loads((OUT / "alphazero.json").read_text()) if (OUT / "alphazero.json").is_file() else {}
    results = {g: results.get(g, old.get(g)) for g in RECIPE if g in results or g in old}
    (OUT / "alphazero.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, OUT / "alphazero.png")
    lines = ["# AlphaZero self-play (benchmarks/alphazero_selfplay.py)", "",
             f"From random weights, one process with {threads} CPU threads; validation is the current model "
             "(search without noise, the most visited move) against the reference player, half the games moving "
             "first. The final match plays the exported model (the best by loop.monitor).", "",
             "| game | recipe | training | final match | minutes to never losing (validation) |",
             "|---|---|---|---|---|"]
    for game, r in results.items():
        f = r["final_match"]
        m = r["minutes_to_never_losing"]
        lines.append(f"| {game} | {r['recipe']} | {r['steps']} steps, {r['train_wall_s'] / 60:.1f} min | "
                     f"vs {r['opponent']}: {f['wins']} W / {f['draws']} D / {f['losses']} L of {f['games']} | "
                     f"{'%.2f' % m if m is not None else 'never'} |")
    lines += ["", "![wins, draws and losses over training](alphazero.png)", ""]
    (OUT / "alphazero.md").write_text("\n".join(lines))
    print(f"wrote {OUT / 'alphazero.md'}, alphazero.json, alphazero.png")


if __name__ == "__main__":
    main()
