"""The `trainlab` command. User errors print one line `error: ...` and a hint, and exit with status 2."""

from __future__ import annotations

import argparse
import difflib
import json
import math
import re
import sys
import tomllib
from pathlib import Path

from trainlab.errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse with the house format for usage mistakes: `error: PROG: MESSAGE` and `hint: ...`, status 2, no
    usage block. Sub-commands get it too: `add_subparsers` makes its parsers of the class of the parser it is
    called on, so the parsers added in other modules (`trainlab scaling`, `trainlab plan`) need no change."""

    def error(self, message: str, hint: str = ""):
        message = " ".join(message.split())  # one line, whatever argparse wrapped
        if not hint:
            guess = self._did_you_mean(message)
            hint = f"did you mean {guess}? see {self.prog} --help" if guess else f"{self.prog} --help"
        self.exit(2, f"error: {self.prog}: {message}\nhint: {hint}\n")

    def unrecognized(self, extra: list[str]):
        """The error for arguments no parser took; `self` is the (sub-)parser the command line chose."""
        options = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
        guess = next((m[0] for a in extra if a.startswith("--")
                      for m in [difflib.get_close_matches(a.split("=", 1)[0], options, n=1)] if m), "")
        self.error(f"unrecognized arguments: {' '.join(extra)}",
                   f"did you mean {guess}? see {self.prog} --help" if guess else "")

    def _did_you_mean(self, message: str) -> str:
        """For `invalid choice: 'X'` (a sub-command or an option's value): the closest choice, if one is close."""
        m = re.match(r"argument (.+?): invalid choice: '(.*?)' \(choose from", message)
        if not m:
            return ""
        for action in self._actions:
            names = {action.metavar, action.dest, "/".join(action.option_strings)}
            if action.choices and m[1] in names:
                close = difflib.get_close_matches(m[2], [str(c) for c in action.choices], n=1)
                return close[0] if close else ""
        return ""


def _chosen(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost sub-parser that parsed `args` (`trainlab scaling sweep`'s for `scaling sweep ...`)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            name = getattr(args, action.dest, None)
            if name in action.choices:
                return _chosen(action.choices[name], args)
    return parser


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="trainlab", description="Train AI models end to end with one training loop.")
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
    e.add_argument("--episodes", type=int, default=0, help="environment and self-play runs: episodes (games) to "
                   "play (default: the recipe's data.eval_episodes / data.eval_games)")

    g = sub.add_parser("sample", help="generate text from a trained language model")
    g.add_argument("run_dir")
    g.add_argument("--prompt", default="", help="text to continue (empty: start a new document)")
    g.add_argument("--max-new-tokens", type=int, default=200)
    g.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = all)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling: the smallest set reaching p")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", default=[], help="stop at this string (repeatable); backslash "
                   "escapes \\n, \\t, \\r, \\\\ and \\uXXXX are read as characters: --stop '\\n\\n'")
    g.add_argument("--truncate", action="store_true", help="keep the last tokens of a prompt longer than the context")
    g.add_argument("--chat", action="store_true", help="the prompt is a user's message: wrap it in the chat template "
                   "the model was post-trained with and print the assistant's reply")
    g.add_argument("--system", default="", help="with --chat: a system message before the user's")

    r = sub.add_parser("report", help="write report.md and curves.png for a run")
    r.add_argument("run_dir")
    r.add_argument("--compare", nargs="*", default=[], metavar="RUN_DIR", help="overlay other runs' curves")

    pr = sub.add_parser("predict", help="predict with a trained run: CSV rows, images, or prompts")
    pr.add_argument("run_dir")
    pr.add_argument("inputs", nargs="+", metavar="INPUT",
                    help="a CSV file, image files or folders of images; for a language model, prompts or text files "
                         "(one prompt per line)")
    pr.add_argument("--out", help="write the predictions (CSV) to this file instead of printing them")
    pr.add_argument("--max-new-tokens", type=int, default=100, help="language models: tokens per continuation")

    x = sub.add_parser("export", help="export a trained language model as a Hugging Face transformers folder")
    x.add_argument("run_dir")
    x.add_argument("--format", default="hf", help="hf: a transformers folder (Llama, GPT-2 or BERT) with its tokenizer")
    x.add_argument("--out", required=True, metavar="DIR", help="the folder to write (new, or empty)")
    x.add_argument("--force", action="store_true", help="replace DIR if it exists and is not empty")

    from trainlab.scaling import commands as scaling_commands, plan

    scaling_commands.add_parser(sub)
    plan.add_parser(sub)

    pl = sub.add_parser("play", help="play a trained self-play model (tic-tac-toe, connect-four) in the terminal")
    pl.add_argument("run_dir")
    pl.add_argument("--first", default="human", choices=["human", "model"], help="who moves first (X)")
    pl.add_argument("--simulations", type=int, default=None, help="the model's search per move (default: the run's)")

    rc = sub.add_parser("recipes", help="list the bundled recipes, or print one")
    rc.add_argument("name", nargs="?", help="print this recipe's TOML (a bundled name or a file)")
    rc.add_argument("--resolved", action="store_true", help="with NAME: the full config, every default filled in")
    rc.add_argument("--keys", action="store_true", help="list every valid recipe key with its type, default and "
                    "meaning")
    return p


