"""The `trainlab` command. User errors print one line `error: ...` and a hint, and exit with status 2."""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from pathlib import Path

from trainlab.errors import UserError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trainlab", description="Train AI models end to end with one training loop.")
    p.add_argument("--debug", action="store_true", help="show the full traceback of errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a recipe into a run folder")
    t.add_argument("recipe", help="a TOML file or the name of a bundled recipe (see `trainlab recipes`)")
    t.add_argument("overrides", nargs="*", metavar="key.sub=value", help="override recipe keys, e.g. optim.lr=3e-4")
    t.add_argument("--run-dir", help="the run folder (default: run.out_dir/run.name, numbered if taken)")
    t.add_argument("--resume", action="store_true", help="continue the run in --run-dir (default: the latest "
                   "run of this recipe) from its last checkpoint, exactly")

    e = sub.add_parser("eval", help="evaluate a trained run on a split, beside a baseline")
    e.add_argument("run_dir")
    e.add_argument("--split", default="val", choices=["val", "test"])
    e.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")

    g = sub.add_parser("sample", help="generate text from a trained language model")
    g.add_argument("run_dir")
    g.add_argument("--prompt", default="", help="text to continue (empty: start a new document)")
    g.add_argument("--max-new-tokens", type=int, default=200)
    g.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = all)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: the smallest set reaching p")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", default=[], help="stop at this string (repeatable)")
    g.add_argument("--truncate", action="store_true", help="keep the last tokens of a prompt longer than the context")

    r = sub.add_parser("report", help="write report.md and curves.png for a run")
    r.add_argument("run_dir")
    r.add_argument("--compare", nargs="*", default=[], metavar="RUN_DIR", help="overlay other runs' curves")

    rc = sub.add_parser("recipes", help="list the bundled recipes")
    rc.add_argument("--keys", action="store_true", help="list every valid recipe key with its default")
    return p


def cmd_train(args) -> None:
    from trainlab import config, distributed, loop, registry

    cfg = config.load_recipe(args.recipe, args.overrides)
    if registry.fitted(cfg.model.kind):
        if distributed.launched():
            raise UserError(f"model.kind = '{cfg.model.kind}' is fitted in one call by one process",
                            "run it without torchrun")
        run_dir = _train_dir(args, cfg)
        if args.resume:
            raise UserError(f"model.kind = '{cfg.model.kind}' is fitted in one call: there is nothing to resume",
                            "run it again without --resume")
        from trainlab import classical

        classical.fit(cfg, run_dir)
        return
    with distributed.session(cfg.loop) as ctx:
        # Rank 0 picks the folder (a numbered one may be taken meanwhile) and every process uses it.
        found = ctx.broadcast(_attempt(_train_dir, args, cfg) if ctx.main else None)
        if isinstance(found, tuple):
            raise UserError(*found)
        loop.train(cfg, found, resume=args.resume, ctx=ctx)


def _attempt(fn, *args):
    """fn(*args), or its UserError as (message, hint): something that can be sent to the other processes."""
    try:
        return fn(*args)
    except UserError as e:
        return e.message, e.hint


def _train_dir(args, cfg) -> Path:
    from trainlab import runs

    if args.resume:
        run_dir = Path(args.run_dir) if args.run_dir else runs.latest_run_dir(cfg.run.out_dir, cfg.run.name)
        if not (run_dir / "config.toml").is_file():
            raise UserError(f"--resume: {run_dir} is not a run folder (no config.toml)", "give --run-dir of a run")
        return run_dir
    if args.run_dir:
        run_dir = Path(args.run_dir)
        if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
            raise UserError(f"run folder {run_dir} already exists and is not empty",
                            "pass --resume to continue it, or choose another --run-dir")
        return run_dir
    return runs.new_run_dir(cfg.run.out_dir, cfg.run.name)


def cmd_eval(args) -> None:
    from trainlab.eval import evaluate_run, format_table

    result = evaluate_run(args.run_dir, args.split)
    print(json.dumps(result, indent=2) if args.json else format_table(result))


