"""Reinforcement-learning decision heads on frozen flow embeddings: the environment, DQN, PPO and the hybrid.

The state is a flow's embedding, the action a class index and the reward +1 for the true class and -1
otherwise, optionally weighted by the true class.
"""

from hclr_ids.rl.dqn import DQNHead, QNetwork, td_target, train_dqn
from hclr_ids.rl.env import (
    FlowClassificationEnv,
    FlowClassificationVecEnv,
    class_reward_weights,
    reward,
)
from hclr_ids.rl.hybrid import (
    HybridHead,
    QValueObservation,
    RLHead,
    head_from_state,
    load_head,
    save_head,
    train_dqn_head,
    train_head,
    train_hybrid,
    train_ppo_head,
)
from hclr_ids.rl.ppo import ActorCritic, PPOHead, clipped_surrogate_loss, compute_gae, train_ppo

__all__ = [
    "ActorCritic", "DQNHead", "FlowClassificationEnv", "FlowClassificationVecEnv", "HybridHead", "PPOHead",
    "QNetwork", "QValueObservation", "RLHead", "class_reward_weights", "clipped_surrogate_loss", "compute_gae",
    "head_from_state", "load_head", "reward", "save_head", "td_target", "train_dqn", "train_dqn_head",
    "train_head", "train_hybrid", "train_ppo", "train_ppo_head",
]
