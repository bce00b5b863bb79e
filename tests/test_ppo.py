"""The PPO head: GAE, the clipped surrogate loss and training on real states."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from hclr_ids.config import PPOConfig
from hclr_ids.rl.env import FlowClassificationVecEnv
from hclr_ids.rl.ppo import PPOHead, clipped_surrogate_loss, compute_gae, train_ppo, value_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def real(rl_real_states: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return rl_real_states


def _small_config(**changes) -> PPOConfig:
    config = PPOConfig(num_envs=256, rollout_steps=4, num_minibatches=4, total_iterations=40)
    for name, value in changes.items():
        setattr(config, name, value)
    return config


@pytest.fixture(scope="module")
def trained(real) -> tuple[PPOHead, dict[str, list[float]]]:
    states, labels = real
    env = FlowClassificationVecEnv(states, labels, 4, num_envs=256)
    return train_ppo(env, _small_config(), seed=0)


def _reference_gae(rewards, values, dones, next_value, gamma, lam):
    steps, envs = rewards.shape
    advantages = np.zeros((steps, envs))
    for env in range(envs):
        following_advantage = 0.0
        for t in reversed(range(steps)):
            following_value = next_value[env] if t == steps - 1 else values[t + 1, env]
            if dones[t, env]:
                following_value = 0.0
                following_advantage = 0.0
            delta = rewards[t, env] + gamma * following_value - values[t, env]
            following_advantage = delta + gamma * lam * following_advantage
            advantages[t, env] = following_advantage
    return advantages


def test_gae_matches_reference_loop():
    rng = np.random.default_rng(0)
    rewards, values = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    dones = rng.random((6, 5)) < 0.3
    next_value = rng.normal(size=5)
    advantages, returns = compute_gae(
        torch.tensor(rewards), torch.tensor(values), torch.tensor(dones), torch.tensor(next_value), 0.9, 0.8
    )
    expected = _reference_gae(rewards, values, dones, next_value, 0.9, 0.8)
    np.testing.assert_allclose(advantages.numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(returns.numpy(), expected + values, rtol=1e-10)


def test_gae_bandit_is_reward_minus_value():
    rewards = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    values = torch.tensor([[0.2, 0.4], [-0.3, 0.0]])
    advantages, _ = compute_gae(rewards, values, torch.ones(2, 2), torch.tensor([5.0, 5.0]), 0.99, 0.95)
    torch.testing.assert_close(advantages, rewards - values)


@pytest.mark.parametrize(
    ("ratio", "advantage", "expected"),
    [
        (1.5, 1.0, -1.2),   # positive advantage, ratio above 1 + eps: clipped at 1.2
        (0.5, 1.0, -0.5),   # positive advantage, ratio below 1 - eps: unclipped term is larger
        (1.5, -1.0, 1.5),   # negative advantage, ratio above 1 + eps: unclipped term is larger
        (0.5, -1.0, 0.8),   # negative advantage, ratio below 1 - eps: clipped at 0.8
        (1.1, 2.0, -2.2),   # inside the clip range both terms agree
    ],
)
def test_clipped_loss_hand_values(ratio, advantage, expected):
    new_logprob = torch.tensor([np.log(ratio)], dtype=torch.float32)
    loss = clipped_surrogate_loss(new_logprob, torch.zeros(1), torch.tensor([advantage]), 0.2)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_clipped_loss_is_mean():
    new_logprob = torch.log(torch.tensor([1.5, 0.5, 1.5, 0.5]))
    advantages = torch.tensor([1.0, 1.0, -1.0, -1.0])
    loss = clipped_surrogate_loss(new_logprob, torch.zeros(4), advantages, 0.2)
    assert float(loss) == pytest.approx((-1.2 - 0.5 + 1.5 + 0.8) / 4, rel=1e-5)


def test_value_loss_hand_values():
    assert float(value_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]))) == pytest.approx(0.5 * (1 + 4) / 2)


def test_ppo_learns_real_states(trained, real):
    head, _ = trained
    states, labels = real
    predicted = head.predict(states)
    recall = [np.mean(predicted[labels == c] == c) for c in range(4)]
    # Chance is 0.25; a logistic regression on these states reaches a balanced recall of about 0.9.
    assert np.mean(recall) > 0.75


def test_history_keys(trained):
    _, history = trained
    assert {"step", "rl/ppo_reward", "rl/ppo_policy_loss", "rl/ppo_value_loss", "rl/ppo_entropy"} <= set(history)
    assert history["step"][:2] == [1024, 2048]


def test_entropy_falls(trained):
    _, history = trained
    assert history["rl/ppo_entropy"][-1] < history["rl/ppo_entropy"][0]
    assert history["rl/ppo_entropy"][0] == pytest.approx(np.log(4), rel=0.05)


def test_probabilities_sum_to_one(trained, real):
    head, _ = trained
    probabilities = head.predict_proba(real[0][:100])
    assert probabilities.shape == (100, 4)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-5)


def test_same_seed_same_policy(real):
    states, labels = real
    config = _small_config(total_iterations=2)
    first, _ = train_ppo(FlowClassificationVecEnv(states, labels, 4, num_envs=256), config, seed=5)
    second, _ = train_ppo(FlowClassificationVecEnv(states, labels, 4, num_envs=256), config, seed=5)
    torch.testing.assert_close(first.logits(states[:50]), second.logits(states[:50]))


def test_minibatches_must_divide_batch(real):
    states, labels = real
    env = FlowClassificationVecEnv(states, labels, 4, num_envs=10)
    with pytest.raises(ValueError, match="must divide"):
        train_ppo(env, _small_config(rollout_steps=3, num_minibatches=4), seed=0)


def test_transform_must_be_module(real):
    states, labels = real
    env = FlowClassificationVecEnv(states, labels, 4, num_envs=256)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        train_ppo(env, _small_config(), seed=0, obs_transform=lambda s: s)  # type: ignore[arg-type]


def test_state_round_trip(trained, real):
    head, _ = trained
    restored = PPOHead.from_state(head.metadata(), head.state_tensors())
    np.testing.assert_array_equal(restored.predict_proba(real[0][:100]), head.predict_proba(real[0][:100]))
