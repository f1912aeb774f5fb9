"""A generated suite of small instruction-following tasks, for post-training a tiny GPT (SFT, reward model, DPO,
PPO, GRPO). It ships with trainlab: no download, pure standard library.

    add       "What is 47 + 38?"                                      -> "85"
    sub       "What is 12 - 30?"                                      -> "-18"
    count     "How many times does the letter r occur in 'mirror'?"   -> "3"
    reverse   "Reverse the list [3, 1, 4]."                           -> "[4, 1, 3]"
    sort      "Sort the list [3, 1, 4]."                              -> "[1, 3, 4]"
    larger    "Which is larger, 71 or 17?"                            -> "71"
    expr      "Evaluate 3 * (4 + 2) - 5."                             -> "13"

Each task is a finite space of items, numbered 0..size-1 and decoded from the number (`_Task.prompt/answer`), with
one fixed phrasing per task. A space can be made of parts that a draw picks between evenly (lists of 3, 4 and 5
digits; expressions of 2 and 3 operators), so the short cases are not swamped by the many long ones.

Split rule: the split of an item is a function of its prompt text alone, sha256(prompt) bucketed 80/10/10 into
train/val/test (`split_of`). No prompt is ever in two splits, whatever the seed, n or task mix. `items` draws
distinct items of one split, seeded; when n is a sizeable share of a task's space it enumerates the whole split
instead (cached), so asking for more items than a split holds is an error that says how many there are.

Checker: `correct` is an exact match after stripping surrounding whitespace and one trailing period: "85." is
right, "085", "85 apples" and "The answer is 85" are not. `well_formed` is the format alone (an integer, or a list
"[d, d, ...]" in canonical formatting); `reward` is 1.0 if correct, 0.1 if only well formed, else 0.0.
Expression answers come from `safe_eval`, a small evaluator that walks Python's `ast` and refuses anything but
integer arithmetic; nothing here calls eval or exec.
"""

from __future__ import annotations

import ast
import difflib
import functools
import hashlib
import operator
import random
import re
from dataclasses import dataclass
from typing import Callable, Sequence

from trainlab.errors import UserError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Item:
    task: str
    prompt: str  # the instruction (the user's message)
    answer: str  # exactly what the assistant should reply


def split_of(prompt: str) -> str:
    """The split a prompt belongs to: buckets 0-7 of 10 are train, 8 val, 9 test (80/10/10)."""
    bucket = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big") % 10
    return "train" if bucket < 8 else SPLITS[bucket - 7]


# ---- the task spaces: index -> prompt and answer

_WORDS = (
    "cat", "dog", "sun", "moon", "star", "sky", "sea", "tree", "fire", "rain", "snow", "gold", "iron", "lion",
    "drum", "book", "salt", "noon", "level", "apple", "lemon", "grape", "melon", "onion", "bread", "puppy", "happy",
    "sunny", "river", "ocean", "paper", "table", "chair", "house", "grass", "stone", "water", "earth", "cloud",
    "storm", "zebra", "tiger", "horse", "sheep", "goose", "camel", "eagle", "pizza", "pasta", "jelly", "honey",
    "sugar", "music", "piano", "cocoa", "banana", "cherry", "mirror", "letter", "coffee", "little", "bottle",
    "pepper", "button", "yellow", "summer", "winter", "garden", "window", "rabbit", "kitten", "forest", "island",
    "bridge", "castle", "dragon", "planet", "rocket", "school", "pencil", "street", "market", "orange", "tomato",
    "potato", "carrot", "butter", "cheese", "dinner", "cookie", "candle", "flower", "bubble", "puzzle", "monkey",
    "parrot", "turtle", "spider", "beetle", "copper", "silver", "noodle", "guitar", "violin", "tattoo", "eleven",
    "teacher", "thunder", "balloon", "giraffe", "success", "address", "between", "mountain", "elephant",
)
assert len(set(_WORDS)) == len(_WORDS) and all(3 <= len(w) <= 8 and max(map(w.count, w)) <= 3 for w in _WORDS)