def cmd_sample(args) -> None:
    from trainlab import models
    from trainlab.data import tokenizer as tok_lib
    from trainlab.generate import generate_text

    model, info = models.load(Path(args.run_dir) / "model")
    if info.get("task") != "language_modeling":
        raise UserError(f"{args.run_dir} holds a {info.get('task')} model, not a language model",
                        "sample from a run of a GPT recipe, e.g. stdlib-gpt")
    if args.max_new_tokens < 1 or args.temperature < 0 or not 0 < args.top_p <= 1 or args.top_k < 0:
        raise UserError("--max-new-tokens must be >= 1, --temperature >= 0, --top-k >= 0 and 0 < --top-p <= 1",
                        "fix the sampling options")
    tokenizer = tok_lib.load(Path(args.run_dir) / "model" / "tokenizer.json")
    if tokenizer.vocab_size != model.vocab_size:
        raise UserError(f"the tokenizer in {args.run_dir}/model has {tokenizer.vocab_size} tokens but the model was "
                        f"trained with {model.vocab_size}: they do not match",
                        "use the tokenizer.json written by the same training run")
    print(args.prompt, end="", flush=True)
    for piece in generate_text(model, tokenizer, args.prompt, args.max_new_tokens, args.temperature, args.top_k,
                               args.top_p, args.seed, tuple(args.stop), args.truncate):
        print(piece, end="", flush=True)
    print()


def cmd_report(args) -> None:
    from trainlab.report import write_report

    out = write_report(args.run_dir, args.compare)
    print(f"wrote {out} with " + ", ".join(sorted(p.name for p in out.parent.glob("*.png"))))


def cmd_recipes(args) -> None:
    from trainlab import config

    if args.keys:
        print_keys()
        return
    found = config.bundled_recipes()
    width = max((len(n) for n in found), default=4)
    for name, path in found.items():
        try:
            desc = tomllib.loads(path.read_text()).get("run", {}).get("description", "")
        except tomllib.TOMLDecodeError:
            desc = "(not valid TOML)"
        print(f"{name:<{width}}  {desc}")


def print_keys() -> None:
    """Every recipe key with its default, type and comment, by table; [data], [model] and [objective] by kind."""
    from trainlab import config, registry

    def show(table: str, cls, skip: str = "") -> None:
        notes = config.key_comments(cls)
        for key, default, kind in config.table_keys(cls):
            if key == skip:
                continue
            note = notes.get(key.split(".")[-1], "")
            print(f"  {table}.{key} = {json.dumps(default)}  ({kind})" + (f"  # {note}" if note else ""))

    for table, field in config.Config.model_fields.items():
        if table in config.KIND_KEY:
            key = config.KIND_KEY[table]
            for name, e in sorted(registry.entries(config.REGISTRY_OF[table]).items()):
                print(f"[{table}] {key} = {json.dumps(name)}" + (f"  # {e.doc}" if e.doc else ""))
                show(table, e.table, skip=key)
        else:
            print(f"[{table}]")
            show(table, field.annotation)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # overrides after an option (`train R --run-dir D key=value`) are still overrides
        if args.command != "train" or any("=" not in a or a.startswith("-") for a in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    handler = {"train": cmd_train, "eval": cmd_eval, "sample": cmd_sample, "report": cmd_report,
               "recipes": cmd_recipes}[args.command]
    try:
        handler(args)
    except UserError as e:
        if args.debug:
            raise
        _report(f"error: {e.message}", f"hint: {e.hint}" if e.hint else "")
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`trainlab recipes | head`): stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 0
    except RuntimeError as e:  # under torchrun: another process died, or a collective timed out
        from trainlab import distributed

        if args.debug or not distributed.launched() or not distributed.peer_failure(e):
            raise
        detail = re.sub(r"^\[[^\]]*\]\s*", "", str(e).strip().splitlines()[0])[:160]  # drop the source path
        _report(f"error: rank {distributed.rank()} lost the other processes of this distributed run ({detail})",
                "torchrun's summary names the process that failed first; fix it, then train again with --resume")
        return 1
    return 0


def _report(*lines: str) -> None:
    """One error, printed once: by rank 0 of a distributed run (every rank raises the same error when all see
    the same input). Every rank also leaves it in torchrun's error file, which torchrun's summary shows, so an
    error only one rank met is not lost."""
    from trainlab import distributed

    text = "\n".join(line for line in lines if line)
    if distributed.rank() == 0:
        print(text, file=sys.stderr)
    distributed.record_error(text)


if __name__ == "__main__":
    raise SystemExit(main())
