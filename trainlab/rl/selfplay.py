"""AlphaZero-style self-play: the data source is the best network so far playing against itself.

An *iteration*:

  1. self-play: data.games_per_iteration games at once, every move a batched PUCT search (trainlab.rl.mcts:
     data.simulations per move, the leaves of all games through the network in one forward pass) by the BEST
     network, a frozen copy kept here, with Dirichlet noise at the roots (data.dirichlet_alpha, dirichlet_eps);
     moves are sampled in proportion to the visits for the first data.temp_moves plies, then the most visited;
  2. every position becomes examples (encoded board, the root's visit distribution, the game's outcome from that
     position's mover's view: 1 win, 0 draw, -1 loss), once per symmetry of the board (tic-tac-toe 8,
     connect-four 2), added to a buffer holding the last data.window iterations;
  3. training: data.steps_per_iteration optimizer steps of the one loop, each on data.batch_size x
     loop.grad_accum examples drawn from the buffer (a seeded generator);
  4. the arena: the model being trained (the candidate) plays data.arena_games against the best network (both
     searching without noise, sampling the first temp_moves plies so that the games differ); it becomes the best
     if it scores at least data.arena_threshold (wins + draws / 2 per game). data.arena_games = 0: it always
     becomes the best (AlphaZero; the arena is AlphaGo Zero's).

An iteration's steps are the loop's "epoch" (data.batches_per_epoch), so `loop.epochs` counts iterations.

Logged after every step (fixed keys): iteration, games (played so far), buffer_size, arena_score (the last
arena's; -1 before the first one and without arenas), accepted (whether the last arena's candidate became the
best), selfplay_s and arena_s (the last iteration's times). Validation: the current model searching without
noise (data.eval_games games against each, half of them moving first) against a random player, the one-step
lookahead player and (tic-tac-toe) perfect minimax: score_vs_*, losses_vs_* (the fraction lost).
`trainlab eval RUN` plays the same matches beside a random player's scores; `trainlab play RUN` plays a person.

The stream's state (buffer, position in the iteration, generators, the best network's weights, the last arena)
is part of every checkpoint: a resumed run plays the same games. One process only (torchrun is refused).
"""

from __future__ import annotations

import copy
import json
import time
from typing import Literal

import numpy as np
import torch
from pydantic import Field, PositiveInt

from trainlab import registry
from trainlab.config import DataTable
from trainlab.data.batches import micro_batches
from trainlab.errors import UserError
from trainlab.rl import games as games_lib
from trainlab.rl import players
from trainlab.rl.mcts import MCTS, choose, network_evaluator


class SelfPlayData(DataTable):
    source: Literal["selfplay"] = "selfplay"
    game: Literal["tictactoe", "connect4"] = "tictactoe"  # tic-tac-toe (3x3, 9 cells) or connect-four (6x7, 7 columns)
    games_per_iteration: PositiveInt = 64  # self-play games per iteration, played at once
    simulations: PositiveInt = 50  # search simulations per move (self-play, arena and validation)
    c_puct: float = Field(1.5, gt=0)  # exploration constant of PUCT
    dirichlet_alpha: float = Field(1.0, gt=0)  # root noise concentration (smaller: spikier noise)
    dirichlet_eps: float = Field(0.25, ge=0, le=1)  # share of the noise in the root priors (0 = none)
    temp_moves: int = Field(4, ge=0)  # plies played in proportion to visits (temperature 1), then the most visited
    steps_per_iteration: PositiveInt = 20  # optimizer steps of training on the buffer per iteration
    window: PositiveInt = 4  # iterations of examples kept in the buffer
    arena_games: int = Field(0, ge=0)  # candidate vs best games per iteration (0 = always accept the candidate)
    arena_threshold: float = Field(0.55, ge=0, le=1)  # the candidate's score that makes it the best
    eval_games: PositiveInt = 20  # validation games against each reference player
    eval_simulations: int = Field(0, ge=0)  # search simulations per move in validation (0 = data.simulations)


@registry.source("selfplay", SelfPlayData, provides={"boards"})
def build(cfg: SelfPlayData) -> "SelfPlay":
    """Self-play games of the best network with batched MCTS (AlphaZero): tic-tac-toe or connect-four."""
    return SelfPlay(cfg)


