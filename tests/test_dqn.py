"""The DQN head: TD targets, the replay buffer, the epsilon schedule and training on real states."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from hclr_ids.config import DQNConfig
from hclr_ids.rl.dqn import DQNHead, ReplayBuffer, td_target, train_dqn
from hclr_ids.rl.env import FlowClassificationVecEnv

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def real(rl_real_states: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return rl_real_states


def _small_config(**changes) -> DQNConfig:
    config = DQNConfig(num_envs=256, total_steps=150, batch_size=256, buffer_size=20_000, gradient_steps_per_step=2)
    for name, value in changes.items():
        setattr(config, name, value)
    return config


@pytest.fixture(scope="module")
def trained(real) -> tuple[DQNHead, dict[str, list[float]]]:
    states, labels = real
    env = FlowClassificationVecEnv(states, labels, 4, num_envs=256)
    return train_dqn(env, _small_config(), seed=0)


def test_td_target_hand_values():
    rewards = torch.tensor([1.0, -1.0, 0.5])
    next_q = torch.tensor([[0.5, 2.0], [3.0, -1.0], [-4.0, -2.0]])
    dones = torch.tensor([0.0, 1.0, 0.0])
    target = td_target(rewards, next_q, dones, 0.9)
    np.testing.assert_allclose(target.numpy(), [1.0 + 0.9 * 2.0, -1.0, 0.5 - 0.9 * 2.0], rtol=1e-6)


def test_replay_buffer_wraps():
    buffer = ReplayBuffer(5, 1)
    for first in (0, 3):
        values = torch.arange(first, first + 4 if first else first + 3, dtype=torch.float32)
        n = len(values)
        buffer.add(values[:, None], torch.zeros(n, dtype=torch.int64), values, values[:, None], torch.zeros(n))
    assert buffer.size == 5
    assert buffer.position == 2
    assert buffer.rewards.tolist() == [5.0, 6.0, 2.0, 3.0, 4.0]


def test_replay_buffer_keeps_last_of_oversized_batch():
    buffer = ReplayBuffer(3, 1)
    values = torch.arange(5, dtype=torch.float32)
    buffer.add(values[:, None], torch.zeros(5, dtype=torch.int64), values, values[:, None], torch.zeros(5))
    assert sorted(buffer.rewards.tolist()) == [2.0, 3.0, 4.0]


def test_epsilon_decays_to_floor(real):
    states, labels = real
    env = FlowClassificationVecEnv(states, labels, 4, num_envs=16)
    config = _small_config(num_envs=16, total_steps=6, epsilon_start=1.0, epsilon_decay=0.5, epsilon_end=0.1)
    _, history = train_dqn(env, config, seed=0)
    assert history["rl/epsilon"] == [0.5, 0.25, 0.125, 0.1, 0.1, 0.1]


def test_history_keys(trained):
    _, history = trained
    assert {"step", "rl/dqn_loss", "rl/dqn_reward", "rl/epsilon"} <= set(history)
    assert history["step"][:2] == [256, 512]


def test_dqn_learns_real_states(trained, real):
    head, _ = trained
    states, labels = real
    predicted = head.predict(states)
    recall = [np.mean(predicted[labels == c] == c) for c in range(4)]
    # Chance is 0.25; a logistic regression on these states reaches a balanced recall of about 0.9.
    assert np.mean(recall) > 0.8


def test_q_values_shape(trained, real):
    head, _ = trained
    q_values = head.q_values(real[0][:10])
    assert q_values.shape == (10, 4)
    assert q_values.dtype == torch.float32


def test_same_seed_same_network(real):
    states, labels = real
    config = _small_config(total_steps=5)
    first, _ = train_dqn(FlowClassificationVecEnv(states, labels, 4, num_envs=256), config, seed=3)
    second, _ = train_dqn(FlowClassificationVecEnv(states, labels, 4, num_envs=256), config, seed=3)
    torch.testing.assert_close(first.q_values(states[:50]), second.q_values(states[:50]))


def test_mse_loss_runs(real):
    states, labels = real
    env = FlowClassificationVecEnv(states, labels, 4, num_envs=256)
    _, history = train_dqn(env, _small_config(total_steps=3, loss="mse"), seed=0)
    assert np.isfinite(history["rl/dqn_loss"][-1])


def test_unknown_loss_rejected(real):
    states, labels = real
    env = FlowClassificationVecEnv(states, labels, 4)
    with pytest.raises(ValueError, match="unknown DQN loss"):
        train_dqn(env, _small_config(loss="l1"), seed=0)


def test_time_budget_stops_early(real):
    states, labels = real
    env = FlowClassificationVecEnv(states, labels, 4, num_envs=256)
    _, history = train_dqn(env, _small_config(total_steps=10_000), seed=0, time_budget_s=0.5)
    assert len(history["step"]) < 10_000


def test_state_round_trip(trained, real):
    head, _ = trained
    restored = DQNHead.from_state(head.metadata(), head.state_tensors())
    np.testing.assert_array_equal(restored.predict_proba(real[0][:100]), head.predict_proba(real[0][:100]))


def test_torch_module_matches_predict_proba(trained, real):
    head, _ = trained
    with torch.no_grad():
        probabilities = head.torch_module()(torch.as_tensor(real[0][:100])).numpy()
    np.testing.assert_allclose(probabilities, head.predict_proba(real[0][:100]), rtol=1e-5, atol=1e-6)
