"""AlphaZero-style self-play (trainlab.rl): the games, the batched search, the reference players, and the
self-play source on the one loop (fixed metric keys, exact resume after a kill, eval, play)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import REPO, run_cli, train_killed_after, train_sigkilled
from trainlab import config, loop
from trainlab.rl import games, players
from trainlab.rl.mcts import MCTS, uniform_evaluator
from trainlab.rl.selfplay import play_games

TTT, C4 = games.make("tictactoe"), games.make("connect4")


def board(rows: str) -> np.ndarray:
    """A canonical board from text: x = the player to move, o = the opponent, . = empty."""
    cells = [{"x": 1, "o": -1, ".": 0}[c] for c in rows.replace(" ", "").replace("\n", "")]
    side = 3 if len(cells) == 9 else 7
    return np.array(cells, np.int8).reshape(-1, side)


# ---------------------------------------------------------------------------------------------- games


def test_tictactoe_lines_draws_and_legal_moves():
    for line in TTT.lines:  # 3 rows, 3 columns, 2 diagonals: the opponent's line is a loss for the mover
        b = np.zeros(9, np.int8)
        b[line] = -1
        done, value = TTT.status(b.reshape(1, 3, 3))
        assert done[0] and value[0] == -1
    assert len(TTT.lines) == 8
    draw = board("xox xoo oxo")
    assert TTT.status(draw[None])[0][0] and TTT.status(draw[None])[1][0] == 0
    b = board("xo. ... ...")
    assert TTT.legal(b[None])[0].tolist() == [False, False] + [True] * 7
    assert not TTT.status(b[None])[0][0]


def test_a_batch_of_moves_hands_each_board_to_the_other_player():
    b = TTT.initial(3)
    after = TTT.play(b, [0, 4, 8])
    assert [int(after[i].reshape(-1)[a]) for i, a in enumerate([0, 4, 8])] == [-1, -1, -1]  # now the opponent's
    assert (after.reshape(3, -1) != 0).sum(1).tolist() == [1, 1, 1]
    with pytest.raises(ValueError):
        TTT.play(after, [0, 0, 0])  # taken in the first game


def test_connect_four_drops_stones_and_finds_every_kind_of_line():
    b = C4.play(C4.initial(2), [3, 3])
    b = C4.play(b, [3, 4])
    assert b[0, 5, 3] == 1 and b[0, 4, 3] == -1  # stones stack from the bottom row
    assert b[1, 5, 3] == 1 and b[1, 5, 4] == -1
    full = C4.initial(1)
    for _ in range(6):
        full = C4.play(full, [0])
    assert not C4.legal(full)[0, 0] and C4.legal(full)[0, 1:].all()
    for cells in ([(5, 0), (5, 1), (5, 2), (5, 3)], [(2, 6), (3, 6), (4, 6), (5, 6)],
                  [(5, 0), (4, 1), (3, 2), (2, 3)], [(2, 0), (3, 1), (4, 2), (5, 3)]):
        b = C4.initial(1)
        for r, c in cells:
            b[0, r, c] = -1
        assert C4.status(b)[1][0] == -1 and C4.status(b)[0][0]
    assert C4.winning_moves(board("......." * 5 + "xxx....")[None], 1)[0].tolist() == [0, 0, 0, 1, 0, 0, 0]


def test_symmetries_keep_legality_and_map_the_policy_with_the_board():
    rng = np.random.default_rng(0)
    b = board("xo. .x. ...")  # no symmetry of its own: 8 distinct images
    sym = TTT.symmetries(b[None], np.eye(9, dtype=np.float32)[[2]])
    assert len({s.tobytes() for s, _ in sym}) == 8
    assert np.array_equal(sym[0][0][0], b)
    for game, start in ((TTT, b), (C4, C4.play(C4.initial(1), [1])[0])):
        for _ in range(5):
            legal = np.flatnonzero(game.legal(start[None])[0])
            a = int(rng.choice(legal))
            pi = np.eye(game.num_actions, dtype=np.float32)[[a]]
            moved = game.symmetries(game.play(start[None], [a]), pi)
            for (sb, sp), (mb, _) in zip(game.symmetries(start[None], pi), moved):
                a2 = int(sp[0].argmax())
                assert game.legal(sb)[0, a2]  # the mapped action is legal on the mapped board
                assert np.array_equal(game.play(sb, [a2]), mb)  # and playing it gives the mapped result


# ---------------------------------------------------------------------------------------------- search


def test_the_search_wins_in_one_and_blocks_with_a_uniform_evaluator():
    win = board("xx. oo. ...")
    visits = MCTS(TTT, uniform_evaluator(9), 30).search(win[None])
    assert visits[0].argmax() == 2
    block = board("oo. x.. ..x")  # the opponent threatens cell 3; nothing wins now
    visits = MCTS(TTT, uniform_evaluator(9), 200).search(block[None])
    assert visits[0].argmax() == 2
    c4 = board("......." * 3 + "o......" + "o..x..." + "o..xx..")
    assert MCTS(C4, uniform_evaluator(7), 100).search(c4[None])[0].argmax() == 0


def test_values_are_for_the_player_to_move():
    lost = board("ooo xx. x..")  # the opponent has a line: the mover has lost
    assert TTT.status(lost[None])[1][0] == -1
    boards, pis, z = play_games(TTT, MCTS(TTT, uniform_evaluator(9), 8), 6, 2, np.random.default_rng(0))
    assert np.allclose(pis.sum(1), 1) and set(np.unique(z)) <= {-1.0, 0.0, 1.0}
    assert np.array_equal(z[6:12], -z[:6])  # ply 1's mover is ply 0's opponent (every game lasts 5+ plies)
    assert (boards[:6] == 0).all()


# ---------------------------------------------------------------------------------------------- players


def test_minimax_never_loses_and_lookahead_wins_and_blocks():
    r = players.match(players.MinimaxPlayer(TTT), players.RandomPlayer(TTT), TTT, 300, seed=1)
    assert r["losses"] == 0 and r["wins"] > 200 and r["games"] == 300
    r = players.match(players.MinimaxPlayer(TTT), players.LookaheadPlayer(TTT), TTT, 100, seed=2)
    assert r["losses"] == 0
    assert players.minimax_value(TTT.initial(1)[0]) == 0
    look, rng = players.LookaheadPlayer(TTT), np.random.default_rng(0)
    assert look(board("xx. oo. ...")[None], rng)[0] == 2  # win rather than block
    assert look(board("oo. x.. ..x")[None], rng)[0] == 2  # block
    assert players.LookaheadPlayer(C4)(board("......." * 5 + "ooo.x.x")[None], rng)[0] == 3


# ---------------------------------------------------------------------------------------------- the source


RECIPE = """
[run]
name = "ttt-tiny"
[data]
source = "selfplay"
game = "tictactoe"
games_per_iteration = 4
simulations = 4
temp_moves = 2
steps_per_iteration = 2
window = 2
arena_games = 2
batch_size = 16
eval_games = 2
[model]
kind = "alphazero"
channels = 8
blocks = 1
value_hidden = 8
[loop]
steps = 12
eval_every = 4
log_every = 2
threads = 1
monitor = "score_vs_minimax"
monitor_mode = "max"
"""
FIXED = {"iteration", "games", "buffer_size", "arena_score", "accepted", "selfplay_s", "arena_s"}
TIMING = ("time", "throughput", "selfplay_s", "arena_s")


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "ttt.toml"
    path.write_text(RECIPE)
    return path


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def comparable(run_dir):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows(run_dir)]


@pytest.mark.slow
def test_a_tiny_selfplay_run_logs_fixed_keys_validates_and_evaluates(tmp_path, recipe_file):
    cfg = config.load_recipe(str(recipe_file), [])
    s = loop.train(cfg, tmp_path / "r")
    train = [r for r in rows(tmp_path / "r") if r["split"] == "train"]
    assert len(train) == 12 and all(FIXED | {"policy_loss", "value_loss"} <= set(r) for r in train)
    assert train[-1]["iteration"] == 6 and train[-1]["games"] == 24 and 0 <= train[-1]["arena_score"] <= 1
    val = [r for r in rows(tmp_path / "r") if r["split"] == "val"]
    assert {"score_vs_minimax", "losses_vs_minimax", "score_vs_lookahead", "score_vs_random"} <= set(val[0])
    assert s["best"]["metric"] == "score_vs_minimax"

    out = run_cli("eval", str(tmp_path / "r"), "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert {"split", "n", "task", "metrics", "baseline", "vs_minimax", "vs_random", "vs_lookahead"} <= set(result)
    assert set(result["vs_minimax"]) == {"games", "wins", "draws", "losses"} and result["task"] == "selfplay"
    assert result["baseline"]["name"] and "score_vs_random" in result["baseline"]
    assert run_cli("eval", str(tmp_path / "r")).returncode == 0  # the table too

    # a person plays it: an out-of-range move, a word, a taken cell, then the input ends
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    p = subprocess.run([sys.executable, "-m", "trainlab", "play", str(tmp_path / "r"), "--simulations", "4"],
                       input="10\nfive\n5\n5\n", capture_output=True, text=True, env=env, timeout=60, cwd=REPO)
    assert p.returncode == 0, p.stderr
    assert "10 is out of range" in p.stdout and "'five' is not a number" in p.stdout
    assert "cell 5 is taken" in p.stdout and "the model plays" in p.stdout and p.stderr == ""

    bad = run_cli("play", str(tmp_path / "r"), "--simulations", "0")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --simulations")
    assert bad.stderr.count("error:") == 1


@pytest.mark.parametrize("candidate_score, accepted", [(0.5, False), (0.75, True)])
def test_the_arena_keeps_the_best_network_unless_the_candidate_wins_enough(tmp_path, recipe_file, monkeypatch,
                                                                           candidate_score, accepted):
    """AlphaGo Zero's gate: the candidate replaces the self-play network only at a score >= 0.55."""
    from trainlab.rl import selfplay

    wins = int(candidate_score * 4)
    monkeypatch.setattr(selfplay.players, "match", lambda *a, **k: {"games": 4, "wins": wins, "draws": 0,
                                                                     "losses": 4 - wins})
    seen = []
    real = selfplay.SelfPlayStream._arena

    def arena(self):
        before = {k: v.clone() for k, v in self.best.state_dict().items()}
        real(self)
        now = self.best.state_dict()
        cand = self.policy.model.state_dict()
        seen.append((self.accepted, all(torch.equal(now[k], before[k]) for k in now),
                     all(torch.equal(now[k], cand[k]) for k in now)))

    monkeypatch.setattr(selfplay.SelfPlayStream, "_arena", arena)
    cfg = config.load_recipe(str(recipe_file), ["loop.steps=4", "loop.eval_every=4", "data.eval_games=1"])
    loop.train(cfg, tmp_path / "r")
    assert len(seen) == 2  # an arena after each iteration of 2 steps
    for got, unchanged, copied in seen:
        assert got == float(accepted) and unchanged == (not accepted) and copied == accepted


