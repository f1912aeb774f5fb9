"""Reinforcement learning on the one loop: the data source is an agent acting in its environment.

  envs.py       Gymnasium environments by id, vectorized (sync/async), seeded, autoreset handled explicitly,
                episodes replayed on resume
  agents.py     the actor-critic (PPO) and Q-network (DQN) models, observation normalization
  rollouts.py   source "gym": on-policy rollouts (PPO); what both environment sources share (validation and
                eval by episodes, episode statistics, reward scaling)
  replay.py     source "gym_replay": an off-policy replay buffer and target network (DQN)
  ppo.py, dqn.py  the objectives
  report.py     the report's return curve and recorded episode
  games.py, mcts.py, players.py, alphazero.py, selfplay.py, play.py
                AlphaZero-style self-play: board games, batched PUCT search, reference players, the network and
                its objective, the self-play source with arena gating, and a terminal game against a person

Gymnasium is an extra (`pip install trainlab[rl]`), imported only when an environment is made.
"""
