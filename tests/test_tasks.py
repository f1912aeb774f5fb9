"""The generated instruction-following tasks: right answers (recomputed independently), the split rule, seeding,
the checker, the wrong/rambling answers used for preference pairs, and safe_eval's refusals."""

import json
import random
import re
from collections import Counter

import pytest

from trainlab.data import tasks
from trainlab.data.tasks import Item, correct, items, rambling_answer, reward, safe_eval, well_formed, wrong_answer
from trainlab.errors import UserError


@pytest.fixture(scope="module")
def train():
    return items("all", "train", 700, seed=0)  # 100 per task


def _expected(item: Item) -> str:
    """The answer, recomputed from the prompt text without the module's decoders."""
    p = item.prompt
    if item.task in ("add", "sub"):
        a, op, b = re.fullmatch(r"What is (\d+) ([+-]) (\d+)\?", p).groups()
        assert op == {"add": "+", "sub": "-"}[item.task] and 0 <= int(a) <= 99 and 0 <= int(b) <= 99
        return str(int(a) + int(b) if op == "+" else int(a) - int(b))
    if item.task == "count":
        letter, word = re.fullmatch(r"How many times does the letter ([a-z]) occur in '([a-z]{3,8})'\?", p).groups()
        return str(word.count(letter))
    if item.task in ("reverse", "sort"):
        verb, listed = re.fullmatch(r"(Reverse|Sort) the list (\[.*\])\.", p).groups()
        xs = json.loads(listed)
        assert verb.lower() == item.task and 3 <= len(xs) <= 5 and all(0 <= x <= 9 for x in xs)
        return str(xs[::-1] if item.task == "reverse" else sorted(xs))
    if item.task == "larger":
        a, b = map(int, re.fullmatch(r"Which is larger, (\d+) or (\d+)\?", p).groups())
        assert a != b and max(a, b) <= 999
        return str(max(a, b))
    text = re.fullmatch(r"Evaluate ([0-9+\-* ()]+)\.", p).group(1)
    assert 2 <= sum(text.count(op) for op in "+-*") <= 3
    # an independent oracle: Python's own evaluator, safe here because the text is only digits, + - * and parentheses
    return str(eval(text, {"__builtins__": {}}))


def test_every_answer_is_right_and_short(train):
    assert Counter(it.task for it in train) == {name: 100 for name in tasks.TASKS}
    for it in train:
        assert it.answer == _expected(it), it
        assert len(it.prompt) < 60 and len(it.answer) < 20, it
        assert well_formed(it.task, it.answer) and reward(it.answer, it.task, it.answer) == 1.0


def test_count_and_list_and_expr_cover_their_range(train):
    counts = Counter(it.answer for it in train if it.task == "count")
    assert set(counts) <= {"0", "1", "2", "3"} and counts["0"] >= 5 and counts["1"] >= 5
    lengths = {len(json.loads(it.answer)) for it in train if it.task in ("reverse", "sort")}
    assert lengths == {3, 4, 5}
    n_ops = {sum(it.prompt.count(op) for op in "+-*") for it in train if it.task == "expr"}
    assert n_ops == {2, 3} and any("(" in it.prompt for it in train if it.task == "expr")


def test_splits_are_disjoint_whatever_the_seed():
    by_split = {"train": set(), "val": set(), "test": set()}
    for split, n, seeds in (("train", 350, (0, 1, 2)), ("val", 140, (0, 1)), ("test", 140, (0, 1))):
        for seed in seeds:
            drawn = items("all", split, n, seed=seed)
            assert all(tasks.split_of(it.prompt) == split for it in drawn)
            by_split[split] |= {it.prompt for it in drawn}
    assert not by_split["train"] & by_split["val"] and not by_split["train"] & by_split["test"]
    assert not by_split["val"] & by_split["test"]
    assert len(by_split["train"]) > 350  # the seeds really drew different items


def test_seeded_distinct_round_robin():
    a = items("all", "train", 40, seed=3)
    assert a == items("all", "train", 40, seed=3)
    assert a != items("all", "train", 40, seed=4)
    assert len({it.prompt for it in a}) == 40
    names = list(tasks.TASKS)
    assert [it.task for it in a] == (names * 6)[:40]
    assert [it.task for it in items(["sort", "add"], "val", 5)] == ["sort", "add", "sort", "add", "sort"]
    assert [it.task for it in items("larger", "test", 3)] == ["larger"] * 3
    assert items("all", "val", 0) == []
    # a task's items do not depend on what it is mixed with
    assert [it for it in items(["add", "sort"], "train", 20) if it.task == "sort"] == items("sort", "train", 10)


def test_dense_draws_and_too_small_splits():
    drawn = items("add", "val", 600)  # a sizeable share of the space: drawn from the enumerated split
    assert len({it.prompt for it in drawn}) == 600 and all(tasks.split_of(it.prompt) == "val" for it in drawn)
    with pytest.raises(UserError, match=r"task 'count' has \d+ distinct test items") as e:
        items("count", "test", 10_000)
    have = int(re.search(r"has (\d+)", str(e.value)).group(1))
    everything = items("count", "test", have)  # exactly that many exist, all distinct
    assert len({it.prompt for it in everything}) == have and 30 < have < 200
    with pytest.raises(UserError):
        items("count", "test", have + 1)