def cmd_train(args) -> None:
    from trainlab import api, config, distributed, registry

    cfg = config.load_recipe(args.recipe, args.overrides)
    if registry.fitted(cfg.model.kind) and distributed.launched():
        raise UserError(f"model.kind = '{cfg.model.kind}' is fitted in one call by one process",
                        "run it without torchrun")
    api.train(cfg, run_dir=args.run_dir, resume=args.resume)


def cmd_play(args) -> None:
    from trainlab.rl.play import play

    play(args.run_dir, args.first, args.simulations)


def cmd_eval(args) -> None:
    from trainlab.eval import evaluate_run, format_table

    if args.episodes < 0 or args.episodes > 100_000:
        raise UserError(f"--episodes must be between 1 and 100000; got {args.episodes}",
                        "give a number of episodes (without --episodes: the recipe's data.eval_episodes)")
    result = evaluate_run(args.run_dir, args.split, episodes=args.episodes)
    print(json.dumps(result, indent=2) if args.json else format_table(result))


def cmd_sample(args) -> None:
    from trainlab import models
    from trainlab.data import tokenizer as tok_lib
    from trainlab.generate import generate_text, require_generator, unescape

    model, info = models.load(Path(args.run_dir) / "model")
    if info.get("task") not in ("language_modeling", "chat"):
        raise UserError(f"{args.run_dir} holds a {info.get('task')} model, not a language model",
                        "sample from a run of a GPT recipe, e.g. stdlib-gpt")
    require_generator(model)
    if args.max_new_tokens < 1 or not args.temperature >= 0 or not math.isfinite(args.temperature) \
            or not 0 < args.top_p <= 1 or args.top_k < 0:
        raise UserError("--max-new-tokens must be >= 1, --temperature a number >= 0, --top-k >= 0 and "
                        "0 < --top-p <= 1", "fix the sampling options")
    if args.seed is not None and not 0 <= args.seed < 2**63:
        raise UserError(f"--seed must be between 0 and 2**63 - 1; got {args.seed}", "give a smaller seed")
    try:
        args.prompt.encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8 arrive as surrogates
        raise UserError("--prompt is not valid UTF-8 text", "pass the prompt in UTF-8") from None
    tokenizer = tok_lib.load(Path(args.run_dir) / "model" / "tokenizer.json")
    if tokenizer.vocab_size != model.vocab_size:
        raise UserError(f"the tokenizer in {args.run_dir}/model has {tokenizer.vocab_size} tokens but the model was "
                        f"trained with {model.vocab_size}: they do not match",
                        "use the tokenizer.json written by the same training run")
    stop = tuple(unescape(s) for s in args.stop)  # `--stop "\n\n"` arrives from the shell as backslash-n
    if args.chat:
        from trainlab.data import chat

        print(chat.reply(model, chat.ChatTemplate(tokenizer), args.prompt, args.system, args.max_new_tokens,
                         args.temperature, args.top_k, args.top_p, args.seed, stop))
        return
    if args.system:
        raise UserError("--system is a chat message", "add --chat")
    print(args.prompt, end="", flush=True)
    for piece in generate_text(model, tokenizer, args.prompt, args.max_new_tokens, args.temperature, args.top_k,
                               args.top_p, args.seed, stop, args.truncate):
        print(piece, end="", flush=True)
    print()


def cmd_report(args) -> None:
    from trainlab.report import write_report

    out = write_report(args.run_dir, args.compare)
    print(f"wrote {out} with " + ", ".join(sorted(p.name for p in out.parent.glob("*.png"))))


def cmd_predict(args) -> None:
    from trainlab.predict import predict_command

    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1; got {args.max_new_tokens}", "give a positive number")
    print(predict_command(args.run_dir, args.inputs, args.out, args.max_new_tokens))


def cmd_export(args) -> None:
    if args.format != "hf":
        raise UserError(f"--format {args.format!r} is not supported; the one format is 'hf'",
                        "use --format hf (a Hugging Face transformers folder)")
    from trainlab import hf

    arch = hf.export(args.run_dir, args.out, force=args.force)
    print(f"exported {args.run_dir} as {arch} to {args.out}")


def cmd_scaling(args) -> None:
    from trainlab.scaling import commands

    commands.command(args)


def cmd_plan(args) -> None:
    from trainlab.scaling import plan

    plan.command(args)


def cmd_recipes(args) -> None:
    from trainlab import config

    if args.keys:
        print_keys()
        return
    if args.name:
        path = config.find_recipe(args.name)
        if args.resolved:
            print(config.load_recipe(args.name).to_toml(), end="")
        else:  # where it lives, as a TOML comment: the output stays a recipe to copy (`> mine.toml`)
            print(f"# {path}\n" + path.read_text(encoding="utf-8", errors="replace"), end="")
        return
    if args.resolved:
        raise UserError("--resolved needs a recipe name", "e.g. trainlab recipes digits-cnn --resolved")
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
            note = notes.get(key, "")
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
        takes = args.command == "train" or (args.command == "scaling" and args.scaling_command == "sweep")
        if not takes or any("=" not in a or a.startswith("-") for a in extra):
            _chosen(parser, args).unrecognized(extra)
        args.overrides += extra
    handler = {"train": cmd_train, "eval": cmd_eval, "sample": cmd_sample, "report": cmd_report,
               "predict": cmd_predict, "export": cmd_export, "recipes": cmd_recipes, "scaling": cmd_scaling,
               "plan": cmd_plan, "play": cmd_play}[args.command]
    try:
        handler(args)
        sys.stdout.flush()  # inside the try: a reader that went away shows here, not at interpreter exit
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
