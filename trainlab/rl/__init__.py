"""Reinforcement learning on the one loop: the data source is an agent acting in its environment.

  envs.py       Gymnasium environments by id, vectorized (sync/async), seeded, autoreset handled explicitly,
                episodes replayed on resume
  agents.py     the actor-critic (PPO) and Q-network (DQN) models
  gym.py        the sources: on-policy rollouts (PPO) and an off-policy replay buffer (DQN)
  ppo.py, dqn.py  the objectives
  games.py, mcts.py, players.py, alphazero.py, selfplay.py, play.py
                AlphaZero-style self-play: board games, batched PUCT search, reference players, the network and
                its objective, the self-play source with arena gating, and a terminal game against a person

Gymnasium is an extra (`pip install trainlab[rl]`), imported only when an environment is made.
"""
