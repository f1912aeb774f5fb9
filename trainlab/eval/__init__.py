"""`trainlab eval RUN_DIR --split val|test`: the finished model's metrics on a split, beside a baseline."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import torch

from trainlab import config, data as data_lib, files, models, registry
from trainlab.errors import UserError
from trainlab.eval import metrics as M
from trainlab.runs import write_json


@torch.no_grad()
def predict(model: torch.nn.Module, batches, task: str) -> np.ndarray:
    out = []
    for batch in batches:
        y = model(batch["x"])
        out.append(y.argmax(-1) if task == "classification" else y.squeeze(-1))
    return torch.cat(out).numpy()


@torch.no_grad()
def evaluate_language_model(model, data, split: str) -> dict:
    """Loss (nats per token), perplexity and bits per byte over the whole split, beside a unigram model.

    Bits per byte = loss / ln 2 * tokens / bytes: it does not depend on the tokenizer, so a character-level
    and a BPE model of the same text compare directly.
    """
    import math

    import torch.nn.functional as F

    nll, n = 0.0, 0
    for batch in data.eval_batches(split):
        logits = model(batch["idx"])
        nll += float(F.cross_entropy(logits.float().flatten(0, 1), batch["targets"].flatten(), reduction="sum"))
        n += batch["targets"].numel()
    if n == 0:
        raise UserError(f"the '{split}' split holds no complete window of data.block_size tokens",
                        "evaluate another split, or train with a larger data.val_fraction/test_fraction")
    bpt = data.info["bytes_per_token"][split]
    # The baseline: every token drawn from the training split's token frequencies (add-one smoothed).
    counts = np.bincount(np.asarray(data.tokens["train"]), minlength=data.info["vocab_size"]) + 1.0
    logp = np.log(counts / counts.sum())
    ev = np.asarray(data.tokens[split][: n + 1][1:n + 1]).astype(np.int64)
    base = -float(logp[ev].mean())

    def lm(loss):
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "bits_per_byte": loss / math.log(2) / bpt}

    return {"split": split, "n": n, "task": "language_modeling", "metrics": lm(nll / n),
            "baseline": {"name": "unigram token frequencies of the training split", **lm(base)}}


def evaluate_masked_lm(model, data, split: str, cfg) -> dict:
    """A masked language model: the loss, perplexity and accuracy on the masked positions of every window of the
    split (the masks validation draws: fixed per window), beside the unigram model on the same positions. A
    next-token loss would mean nothing here: the encoder sees the token it would be asked for."""
    import math

    import torch

    from trainlab import objectives

    objective = objectives.build(cfg.objective, data.info, cfg.model.kind)
    model.eval()
    counts = np.bincount(np.asarray(data.tokens["train"]), minlength=data.info["vocab_size"]) + 1.0
    logp = torch.from_numpy(np.log(counts / counts.sum()))
    top = int(logp.argmax())  # the unigram model's guess at every position
    nll = base = correct = base_correct = 0.0
    n = 0
    with torch.no_grad():
        for batch in data.eval_batches(split):
            idx = batch["idx"]
            x, targets = objective.corrupt(idx, objective.eval_generator(idx))  # the masks validation draws
            chosen = targets != -100
            logits = model(x)[chosen].float()
            nll += float(torch.nn.functional.cross_entropy(logits, targets[chosen], reduction="sum"))
            correct += float((logits.argmax(-1) == targets[chosen]).sum())
            base -= float(logp[targets[chosen]].sum())
            base_correct += float((targets[chosen] == top).sum())
            n += int(chosen.sum())
    if n == 0:
        raise UserError(f"the '{split}' split holds no complete window of data.block_size tokens",
                        "evaluate another split, or train with a larger data.val_fraction/test_fraction")

    def lm(loss):
        return {"masked_loss": loss, "masked_perplexity": math.exp(min(loss, 50.0))}

    return {"split": split, "n": n, "task": "language_modeling", "objective": "masked_lm",
            "metrics": {**lm(nll / n), "mask_accuracy": correct / n},
            "baseline": {"name": "unigram token frequencies of the training split", **lm(base / n),
                         "mask_accuracy": base_correct / n}}


def evaluate_run(run_dir: str | Path, split: str = "val", model: tuple | None = None, episodes: int = 0) -> dict:
    """The run's model on its own `split` beside a baseline, written to eval_<split>.json. `model`: (module,
    info) already loaded (trainlab.load of a run of your own module), instead of rebuilding it from model/.
    `episodes`: episodes (games) played by a run of an environment (self-play) source; its default otherwise."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} does not exist", "give the folder `trainlab train` printed")
    cfg = config.load_resolved(run_dir / "config.toml")
    model, info = model if model is not None else models.load(run_dir / "model")
    data = data_lib.build(cfg.data)  # the same seeded split the run was trained on
    files.check_fits(info, data.info, run_dir / "model")
    plays = hasattr(data, "evaluate_model") and "episodes" in inspect.signature(data.evaluate_model).parameters
    if episodes and not plays:
        raise UserError(f"--episodes applies to runs that play episodes or games; {run_dir} was trained on "
                        f"data.source = '{cfg.data.source}'", "leave --episodes out")
    if hasattr(data, "evaluate_model"):  # a source that scores models its own way (replies, episodes, games)
        out = data.evaluate_model(model, split, **({"episodes": episodes} if episodes else {}))
        write_json(run_dir / f"eval_{split}.json", out)
        return out
    if info.get("task") == "language_modeling" and cfg.objective.kind == "masked_lm":
        out = evaluate_masked_lm(model, data, split, cfg)
        write_json(run_dir / f"eval_{split}.json", out)
        return out
    if info.get("task") == "language_modeling":
        out = evaluate_language_model(model, data, split)
        write_json(run_dir / f"eval_{split}.json", out)
        return out
    if split not in data.splits or len(data.splits[split]) == 0:
        raise UserError(f"the run has no '{split}' split (data.test_fraction = {cfg.data.test_fraction})",
                        "evaluate --split val, or train with data.test_fraction > 0")
    if registry.unsupervised(cfg.model.kind):
        from trainlab.eval import unsupervised

        out = unsupervised.evaluate(model, info, cfg, data, split)
        write_json(run_dir / f"eval_{split}.json", out)
        return out
    task, names = info["task"], info["class_names"]
    y_pred = predict(model, data.eval_batches(split), task)
    y_true, y_train = data.splits[split].y.numpy(), data.splits["train"].y.numpy()
    if task == "classification":
        result, base = M.classification(y_true, y_pred, names), M.baseline(task, y_train, y_true, names)
    else:
        # Back to the target's own units: the model was trained on standardized targets.
        mean, std = info.get("y_mean", 0.0), info.get("y_std", 1.0)
        y_true, y_pred, y_train = (a * std + mean for a in (y_true, y_pred, y_train))
        result, base = M.regression(y_true, y_pred), M.baseline(task, y_train, y_true, names)
    out = {"split": split, "n": int(len(y_true)), "task": task, "metrics": result, "baseline": base}
    write_json(run_dir / f"eval_{split}.json", out)
    return out