def _count_pairs() -> tuple[tuple[str, str], ...]:
    """(word, letter): every letter of each word, and two common letters it lacks (so ~30% of answers are 0).
    The absent letters rotate through a frequency order, so 0 is not always the answer for 'e'."""
    order = "etaoinshrdlucmwfgypb"
    pairs = []
    for k, word in enumerate(_WORDS):
        rotated = order[k % len(order):] + order[:k % len(order)]
        absent = [c for c in rotated if c not in word][:2]
        pairs += [(word, c) for c in sorted(set(word))] + [(word, c) for c in absent]
    return tuple(pairs)


_PAIRS = _count_pairs()


def _digits(i: int) -> list[int]:
    """0..999 -> three digits, the next 10**4 -> four, the next 10**5 -> five."""
    for k in (3, 4, 5):
        if i < 10 ** k:
            return [int(c) for c in f"{i:0{k}d}"]
        i -= 10 ** k
    raise IndexError(i)


def _two(i: int) -> tuple[int, int]:
    """0..999*1000-1 -> (a, b), two different numbers in 0..999 (b skips a)."""
    a, r = divmod(i, 999)
    return a, r + (r >= a)


def _fmt(xs: list[int]) -> str:
    return "[" + ", ".join(map(str, xs)) + "]"


_SHAPES = {2: ("{} {} {} {} {}", "({} {} {}) {} {}", "{} {} ({} {} {})"),
           3: ("{} {} {} {} {} {} {}", "({} {} {}) {} {} {} {}", "{} {} ({} {} {}) {} {}",
               "{} {} {} {} ({} {} {})", "({} {} {}) {} ({} {} {})")}
_EXPR_PARTS = tuple(len(_SHAPES[k]) * 3 ** k * 10 ** (k + 1) for k in (2, 3))  # shapes * operators * digits


