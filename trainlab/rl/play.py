"""`trainlab play RUN`: a person plays a trained self-play model in the terminal.

The board is printed before every move of the person, who types a cell (tic-tac-toe: 1-9, row by row from the
top left) or a column (connect-four: 1-7, from the left). Anything else (not a number, out of range, an occupied
cell or a full column) is answered with what was wrong and the question again; end of input (Ctrl-D) ends the
game quietly. The model searches with the run's data.simulations (or --simulations) and plays its most visited
move. X moves first: the person is X with --first human (the default), O with --first model.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from trainlab.errors import UserError

MARKS = {1: "X", -1: "O"}


def show(game, board: np.ndarray, ply: int) -> str:
    """The board with X for the first player and O for the second; a tic-tac-toe board numbers its free cells,
    a connect-four board its columns."""
    b = game.absolute(board, ply)
    if game.name == "tictactoe":
        cell = [[MARKS.get(int(b[r, c]), str(r * 3 + c + 1)) for c in range(3)] for r in range(3)]
        return "\n---+---+---\n".join(" " + " | ".join(row) for row in cell)
    rows = [" ".join(MARKS.get(int(v), ".") for v in row) for row in b]
    return "\n".join(rows + [" ".join(str(c + 1) for c in range(game.cols))])


def ask(game, board: np.ndarray, read, write) -> int | None:
    """The person's action (0-based), asked until it is legal; None at end of input."""
    what = "cell" if game.name == "tictactoe" else "column"
    legal = game.legal(board[None])[0]
    while True:
        write(f"your move ({what} 1-{game.num_actions}): ")
        line = read()
        if not line:
            write("\n")
            return None
        text = line.strip()
        try:
            move = int(text)
        except ValueError:
            write(f"'{text}' is not a number; type a {what} from 1 to {game.num_actions}\n")
            continue
        if not 1 <= move <= game.num_actions:
            write(f"{move} is out of range; type a {what} from 1 to {game.num_actions}\n")
            continue
        if not legal[move - 1]:
            write(f"{what} {move} is {'taken' if what == 'cell' else 'full'}; choose another\n")
            continue
        return move - 1


def play(run_dir: str | Path, first: str = "human", simulations: int | None = None, seed: int = 0,
         stdin=None, stdout=None) -> str | None:
    """One game between a person (stdin) and the run's model; returns "human", "model" or "draw" (None when
    the input ended first)."""
    from trainlab import config, models
    from trainlab.rl.selfplay import SelfPlay

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise UserError(f"{run_dir} is not a run folder (no config.toml)", "give the folder `trainlab train` printed")
    cfg = config.load_resolved(run_dir / "config.toml")
    if cfg.data.source != "selfplay":
        raise UserError(f"{run_dir} was trained on data.source = '{cfg.data.source}', not on self-play games",
                        "play a run of a self-play recipe (tictactoe-alphazero, connect4-alphazero)")
    if simulations is not None and simulations < 1:
        raise UserError(f"--simulations must be at least 1; got {simulations}", "give a number of simulations >= 1")
    if first not in ("human", "model"):
        raise UserError(f"--first must be 'human' or 'model'; got {first!r}", "use --first human or --first model")
    model, _ = models.load(run_dir / "model")
    data = SelfPlay(cfg.data)
    game = data.game
    player = data.model_player(model, "cpu", simulations or cfg.data.simulations)
    rng = np.random.default_rng(seed)

    def write(text):
        stdout.write(text)
        stdout.flush()

    human = 0 if first == "human" else 1  # the person's plies are those of this parity
    write(f"{game.name}: you are {'X' if human == 0 else 'O'}; X moves first\n")
    board, ply = game.initial(1)[0], 0
    while True:
        if ply % 2 == human:
            write(show(game, board, ply) + "\n")
            action = ask(game, board, stdin.readline, write)
            if action is None:
                return None
        else:
            action = int(player(board[None], rng, ply)[0])
            write(f"the model plays {game.action_name(action)}\n")
        board = game.play(board[None], [action])[0]
        ply += 1
        done, value = game.status(board[None])
        if done[0]:
            write(show(game, board, ply) + "\n")
            if value[0] == 0:
                write("a draw\n")
                return "draw"
            winner = "human" if (ply - 1) % 2 == human else "model"  # the last mover won
            write("you win\n" if winner == "human" else "the model wins\n")
            return winner