def test_bad_arguments_are_user_errors():
    with pytest.raises(UserError, match="add") as e:
        items(["add", "multiply"], "train", 4)
    assert "multiply" in str(e.value) and "expr" in str(e.value) and e.value.hint
    with pytest.raises(UserError, match="did you mean 'sort'"):
        items("sorts", "train", 4)
    for args in ((["add", "add"], "train", 4), ("all", "dev", 4), ("all", "train", -1), ([], "train", 4)):
        with pytest.raises(UserError):
            items(*args)
    with pytest.raises(UserError):
        well_formed("multiply", "3")


def test_correct_forgives_only_whitespace_and_one_period():
    for ok in ("85", "  85 ", "85.", " 85.\n"):
        assert correct("85", ok), ok
    for bad in ("085", "85 apples", "The answer is 85", "85..", "8 5", "-85", "", "86"):
        assert not correct("85", bad), bad
    assert correct("[4, 1, 3]", "[4, 1, 3].") and not correct("[4, 1, 3]", "[4,1,3]")


@pytest.mark.parametrize("task, text, ok", [
    ("add", "85", True), ("sub", "-18", True), ("expr", "0", True), ("count", " 3. ", True), ("larger", "999", True),
    ("add", "085", False), ("sub", "-0", False), ("sub", "- 18", False), ("add", "+85", False),
    ("add", "85 apples", False), ("count", "three", False), ("add", "", False), ("add", "8.5", False),
    ("add", "[8, 5]", False), ("sort", "13", False),
    ("reverse", "[4, 1, 3]", True), ("sort", "[1, 3, 4, 10]", True), ("sort", "[1,3,4]", False),
    ("sort", "[1, 3, 4", False), ("sort", "1, 3, 4", False), ("sort", "[]", False), ("reverse", "[1,  2]", False),
    ("reverse", "(4, 1, 3)", False), ("sort", "[1, 3, 4] done", False),
])
def test_well_formed(task, text, ok):
    assert well_formed(task, text) is ok


def test_reward_levels():
    assert reward("85", "add", " 85.") == 1.0
    assert reward("85", "add", "84") == 0.1
    assert reward("85", "add", "It is 85") == 0.0
    assert reward("[1, 3, 4]", "sort", "[1, 4, 3]") == 0.1 and reward("[1, 3, 4]", "sort", "[1,3,4]") == 0.0


def test_wrong_answers_are_plausible_and_wrong():
    rng = random.Random(0)
    pool = items("all", "train", 210, seed=5) + [
        Item("sort", "Sort the list [3, 3, 3].", "[3, 3, 3]"), Item("add", "What is 0 + 0?", "0"),
        Item("reverse", "Reverse the list [9, 9, 9].", "[9, 9, 9]"),
        Item("count", "How many times does the letter z occur in 'cat'?", "0")]
    for it in pool:
        for _ in range(3):
            w = wrong_answer(it, rng)
            assert w != it.answer and not correct(it.answer, w) and well_formed(it.task, w), (it, w)
            if it.task in ("add", "count"):
                assert int(w) >= 0
            if it.task == "larger":
                assert int(w) < int(it.answer) and w in it.prompt
            if it.task in ("reverse", "sort"):
                assert len(json.loads(w)) == len(json.loads(it.answer))
            else:
                assert abs(int(w) - int(it.answer)) <= 2 or it.task == "larger"


def test_rambling_answers_hold_the_answer_but_score_zero():
    rng = random.Random(1)
    for it in items("all", "val", 70, seed=2):
        text = rambling_answer(it, rng)
        assert it.answer in text and len(text) < 80
        assert not correct(it.answer, text) and not well_formed(it.task, text) and reward(it.answer, it.task, text) == 0


@pytest.mark.parametrize("expr, value", [
    ("3 * (4 + 2) - 5", 13), ("-3 + 2 * 4", 5), ("7 // 2", 3), ("-7 // 2", -4), ("7 % 3", 1), ("+5 - -2", 7),
    ("((1 + 2))", 3), ("2 * 3 - 4 * 5", -14), ("0", 0), (" 4 - 1 ", 3), ("999999999999 + 1", 10 ** 12),
    ("9 - 8 - 7", -6), ("(9 - 8) * (7 - 6)", 1),
])
def test_safe_eval_values(expr, value):
    assert safe_eval(expr) == value and type(safe_eval(expr)) is int


@pytest.mark.parametrize("expr, named", [
    ("__import__('os')", "Call"), ("(1).real", "Attribute"), ("2 ** 10", "Pow"), ("'a' * 3", "str"),
    ("1.5 + 1", "float"), ("x + 1", "Name"), ("[1] * 3", "List"), ("1 " + "+ 1 " * 100, "200"),
    ("99999999999999 + 1", "10\\*\\*12"), ("999999 * 999999 * 999999", "10\\*\\*12"), ("10 / 2", "Div"),
    ("1 < 2", "Compare"), ("lambda: 1", "Lambda"), ("True + 1", "bool"), ("1 // 0", "zero"), ("1 +", "expression"),
    ("~1", "Invert"), ("1; 2", "expression"),
])
def test_safe_eval_refuses(expr, named):
    with pytest.raises(ValueError, match=named):
        safe_eval(expr)
