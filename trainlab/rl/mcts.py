"""PUCT Monte Carlo tree search, many games at once, guided by a policy/value evaluator.

One search runs `simulations` simulations for each of n boards (games in progress, each the root of its own
tree). A simulation of every tree at once:

  1. select: from each root, follow the edge maximizing Q + c_puct * P * sqrt(sum N) / (1 + N) (Q from the
     mover's view; an unvisited edge has Q = 0) until an edge without a child, or a child that ended the game;
  2. expand: play the edge's action (games.play on all those boards at once); a finished board is valued
     exactly (games.status: -1 when the player to move has lost, 0 a draw); the others go through the evaluator
     in ONE batch (the leaves of every tree): priors over the legal actions and a value in [-1, 1];
  3. back up: the leaf's value is for its player to move; every edge above it gets it with the sign flipped at
     each ply (an edge belongs to the player moving at its node).

The trees are arrays over (game, node, action): no Python object per node, and every step above is a few NumPy
operations over all games. An evaluator is any function (encoded boards (m, C, H, W) float32) ->
(log-priors (m, A), values (m,)) as NumPy arrays: `network_evaluator(model)` wraps a policy/value network,
`uniform_evaluator` is the network-free baseline of the tests. Roots may get Dirichlet noise (self-play's
exploration): P = (1 - eps) P + eps Dir(alpha) over the legal actions.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from trainlab.rl.games import Game

Evaluator = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def uniform_evaluator(num_actions: int) -> Evaluator:
    """Equal priors and a value of 0 everywhere: plain UCT-like search where only finished games count."""
    def evaluate(x: np.ndarray):
        return np.zeros((len(x), num_actions), np.float32), np.zeros(len(x), np.float32)
    return evaluate


def network_evaluator(model: torch.nn.Module, device: torch.device | str = "cpu") -> Evaluator:
    """A policy/value network (forward(x) -> (logits (m, A), value (m,) or (m, 1))) as an evaluator. The caller
    puts it in eval mode (trainlab.policy.Policy.gathered does)."""
    def evaluate(x: np.ndarray):
        with torch.no_grad():
            logits, value = model(torch.from_numpy(x).to(device))
        return (torch.log_softmax(logits.float(), -1).cpu().numpy(),
                value.float().reshape(-1).clamp(-1, 1).cpu().numpy())
    return evaluate


def _priors(logp: np.ndarray, legal: np.ndarray) -> np.ndarray:
    """Softmax of the log-priors over the legal actions (0 elsewhere)."""
    z = np.where(legal, logp, -np.inf)
    z = np.exp(z - z.max(-1, keepdims=True))
    return (z / z.sum(-1, keepdims=True)).astype(np.float32)


class MCTS:
    def __init__(self, game: Game, evaluator: Evaluator, simulations: int, c_puct: float = 1.5,
                 dirichlet_alpha: float = 0.3, dirichlet_eps: float = 0.25):
        self.game, self.evaluate, self.simulations = game, evaluator, int(simulations)
        self.c_puct, self.alpha, self.eps = c_puct, dirichlet_alpha, dirichlet_eps

    def search(self, boards: np.ndarray, rng: np.random.Generator | None = None, noise: bool = False) \
            -> np.ndarray:
        """(n, A) root visit counts after the search from each board (games in progress)."""
        g, n, A = self.game, len(boards), self.game.num_actions
        M = self.simulations + 1  # the root, and one new node per simulation at most
        N = np.zeros((n, M, A), np.float32)  # visits of each edge
        W = np.zeros((n, M, A), np.float32)  # summed values of each edge, from its mover's view
        P = np.zeros((n, M, A), np.float32)  # priors
        child = np.full((n, M, A), -1, np.int32)
        legal = np.zeros((n, M, A), bool)
        board = np.zeros((n, M, g.rows, g.cols), np.int8)
        term = np.zeros((n, M), bool)
        term_value = np.zeros((n, M), np.float32)
        count = np.ones(n, np.int64)
        rows = np.arange(n)

        board[:, 0] = boards
        legal[:, 0] = g.legal(boards)
        logp, _ = self.evaluate(g.encode(boards))
        P[:, 0] = _priors(logp, legal[:, 0])
        if noise and self.eps > 0:
            rng = rng if rng is not None else np.random.default_rng()
            for i in range(n):  # Dirichlet noise over each root's legal actions
                ok = np.flatnonzero(legal[i, 0])
                P[i, 0, ok] = (1 - self.eps) * P[i, 0, ok] + self.eps * rng.dirichlet([self.alpha] * len(ok))

        depth_max = g.rows * g.cols + 1
        path_node = np.zeros((n, depth_max), np.int64)
        path_act = np.zeros((n, depth_max), np.int64)
        for _ in range(self.simulations):
            # 1. select, all trees one ply at a time
            node = np.zeros(n, np.int64)
            length = np.zeros(n, np.int64)
            leaf_node = np.zeros(n, np.int64)  # the node the simulation ends at (new or finished)
            descending = rows.copy()
            depth = 0
            while len(descending):
                i, nd = descending, node[descending]
                n_edge, w_edge = N[i, nd], W[i, nd]
                q = np.where(n_edge > 0, w_edge / np.maximum(n_edge, 1), 0.0)
                total = np.sqrt(np.maximum(n_edge.sum(-1, keepdims=True), 1.0))
                u = q + self.c_puct * P[i, nd] * total / (1.0 + n_edge)
                a = np.where(legal[i, nd], u, -np.inf).argmax(-1)
                path_node[i, depth], path_act[i, depth] = nd, a
                length[i] = depth + 1
                nxt = child[i, nd, a]
                new = nxt < 0
                # 2. expand: a new node for each edge without a child
                if new.any():
                    j, pn, pa = i[new], nd[new], a[new]
                    nb = g.play(board[j, pn], pa)
                    done, value = g.status(nb)
                    idx = count[j]
                    count[j] += 1
                    child[j, pn, pa] = idx
                    board[j, idx], term[j, idx], term_value[j, idx] = nb, done, value
                    legal[j, idx] = g.legal(nb)
                    leaf_node[j] = idx
                stop = new | term[i, np.maximum(nxt, 0)]
                leaf_node[i[~new & stop]] = nxt[~new & stop]
                node[i[~stop]] = nxt[~stop]
                descending = i[~stop]
                depth += 1
            # the leaves' values (for their player to move): exact when finished, else the evaluator's
            leaf_value = term_value[rows, leaf_node].copy()
            # a leaf that is not finished is a node this simulation created: never evaluated
            fresh = np.flatnonzero(~term[rows, leaf_node])
            if len(fresh):
                lb = board[fresh, leaf_node[fresh]]
                logp, value = self.evaluate(g.encode(lb))
                P[fresh, leaf_node[fresh]] = _priors(logp, legal[fresh, leaf_node[fresh]])
                leaf_value[fresh] = value
            # 3. back up, flipping the sign at every ply
            for d in range(int(length.max())):
                i = np.flatnonzero(length > d)
                sign = np.where((length[i] - d) % 2 == 1, -1.0, 1.0).astype(np.float32)
                N[i, path_node[i, d], path_act[i, d]] += 1
                W[i, path_node[i, d], path_act[i, d]] += sign * leaf_value[i]
        return N[:, 0].copy()


def choose(visits: np.ndarray, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """An action per row from root visit counts: sampled in proportion to visits^(1/T), or (T = 0) the most
    visited, ties broken at random."""
    if temperature > 0:
        w = visits.astype(np.float64) ** (1.0 / temperature)
        w /= w.sum(-1, keepdims=True)
        return np.array([rng.choice(len(p), p=p) for p in w], np.int64)
    best = visits == visits.max(-1, keepdims=True)
    noise = rng.random(visits.shape)
    return np.where(best, noise, -1.0).argmax(-1)