def format_table(result: dict) -> str:
    """The headline metrics beside the baseline, then per-class scores and the confusion matrix."""
    m, b = result["metrics"], result["baseline"]
    keys = [k for k, v in m.items() if isinstance(v, float)]
    used = set(result.get("labels_used", ()))
    unit = "tokens" if result.get("task") == "language_modeling" else "examples"
    unit = "masked tokens" if result.get("objective") == "masked_lm" else unit
    unit = "prompts" if "exact_match" in m else "pairs" if result.get("task") == "chat" else unit
    unit = {"control": "episodes", "selfplay": "games"}.get(result.get("task"), unit)
    lines = [f"{result['split']} split, {result['n']} {unit}", f"{'metric':<18}{'model':>12}{'baseline':>12}"]
    lines += [f"{k:<18}{m[k]:>12.4f}{b[k] if k in b else float('nan'):>12.4f}" + ("   (uses labels)" if k in used else "")
              for k in keys]
    lines.append(f"baseline: {b['name']}")
    if "per_task" in m:
        lines += ["", f"{'task':<18}{'exact_match':>12}"] + [f"{t:<18}{v:>12.4f}" for t, v in m["per_task"].items()]
    for ex in result.get("examples", []):
        lines.append(f"  {ex['prompt']!r} -> {ex['reply']!r} (answer {ex['answer']!r})")
    if "per_class" in m:
        lines.append("")
        lines.append(f"{'class':<18}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}")
        for name, s in m["per_class"].items():
            lines.append(f"{name[:17]:<18}{s['precision']:>10.4f}{s['recall']:>10.4f}{s['f1']:>10.4f}{s['support']:>9}")
        cm = m["confusion_matrix"]
        w = max(4, len(str(max(max(r) for r in cm))) + 1)
        lines.append("")
        names = list(m["per_class"]) if len(m["per_class"]) == len(cm) else [str(i) for i in range(len(cm))]
        lines.append("confusion matrix (rows: true class, columns: predicted, in the same order)")
        lines.append(" " * 12 + "".join(f"{str(i)[:w - 1]:>{w}}" for i in range(len(cm))))
        for i, row in enumerate(cm):
            label = f"{i:>2} {names[i][:8]:>8}" if names[i] != str(i) else f"{i:>11}"  # a name beside its number
            lines.append(f"{label} " + "".join(f"{v:>{w}}" for v in row))
    return "\n".join(lines)