def test_a_whole_game_against_the_model_ends_with_a_result(tmp_path, recipe_file, monkeypatch):
    import io

    from trainlab.rl.play import play

    loop.train(config.load_recipe(str(recipe_file), ["loop.steps=2", "loop.eval_every=2"]), tmp_path / "r")
    moves = io.StringIO("".join(f"{c}\n" for c in range(1, 10)))  # the first free cell, in turn
    out = io.StringIO()
    result = play(tmp_path / "r", "human", 4, stdin=moves, stdout=out)
    assert result in ("human", "model", "draw") and out.getvalue().rstrip().endswith(
        {"human": "you win", "model": "the model wins", "draw": "a draw"}[result])


def test_bad_input_is_one_error_line(tmp_path, recipe_file):
    out = run_cli("train", str(recipe_file), "data.game=chess", "--run-dir", str(tmp_path / "x"))
    assert out.returncode == 2 and out.stderr.count("error:") == 1 and "data.game" in out.stderr
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.toml").write_text("[data]\nsource = \"digits\"\n")
    out = run_cli("play", str(tmp_path / "other"))
    assert out.returncode == 2 and "not on self-play games" in out.stderr


def test_selfplay_resumes_exactly_after_a_checkpoint(tmp_path, recipe_file, monkeypatch):
    cfg = config.load_recipe(str(recipe_file), ["data.steps_per_iteration=3"])
    loop.train(cfg, tmp_path / "full")
    train_killed_after(cfg, tmp_path / "cut", 4, monkeypatch)  # in the middle of the second iteration's steps
    loop.train(cfg, tmp_path / "cut", resume=True)
    assert comparable(tmp_path / "full") == comparable(tmp_path / "cut")


@pytest.mark.slow
def test_selfplay_resumes_exactly_after_sigkill(tmp_path, recipe_file):
    over = ["loop.steps=24", "loop.eval_every=6", "data.steps_per_iteration=3"]
    loop.train(config.load_recipe(str(recipe_file), over), tmp_path / "full")
    train_sigkilled([recipe_file, *over], tmp_path / "cut")
    out = run_cli("train", str(recipe_file), *over, "--run-dir", str(tmp_path / "cut"), "--resume")
    assert out.returncode == 0, out.stderr
    assert comparable(tmp_path / "full") == comparable(tmp_path / "cut")
