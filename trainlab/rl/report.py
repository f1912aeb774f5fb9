"""The report's section for environment runs: return against environment steps, and one recorded episode."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def env_step_curves(rows: list[dict]) -> tuple[list[tuple[float, float]], list[tuple[float, float, float]]]:
    """(env steps, mean return of the last 100 training episodes) of the training rows, and (env steps, return,
    std) of the validation rows (a validation step is placed at the env steps its training row reached)."""
    from trainlab.report import _num

    at: dict[int, float] = {}
    train = []
    for r in rows:
        if r.get("split") == "train" and (x := _num(r.get("env_steps"))) is not None:
            at[r["step"]] = x
            if r.get("episodes", 1) and (y := _num(r.get("episode_return"))) is not None:
                train.append((x, y))
    val = []
    for r in rows:
        if r.get("split") == "val" and (y := _num(r.get("episode_return"))) is not None:
            x = at.get(r["step"], 0.0 if r["step"] == 0 else None)
            if x is not None:
                val.append((x, y, _num(r.get("return_std")) or 0.0))
    return train, val


def section(run_dir: Path, cfg, rows: list[dict]) -> list[str]:
    from trainlab import plots

    train, val = env_step_curves(rows)
    md = ["", "## Return against environment steps", ""]
    if not train and not val:
        return md + ["No episode has finished yet."]
    plots.returns(train, val, run_dir / "returns.png", f"{cfg.data.env}: {cfg.objective.kind}",
                  f"deterministic evaluation ({cfg.data.eval_episodes} episodes)")
    md.append("![episode return against environment steps](returns.png)")
    if val:
        best = max(val, key=lambda v: v[1])
        md += ["", f"Best validation return {best[1]:.1f} ± {best[2]:.1f} at {best[0]:,.0f} environment steps; "
               f"last {val[-1][1]:.1f} at {val[-1][0]:,.0f}."]
    md += _recording(run_dir, cfg)
    return md


def _recording(run_dir: Path, cfg) -> list[str]:
    """One deterministic episode of the exported model: episode.gif and a strip of 8 frames."""
    if not (run_dir / "model" / "config.json").is_file():
        return []
    import torch

    from trainlab import data as data_lib, models
    from trainlab.rl.rollouts import record_frames

    model, _ = models.load(run_dir / "model")
    source = data_lib.build(cfg.data)
    with torch.no_grad():
        frames = record_frames(cfg.data, source.act_fn(model.eval()), source.episode_seed("test"))
    if not frames:
        return ["", f"{cfg.data.env} does not render RGB frames here: no recording."]
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    small = [im.convert("P", palette=Image.Palette.ADAPTIVE) for im in images[::2]]
    small[0].save(run_dir / "episode.gif", save_all=True, append_images=small[1:], duration=40, loop=0)
    picks = np.linspace(0, len(images) - 1, min(8, len(images))).round().astype(int)
    w, h = images[0].size
    scale = 160 / h
    tiles = [images[i].resize((int(w * scale), 160)) for i in picks]
    strip = Image.new("RGB", (sum(t.size[0] for t in tiles), 160), "white")
    x = 0
    for t in tiles:
        strip.paste(t, (x, 0))
        x += t.size[0]
    strip.save(run_dir / "episode_frames.png")
    return ["", f"A deterministic test episode of the exported model ({len(frames)} steps): "
            "[episode.gif](episode.gif)", "", "![frames of the episode, left to right](episode_frames.png)"]