def play_games(game: games_lib.Game, search: MCTS, n: int, temp_moves: int, rng: np.random.Generator,
               noise: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n self-play games at once -> (boards (T, H, W) int8, visit distributions (T, A), outcomes (T,)): every
    position of every game, its outcome from the view of the player to move there."""
    boards = game.initial(n)
    running = np.ones(n, bool)
    seen: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]] = []  # (game ids, boards, pis, ply)
    final = np.zeros(n, np.float32)  # each game's value for the player to move at its end
    last_ply = np.zeros(n, np.int64)
    ply = 0
    while running.any():
        idx = np.flatnonzero(running)
        visits = search.search(boards[idx], rng, noise=noise)
        seen.append((idx, boards[idx].copy(), visits / visits.sum(-1, keepdims=True), ply))
        actions = choose(visits, 1.0 if ply < temp_moves else 0.0, rng)
        boards[idx] = game.play(boards[idx], actions)
        ply += 1
        done, value = game.status(boards[idx])
        final[idx[done]], last_ply[idx[done]] = value[done], ply
        running[idx[done]] = False
    ids = np.concatenate([s[0] for s in seen])
    plies = np.concatenate([np.full(len(s[0]), s[3]) for s in seen])
    # the mover at `ply` is the final mover when the plies between them are even
    z = final[ids] * np.where((last_ply[ids] - plies) % 2 == 0, 1.0, -1.0)
    return (np.concatenate([s[1] for s in seen]), np.concatenate([s[2] for s in seen]).astype(np.float32),
            z.astype(np.float32))


class SelfPlay:
    unit = "ex"

    def __init__(self, cfg: SelfPlayData):
        self.cfg = cfg
        self.game = games_lib.make(cfg.game)
        self.opponents = ["random", "lookahead"] + (["minimax"] if cfg.game == "tictactoe" else [])
        self.info = {"task": "selfplay", "game": cfg.game, "input_shape": list(self.game.input_shape),
                     "num_actions": self.game.num_actions, "capabilities": ["boards"],
                     "split_sizes": {"train": 0, "val": cfg.eval_games * len(self.opponents), "test": 0}}
        self.batch_size, self.batches_per_epoch = cfg.batch_size, cfg.steps_per_iteration
        self.counts_steps = True  # batches_per_epoch and the run's length are optimizer steps, whatever grad_accum

    def count(self, batch):
        return len(batch["x"])

    def export(self, model_dir):
        pass  # model/config.json's info names the game and its shapes: all `trainlab play` needs

    def stream(self, seed, policy, plan):
        if policy.ctx is not None and policy.ctx.world > 1:
            raise UserError(f"data.source = 'selfplay' runs in one process; this run has {policy.ctx.world}",
                            "train self-play without torchrun")
        return SelfPlayStream(self, seed, policy, plan)

    def model_player(self, model, device, simulations: int = 0):
        return players.MCTSPlayer(self.game, network_evaluator(model, device),
                                  simulations or self.cfg.eval_simulations or self.cfg.simulations, self.cfg.c_puct)

    def reference(self, name: str):
        return {"random": players.RandomPlayer, "lookahead": players.LookaheadPlayer,
                "minimax": players.MinimaxPlayer}[name](self.game)

    def matches(self, player, games: int, seed: int) -> dict[str, dict[str, int]]:
        """{opponent: match result} of `player` against every reference player."""
        return {o: players.match(player, self.reference(o), self.game, games, seed + i)
                for i, o in enumerate(self.opponents)}

    @staticmethod
    def scores(results: dict[str, dict[str, int]]) -> dict[str, float]:
        out = {}
        for o, r in results.items():
            out[f"score_vs_{o}"] = players.score(r)
            out[f"losses_vs_{o}"] = r["losses"] / max(1, r["games"])
        return out

    def validate(self, policy, limit=0):
        """The current model (search without noise, the most visited move) against the reference players
        (data.eval_games each; loop.eval_batches does not apply)."""
        with policy.gathered() as m:
            results = self.matches(self.model_player(m, policy.device), self.cfg.eval_games, self.cfg.split_seed)
        return self.scores(results)

    def evaluate_model(self, model, split, episodes: int = 0):
        """`trainlab eval`: the model's matches against the reference players, beside a random player's.
        `episodes`: games against each player (data.eval_games by default); the test split plays other openings
        than validation (another seed for the sampled first moves)."""
        model = model.eval()
        device = next(model.parameters()).device
        n, seed = episodes or self.cfg.eval_games, self.cfg.split_seed + (7919 if split == "test" else 0)
        with torch.no_grad():
            results = self.matches(self.model_player(model, device), n, seed)
        base = self.matches(players.RandomPlayer(self.game), n, seed)
        out = {"split": split, "n": sum(r["games"] for r in results.values()), "task": "selfplay",
               "game": self.cfg.game, "metrics": self.scores(results),
               "baseline": {"name": "random player", **self.scores(base)}}
        out.update({f"vs_{o}": r for o, r in results.items()})
        return out


class SelfPlayStream:
    # on_step's keys: where the source is (shown as they are at a logging step, not averaged)
    state_metrics = ("iteration", "games", "buffer_size", "arena_score", "accepted", "selfplay_s", "arena_s")

    def __init__(self, data: SelfPlay, seed: int, policy, plan):
        self.data, self.cfg, self.game, self.policy, self.plan = data, data.cfg, data.game, policy, plan
        self.rng = np.random.default_rng(seed)  # self-play and arena moves, root noise
        self.gen = torch.Generator().manual_seed(seed)  # which examples make each batch
        self.best = copy.deepcopy(policy.model).eval().requires_grad_(False)  # the network that plays self-play
        self.iteration, self.in_iteration, self.games = 0, 0, 0
        self.arena_score, self.accepted, self.selfplay_s, self.arena_s = -1.0, 0.0, 0.0, 0.0
        h, w = self.game.rows, self.game.cols
        self.boards = torch.zeros((0, h, w), dtype=torch.int8)
        self.pis = torch.zeros((0, self.game.num_actions))
        self.z = torch.zeros(0)
        self.born = torch.zeros(0, dtype=torch.long)  # the iteration each example comes from

    @property
    def epoch(self):
        return self.iteration

    def _search(self, model):
        c = self.cfg
        return MCTS(self.game, network_evaluator(model, self.policy.device), c.simulations, c.c_puct,
                    c.dirichlet_alpha, c.dirichlet_eps)

    def _self_play(self):
        t = time.time()
        c = self.cfg
        with torch.no_grad():
            boards, pis, z = play_games(self.game, self._search(self.best), c.games_per_iteration, c.temp_moves,
                                        self.rng, noise=True)
        self.iteration += 1
        self.games += c.games_per_iteration
        sym = self.game.symmetries(boards, pis)
        keep = self.born > self.iteration - c.window  # the window's older iterations, then this one's games
        self.boards = torch.cat([self.boards[keep], *(torch.from_numpy(b.copy()) for b, _ in sym)])
        self.pis = torch.cat([self.pis[keep], *(torch.from_numpy(p.astype(np.float32)) for _, p in sym)])
        self.z = torch.cat([self.z[keep], *(torch.from_numpy(z) for _ in sym)])
        self.born = torch.cat([self.born[keep], torch.full((len(z) * len(sym),), self.iteration)])
        self.in_iteration = 0
        self.selfplay_s = time.time() - t

    def next_step(self):
        if self.iteration == 0 or self.in_iteration >= self.cfg.steps_per_iteration:
            self._self_play()
        self.in_iteration += 1
        n = self.plan.batches * self.cfg.batch_size
        idx = torch.randint(len(self.z), (n,), generator=self.gen)[self.plan.lo:self.plan.hi]  # the global draw
        batch = {"x": torch.from_numpy(self.game.encode(self.boards[idx].numpy())), "pi": self.pis[idx],
                 "z": self.z[idx]}
        return micro_batches(batch, self.plan.accum)

    def on_step(self, step, metrics):
        if self.in_iteration >= self.cfg.steps_per_iteration:  # the iteration's training is done: the arena
            self._arena()
        return {"iteration": float(self.iteration), "games": float(self.games), "buffer_size": float(len(self.z)),
                "arena_score": self.arena_score, "accepted": self.accepted, "selfplay_s": self.selfplay_s,
                "arena_s": self.arena_s}

    def _arena(self):
        c = self.cfg
        if c.arena_games == 0:
            self.best.load_state_dict(self.policy.model.state_dict())
            self.accepted = 1.0
            return
        t = time.time()
        seed = int(self.rng.integers(2**31))
        with self.policy.gathered() as candidate:
            a = players.MCTSPlayer(self.game, network_evaluator(candidate, self.policy.device), c.simulations,
                                   c.c_puct, c.temp_moves)
            b = players.MCTSPlayer(self.game, network_evaluator(self.best, self.policy.device), c.simulations,
                                   c.c_puct, c.temp_moves)
            result = players.match(a, b, self.game, c.arena_games, seed)
            self.arena_score = players.score(result)
            self.accepted = float(self.arena_score >= c.arena_threshold)
            if self.accepted:
                self.best.load_state_dict(candidate.state_dict())
        self.arena_s = time.time() - t

    def state_dict(self):
        return {"iteration": self.iteration, "in_iteration": self.in_iteration, "games": self.games,
                "arena_score": self.arena_score, "accepted": self.accepted, "selfplay_s": self.selfplay_s,
                "arena_s": self.arena_s, "rng": json.dumps(self.rng.bit_generator.state),
                "gen": self.gen.get_state(), "boards": self.boards, "pis": self.pis, "z": self.z, "born": self.born,
                "best": {k: v.detach().cpu().clone() for k, v in self.best.state_dict().items()}}

    def load_state_dict(self, state):
        self.iteration, self.in_iteration, self.games = (int(state[k]) for k in ("iteration", "in_iteration", "games"))
        self.arena_score, self.accepted, self.selfplay_s, self.arena_s = (
            float(state[k]) for k in ("arena_score", "accepted", "selfplay_s", "arena_s"))
        self.rng.bit_generator.state = json.loads(state["rng"])
        self.gen.set_state(state["gen"])
        self.boards, self.pis, self.z, self.born = (state[k] for k in ("boards", "pis", "z", "born"))
        self.best.load_state_dict(state["best"])
