"""Reference players, and matches between two players over many games at once.

A player maps a batch of canonical boards (games in progress, all at the same ply) to one action each:

    player(boards, rng, ply) -> actions (n,)

  RandomPlayer      a uniformly random legal move
  LookaheadPlayer   one step ahead: win now if it can, else block the opponent's immediate win, else random
  MinimaxPlayer     perfect tic-tac-toe: negamax over every position (memoized once per process), a random
                    choice among the moves of the best value
  MCTSPlayer        search guided by an evaluator (a network): the most visited root action; sampled in
                    proportion to the visits for the first `temp_moves` plies (to vary the games of a match)

`match(a, b, game, n_games, seed)` plays n_games at once, A moving first in half of them, and counts the results
from A's view.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from trainlab.rl.games import Game, TicTacToe
from trainlab.rl.mcts import MCTS, Evaluator, choose


def _random_legal(legal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random True column of each row."""
    return np.where(legal, rng.random(legal.shape), -1.0).argmax(-1)


class RandomPlayer:
    name = "random"

    def __init__(self, game: Game):
        self.game = game

    def __call__(self, boards, rng, ply=0):
        return _random_legal(self.game.legal(boards), rng)


class LookaheadPlayer:
    name = "lookahead"

    def __init__(self, game: Game):
        self.game = game

    def __call__(self, boards, rng, ply=0):
        g = self.game
        win, block = g.winning_moves(boards, 1), g.winning_moves(boards, -1)
        pick = np.where(win.any(-1, keepdims=True), win, np.where(block.any(-1, keepdims=True), block,
                                                                   g.legal(boards)))
        return _random_legal(pick, rng)


@lru_cache(maxsize=None)
def _negamax(key: bytes) -> tuple[int, tuple[int, ...]]:
    """(the value for the player to move, its optimal actions) of a tic-tac-toe board (canonical, as bytes)."""
    game = _TTT
    board = np.frombuffer(key, np.int8).reshape(1, 3, 3)
    done, value = game.status(board)
    if done[0]:
        return int(value[0]), ()
    actions = np.flatnonzero(game.legal(board)[0])
    nxt = game.play(np.repeat(board, len(actions), 0), actions)
    values = np.array([-_negamax(b.tobytes())[0] for b in nxt])
    return int(values.max()), tuple(int(a) for a in actions[values == values.max()])


_TTT = TicTacToe()


class MinimaxPlayer:
    """Perfect play for tic-tac-toe (never loses)."""
    name = "minimax"

    def __init__(self, game: Game):
        if game.name != "tictactoe":
            raise ValueError("the minimax player plays tic-tac-toe only")
        self.game = game

    def __call__(self, boards, rng, ply=0):
        return np.array([rng.choice(_negamax(np.ascontiguousarray(b, np.int8).tobytes())[1]) for b in boards],
                        np.int64)


def minimax_value(board: np.ndarray) -> int:
    """The game-theoretic value of a tic-tac-toe board for its player to move (1 win, 0 draw, -1 loss)."""
    return _negamax(np.ascontiguousarray(board, np.int8).tobytes())[0]


class MCTSPlayer:
    name = "mcts"

    def __init__(self, game: Game, evaluator: Evaluator, simulations: int, c_puct: float = 1.5,
                 temp_moves: int = 0):
        self.search = MCTS(game, evaluator, simulations, c_puct)
        self.temp_moves = temp_moves

    def __call__(self, boards, rng, ply=0):
        visits = self.search.search(boards)
        return choose(visits, 1.0 if ply < self.temp_moves else 0.0, rng)


def match(player_a, player_b, game: Game, n_games: int, seed: int = 0) -> dict[str, int]:
    """{"games", "wins", "draws", "losses"} of A against B; A moves first in the first half of the games
    (rounded up), B in the others. All games advance one ply at a time, each player moving in one batch."""
    rng = np.random.default_rng(seed)
    boards = game.initial(n_games)
    a_first = np.arange(n_games) < (n_games + 1) // 2
    result = np.zeros(n_games)  # A's result: 1 win, 0 draw, -1 loss
    running = np.ones(n_games, bool)
    ply = 0
    while running.any():
        a_moves = a_first == (ply % 2 == 0)
        actions = np.zeros(n_games, np.int64)
        for player, mine in ((player_a, a_moves), (player_b, ~a_moves)):
            idx = np.flatnonzero(running & mine)
            if len(idx):
                actions[idx] = player(boards[idx], rng, ply)
        idx = np.flatnonzero(running)
        boards[idx] = game.play(boards[idx], actions[idx])
        done, value = game.status(boards[idx])
        # value is for the player to move next, the one who did not just move
        mover_is_a = a_moves[idx]
        result[idx[done]] = np.where(mover_is_a[done], -value[done], value[done])
        running[idx[done]] = False
        ply += 1
    return {"games": int(n_games), "wins": int((result > 0).sum()), "draws": int((result == 0).sum()),
            "losses": int((result < 0).sum())}


def score(result: dict[str, int]) -> float:
    """Wins plus half the draws, over the games."""
    return (result["wins"] + 0.5 * result["draws"]) / max(1, result["games"])
