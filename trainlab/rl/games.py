"""Two-player board games for self-play, many games at once (NumPy).

A board is an int8 array (H, W) in *canonical form*: seen from the player to move, +1 their own stones, -1 the
opponent's, 0 empty. A batch of boards is (n, H, W). Playing a move puts a +1 stone and hands the board to the
other player (negates it), so the network, the search and every value are always "for the player to move":

    game.initial(n)             n empty boards
    game.legal(boards)          (n, A) bool: the legal actions
    game.play(boards, actions)  the boards after each mover's action, in the next mover's view
    game.status(boards)         (done (n,) bool, value (n,) float32): a finished game's value for the player to
                                move: -1 when the opponent has just completed a line, 0 a full board (a draw);
                                0 for a game in progress (the mover can never have a line: the game would be over)
    game.encode(boards)         (n, 3, H, W) float32 network input: own stones, opponent's stones, ones (the edge)
    game.symmetries(boards, pis)  [(boards, pis), ...]: each symmetry of the board with the action distribution
                                mapped alongside (identity first)

Actions: tic-tac-toe 9 cells (row-major, 0..8); connect-four 7 columns, a stone drops to the lowest empty row.
Who is who (X moves first) is the ply's parity: `absolute(board, ply)` turns a canonical board back.
"""

from __future__ import annotations

import numpy as np

from trainlab.errors import UserError


class Game:
    name = ""
    rows = cols = num_actions = 0
    line = 0  # stones in a row that win

    def __init__(self):
        self.input_shape = (3, self.rows, self.cols)
        self.lines = _lines(self.rows, self.cols, self.line)  # (L, line) flat cell indices of every winning line

    def initial(self, n: int) -> np.ndarray:
        return np.zeros((n, self.rows, self.cols), np.int8)

    def legal(self, boards: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def cells(self, boards: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """The flat cell index (row * cols + col) where each action puts its stone."""
        raise NotImplementedError

    def play(self, boards: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """The boards after each mover plays its (legal) action, from the next mover's view."""
        actions = np.asarray(actions, np.int64)
        if not self.legal(boards)[np.arange(len(boards)), actions].all():
            raise ValueError("an illegal action was played")
        flat = boards.reshape(len(boards), -1).copy()
        flat[np.arange(len(boards)), self.cells(boards, actions)] = 1
        return -flat.reshape(boards.shape)

    def has_line(self, boards: np.ndarray, who: int) -> np.ndarray:
        """(n,) whether `who` (+1 or -1) has a complete line on each board."""
        flat = boards.reshape(len(boards), -1)
        return (flat[:, self.lines] == who).all(-1).any(-1)

    def status(self, boards: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lost = self.has_line(boards, -1)  # the opponent's last move completed a line
        full = ~self.legal(boards).any(-1)
        return lost | full, np.where(lost, -1.0, 0.0).astype(np.float32)

    def winning_moves(self, boards: np.ndarray, who: int = 1) -> np.ndarray:
        """(n, A) bool: the legal actions that would complete a line of `who`'s stones if `who` played them
        (who = -1: the opponent's immediate threats)."""
        n, a = len(boards), self.num_actions
        legal = self.legal(boards)
        rep = np.repeat(boards, a, axis=0)
        acts = np.tile(np.arange(a), n)
        ok = legal.reshape(-1)
        flat = rep.reshape(n * a, -1).copy()
        flat[np.flatnonzero(ok), self.cells(rep[ok], acts[ok])] = who
        return (self.has_line(flat.reshape(rep.shape), who) & ok).reshape(n, a)

    def encode(self, boards: np.ndarray) -> np.ndarray:
        b = np.asarray(boards)
        return np.stack([b == 1, b == -1, np.ones_like(b, bool)], axis=1).astype(np.float32)

    def symmetries(self, boards: np.ndarray, pis: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        raise NotImplementedError

    def absolute(self, board: np.ndarray, ply: int) -> np.ndarray:
        """The board with +1 for the first player (X) and -1 for the second (O), whoever is to move."""
        return board if ply % 2 == 0 else -board

    def action_name(self, action: int) -> str:
        """How a person types the action (1-based)."""
        return str(int(action) + 1)


class TicTacToe(Game):
    name, rows, cols, num_actions, line = "tictactoe", 3, 3, 9, 3

    def legal(self, boards):
        return boards.reshape(len(boards), -1) == 0

    def cells(self, boards, actions):
        return np.asarray(actions, np.int64)

    def symmetries(self, boards, pis):
        """The 8 symmetries of the square (4 rotations, each also mirrored); the distribution over cells is a
        3x3 grid that turns with the board."""
        grid = pis.reshape(len(pis), 3, 3)
        out = []
        for k in range(4):
            b, p = np.rot90(boards, k, axes=(1, 2)), np.rot90(grid, k, axes=(1, 2))
            out.append((b, p))
            out.append((b[:, :, ::-1], p[:, :, ::-1]))
        return [(np.ascontiguousarray(b), np.ascontiguousarray(p).reshape(len(pis), 9)) for b, p in out]


class ConnectFour(Game):
    name, rows, cols, num_actions, line = "connect4", 6, 7, 7, 4

    def legal(self, boards):
        return boards[:, 0, :] == 0  # the top row of the column is free

    def cells(self, boards, actions):
        actions = np.asarray(actions, np.int64)
        n = len(boards)
        empty = (boards[np.arange(n), :, actions] == 0).sum(-1)  # stones fill a column from the bottom (row 5)
        return (empty - 1) * self.cols + actions

    def symmetries(self, boards, pis):
        """The board and its left-right mirror (columns reversed, and the distribution over them)."""
        return [(boards, pis), (np.ascontiguousarray(boards[:, :, ::-1]), np.ascontiguousarray(pis[:, ::-1]))]


def _lines(rows: int, cols: int, k: int) -> np.ndarray:
    """Flat indices of every k-in-a-row: horizontal, vertical and both diagonals."""
    out = []
    for r in range(rows):
        for c in range(cols):
            for dr, dc in ((0, 1), (1, 0), (1, 1), (1, -1)):
                cells = [(r + i * dr, c + i * dc) for i in range(k)]
                if all(0 <= y < rows and 0 <= x < cols for y, x in cells):
                    out.append([y * cols + x for y, x in cells])
    return np.array(out, np.int64)


GAMES = {"tictactoe": TicTacToe, "connect4": ConnectFour}


def make(name: str) -> Game:
    if name not in GAMES:
        raise UserError(f"game {name!r} is not a known game; the games are {', '.join(GAMES)}",
                        f"set data.game to one of {', '.join(GAMES)}")
    return GAMES[name]()