def _expr(i: int) -> str:
    """index -> expression: a shape, k operators from + - * (base 3), k+1 digits (base 10)."""
    k = 2 if i < _EXPR_PARTS[0] else 3
    i -= 0 if k == 2 else _EXPR_PARTS[0]
    i, shape = divmod(i, len(_SHAPES[k]))
    i, ops = divmod(i, 3 ** k)
    digits = f"{i:0{k + 1}d}"
    tokens = [digits[0]]
    for j in range(k):
        tokens += ["+-*"[ops // 3 ** j % 3], digits[j + 1]]
    return _SHAPES[k][shape].format(*tokens)


@dataclass(frozen=True)
class _Task:
    description: str
    parts: tuple[int, ...]  # sizes of consecutive index ranges; a draw picks a part evenly, then an index in it
    prompt: Callable[[int], str]
    answer: Callable[[int], str]


_TASKS = {
    "add": _Task("addition of two numbers, each 0..99", (100 * 100,),
                 lambda i: "What is {} + {}?".format(*divmod(i, 100)), lambda i: str(sum(divmod(i, 100)))),
    "sub": _Task("subtraction a - b of two numbers in 0..99 (the answer may be negative)", (100 * 100,),
                 lambda i: "What is {} - {}?".format(*divmod(i, 100)), lambda i: str(i // 100 - i % 100)),
    "count": _Task("how many times a letter occurs in a short English word (0..3)", (len(_PAIRS),),
                   lambda i: "How many times does the letter {1} occur in '{0}'?".format(*_PAIRS[i]),
                   lambda i: str(_PAIRS[i][0].count(_PAIRS[i][1]))),
    "reverse": _Task("reverse a list of 3-5 single-digit numbers", (10 ** 3, 10 ** 4, 10 ** 5),
                     lambda i: f"Reverse the list {_fmt(_digits(i))}.", lambda i: _fmt(_digits(i)[::-1])),
    "sort": _Task("sort a list of 3-5 single-digit numbers ascending", (10 ** 3, 10 ** 4, 10 ** 5),
                  lambda i: f"Sort the list {_fmt(_digits(i))}.", lambda i: _fmt(sorted(_digits(i)))),
    "larger": _Task("which of two different numbers in 0..999 is larger", (1000 * 999,),
                    lambda i: "Which is larger, {} or {}?".format(*_two(i)), lambda i: str(max(_two(i)))),
    "expr": _Task("the value of an expression of 2-3 operators (+ - *) over digits, maybe with parentheses",
                  _EXPR_PARTS, lambda i: f"Evaluate {_expr(i)}.", lambda i: str(safe_eval(_expr(i)))),
}
TASKS: dict[str, str] = {name: task.description for name, task in _TASKS.items()}
_LIST_TASKS = ("reverse", "sort")


def _check_task(name: str) -> None:
    if name not in _TASKS:
        near = difflib.get_close_matches(str(name), _TASKS, n=1)
        raise UserError(f"unknown task '{name}'" + (f" (did you mean '{near[0]}'?)" if near else "")
                        + f"; the tasks are {', '.join(_TASKS)}", "use some of these names, or 'all'")


# ---- drawing items

@functools.lru_cache(maxsize=None)
def _pools(task: str, split: str) -> tuple[tuple[int, ...], ...]:
    """Every index of each part of the task's space whose prompt falls in `split` (hashes the whole space once)."""
    t, start, pools = _TASKS[task], 0, []
    for size in t.parts:
        pools.append(tuple(i for i in range(start, start + size) if split_of(t.prompt(i)) == split))
        start += size
    return tuple(pools)


def _draw(task: str, split: str, k: int, rng: random.Random) -> list[Item]:
    t, size = _TASKS[task], sum(_TASKS[task].parts)
    chosen: list[int] = []
    if k * 40 > size:  # a sizeable share of the space: enumerate the split, so too few items is an exact error
        pools = [list(p) for p in _pools(task, split)]
        have = sum(map(len, pools))
        if have < k:
            raise UserError(f"task '{task}' has {have} distinct {split} items, fewer than the {k} asked of it",
                            "ask for fewer items (n), mix in more tasks, or use a bigger split")
        for p in pools:
            rng.shuffle(p)
        while len(chosen) < k:
            chosen.append(rng.choice([p for p in pools if p]).pop())
    else:
        # k <= size/40 and the largest part (>= size/3) puts ~10% or more of itself in any split, so draws rarely
        # repeat or miss for long; a part whose share of the split runs out only wastes its draws.
        starts = [sum(t.parts[:j]) for j in range(len(t.parts))]
        seen: set[int] = set()
        while len(chosen) < k:
            j = rng.randrange(len(t.parts))
            i = starts[j] + rng.randrange(t.parts[j])
            if i not in seen:
                seen.add(i)
                if split_of(t.prompt(i)) == split:
                    chosen.append(i)
    return [Item(task, t.prompt(i), t.answer(i)) for i in chosen]


def items(tasks: Sequence[str] | str, split: str, n: int, seed: int = 0) -> list[Item]:
    """n distinct items of `split`, the tasks taking turns (round-robin, the first n % len(tasks) tasks get one
    more), seeded: the same arguments give the same list. `tasks` is "all", one name or a list of names."""
    names = list(_TASKS) if tasks == "all" else [tasks] if isinstance(tasks, str) else list(tasks)
    for name in names:
        _check_task(name)
    if not names or len(set(names)) != len(names):
        raise UserError(f"tasks must be 'all' or distinct task names, got {tasks!r}",
                        f"pick some of {', '.join(_TASKS)}, each once")
    if split not in SPLITS:
        raise UserError(f"split must be one of {', '.join(SPLITS)}, got {split!r}", "use 'train', 'val' or 'test'")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise UserError(f"n must be an integer >= 0, got {n!r}", "ask for a whole number of items")
    # one random stream per task and split: a task's items depend on how many it is asked for, not on the mix
    per_task = [_draw(name, split, n // len(names) + (j < n % len(names)),
                      random.Random(f"trainlab.tasks:{seed}:{split}:{name}")) for j, name in enumerate(names)]
    return [drawn[r] for r in range(len(per_task[0])) for drawn in per_task if r < len(drawn)]


# ---- checking completions

_INT = r"(?:0|-?[1-9][0-9]*)"
_FORMATS = {name: re.compile(rf"\[{_INT}(?:, {_INT})*\]" if name in _LIST_TASKS else _INT) for name in _TASKS}


def _clean(text: str) -> str:
    text = text.strip()
    return text[:-1] if text.endswith(".") else text


def correct(answer: str, completion: str) -> bool:
    """Exact match after stripping surrounding whitespace and one trailing period; nothing else is forgiven."""
    return _clean(completion) == _clean(answer)


def well_formed(task: str, completion: str) -> bool:
    """The format alone (cleaned as `correct` does): an integer without leading zeros, or for reverse/sort a
    list "[d, d, ...]" of integers separated by exactly ", "."""
    _check_task(task)
    return _FORMATS[task].fullmatch(_clean(completion)) is not None


def reward(item_answer: str, task: str, completion: str) -> float:
    """The verifiable reward: 1.0 if correct, 0.1 if at least well formed (a format reward), else 0.0."""
    return 1.0 if correct(item_answer, completion) else 0.1 if well_formed(task, completion) else 0.0


def wrong_answer(item: Item, rng: random.Random) -> str:
    """A plausible wrong answer in the right format: the smaller number (larger), two different elements swapped
    (lists; one element nudged if all are equal), else off by 1 or 2 (never below 0 for add and count)."""
    if item.task == "larger":
        return next(x for x in re.findall(r"\d+", item.prompt) if x != item.answer)
    if item.task in _LIST_TASKS:
        xs = [int(x) for x in item.answer[1:-1].split(", ")]
        pairs = [(a, b) for a in range(len(xs)) for b in range(a + 1, len(xs)) if xs[a] != xs[b]]
        if pairs:
            a, b = rng.choice(pairs)
            xs[a], xs[b] = xs[b], xs[a]
        else:
            j = rng.randrange(len(xs))
            xs[j] += 1 if xs[j] < 9 else -1
        return _fmt(xs)
    value, delta = int(item.answer), rng.choice((-2, -1, 1, 2))
    if item.task in ("add", "count") and value + delta < 0:
        delta = -delta
    return str(value + delta)


_RAMBLES = (
    "Let me think. I believe it is {}, but I am not sure.",
    "Good question! After some thought: {}, I think.",
    "Hmm, working it out step by step gives {} here.",
    "My best guess would be {}, if I did it right.",
)


def rambling_answer(item: Item, rng: random.Random) -> str:
    """The right answer inside chatter (under 80 characters): never `correct`, never `well_formed`."""
    return rng.choice(_RAMBLES).format(item.answer)


# ---- safe_eval

_MAX = 10 ** 12
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
           ast.Mod: operator.mod}


def safe_eval(expr: str) -> int:
    """The value of integer arithmetic: int literals, + - * // %, unary - and +, parentheses. Parses with `ast`
    and walks the tree itself; anything else, any value beyond 10**12 in size (checked after every step, so
    nothing grows), or more than 200 characters raises ValueError naming what was refused."""
    if not isinstance(expr, str):
        raise ValueError(f"safe_eval refused a {type(expr).__name__}: it takes a string")
    if len(expr) > 200:
        raise ValueError(f"safe_eval refused an expression of {len(expr)} characters: the limit is 200")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"safe_eval refused {expr[:40]!r}: not a Python expression ({e.msg})") from None
    return _walk(tree.body)


def _walk(node: ast.AST) -> int:
    if isinstance(node, ast.Constant) and type(node.value) is int:  # `is`: True and False are ints too
        value = node.value
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = -_walk(node.operand) if isinstance(node.op, ast.USub) else _walk(node.operand)
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _walk(node.left), _walk(node.right)
        if right == 0 and isinstance(node.op, (ast.FloorDiv, ast.Mod)):
            raise ValueError(f"safe_eval refused `{ast.unparse(node)[:40]}`: division by zero")
        value = _BINOPS[type(node.op)](left, right)
    else:
        what = (f"a {type(node.value).__name__} constant" if isinstance(node, ast.Constant)
                else f"the operator {type(node.op).__name__}" if isinstance(node, (ast.BinOp, ast.UnaryOp))
                else f"a {type(node).__name__}")
        raise ValueError(f"safe_eval refused {what} in `{ast.unparse(node)[:40]}`: only integers, + - * // %, "
                         "unary - + and parentheses are allowed")
    if abs(value) > _MAX:
        raise ValueError(f"safe_eval refused `{ast.unparse(node)[:40]}`: a value of {len(str(abs(value)))} digits "
                         "is beyond the bound of 10**12")
    return value
