"""The flow classification environment: rewards, weights, sampling, spaces and the env checkers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from hclr_ids.rl.env import FlowClassificationEnv, FlowClassificationVecEnv, class_reward_weights, reward
from hclr_ids.schema import FEATURE_COLUMNS, LEAK_COLUMNS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def real(rl_real_states: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return rl_real_states


def test_reward_unweighted():
    actions = torch.tensor([0, 1, 2, 1])
    labels = torch.tensor([0, 2, 2, 0])
    assert reward(actions, labels).tolist() == [1.0, -1.0, 1.0, -1.0]


def test_reward_weighted_by_true_class():
    actions = torch.tensor([0, 1, 2, 1])
    labels = torch.tensor([0, 2, 2, 0])
    weights = torch.tensor([2.0, 0.5, 3.0])
    assert reward(actions, labels, weights).tolist() == [2.0, -3.0, 3.0, -2.0]


def test_class_weights_balanced():
    weights = class_reward_weights(np.array([0, 0, 0, 1]), 3, "balanced")
    np.testing.assert_allclose(weights.numpy(), [4 / 9, 4 / 3, 0.0], rtol=1e-6)


def test_class_weights_sqrt():
    labels = np.array([0, 0, 0, 1])
    weights = class_reward_weights(labels, 3, "sqrt")
    mean_root = (3 * np.sqrt(4 / 9) + np.sqrt(4 / 3)) / 4
    np.testing.assert_allclose(weights.numpy(), [np.sqrt(4 / 9) / mean_root, np.sqrt(4 / 3) / mean_root, 0.0], rtol=1e-6)
    assert float(weights[labels].mean()) == pytest.approx(1.0)


def test_class_weights_none():
    assert class_reward_weights(np.array([0, 1, 1]), 3, "none").tolist() == [1.0, 1.0, 1.0]


def test_class_weights_unknown_mode():
    with pytest.raises(ValueError, match="unknown reward weighting"):
        class_reward_weights(np.array([0, 1]), 2, "inverse")  # type: ignore[arg-type]


def test_vec_env_observations_in_space(real):
    states, labels = real
    env = FlowClassificationVecEnv(states, labels, 4, num_envs=64)
    observations, _ = env.reset(seed=0)
    assert observations.dtype == np.float32
    assert env.observation_space.contains(observations)
    observations, rewards, terminations, truncations, infos = env.step(env.action_space.sample())
    assert env.observation_space.contains(observations)
    assert rewards.shape == (64,)
    assert set(np.unique(np.abs(rewards))) == {1.0}
    assert terminations.all()
    assert not truncations.any()
    assert infos["label"].shape == (64,)


def test_vec_env_clips_and_counts():
    states = np.array([[0.5, 1.5], [-2.0, 0.0], [0.1, 0.2]], dtype=np.float32)
    env = FlowClassificationVecEnv(states, np.array([0, 1, 0]), 2)
    assert env.clipped_cells == 2
    assert env.clipped_per_column.tolist() == [1, 1]
    assert env.states.tolist() == [[0.5, 1.0], [-1.0, 0.0], [pytest.approx(0.1), pytest.approx(0.2)]]


def test_vec_env_balanced_sampling(real):
    states, labels = real
    env = FlowClassificationVecEnv(states, labels, 4, num_envs=20_000)
    env.reset(seed=1)
    _, drawn = env.sample(40_000)
    shares = np.bincount(drawn.numpy(), minlength=4) / 40_000
    # Natural shares are about 0.61, 0.25, 0.04 and 0.10; balanced draws give 0.25 each (sd about 0.002).
    np.testing.assert_allclose(shares, 0.25, atol=0.01)


def test_vec_env_stream_order(real):
    states, labels = real
    env = FlowClassificationVecEnv(states, labels, 4, num_envs=1, sampling="stream")
    env.reset(seed=0)
    seen = [env.step(np.array([0]))[4]["label"][0] for _ in range(5)]
    assert seen == labels[:5].tolist()


def test_vec_env_stream_wraps():
    states = np.zeros((3, 2), dtype=np.float32)
    env = FlowClassificationVecEnv(states, np.array([0, 1, 2]), 3, num_envs=1, sampling="stream")
    env.reset(seed=0)
    seen = [int(env.step(np.array([0]))[4]["label"][0]) for _ in range(5)]
    assert seen == [0, 1, 2, 0, 1]


def test_vec_env_same_seed_same_flows(real):
    states, labels = real
    first = FlowClassificationVecEnv(states, labels, 4, num_envs=32)
    second = FlowClassificationVecEnv(states, labels, 4, num_envs=32)
    np.testing.assert_array_equal(first.reset(seed=7)[0], second.reset(seed=7)[0])


def test_vec_env_episode_length(real):
    states, labels = real
    env = FlowClassificationVecEnv(states, labels, 4, num_envs=8, episode_length=3)
    env.reset(seed=0)
    ended = [bool(env.step(np.zeros(8, dtype=np.int64))[2].all()) for _ in range(6)]
    assert ended == [False, False, True, False, False, True]


def test_vec_env_rejects_nonfinite():
    states = np.array([[0.0, 0.1], [np.nan, 0.2]], dtype=np.float32)
    with pytest.raises(ValueError, match="row 1, column 0 is nan"):
        FlowClassificationVecEnv(states, np.array([0, 1]), 2)


def test_vec_env_rejects_bad_label():
    states = np.zeros((2, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="label of row 1 is 5"):
        FlowClassificationVecEnv(states, np.array([0, 5]), 2)


def test_single_env_passes_gymnasium_checker(real):
    from gymnasium.utils.env_checker import check_env

    states, labels = real
    check_env(FlowClassificationEnv(states, labels, 4), skip_render_check=True)


def test_single_env_passes_sb3_checker(real):
    from stable_baselines3.common.env_checker import check_env

    states, labels = real
    check_env(FlowClassificationEnv(states, labels, 4), warn=True)


def test_out_of_range_case_stays_in_space(cases_dir: Path):
    from gymnasium.utils.env_checker import check_env

    columns = [c for c in FEATURE_COLUMNS if c not in LEAK_COLUMNS]
    train = pl.read_csv(cases_dir / "C09_out_of_range" / "train.csv", columns=columns).to_numpy()
    test = pl.read_csv(cases_dir / "C09_out_of_range" / "test.csv", columns=columns).to_numpy()
    low, high = train.min(0), train.max(0)
    scaled = ((test - low) / np.where(high > low, high - low, 1.0)).astype(np.float32)
    outside = int(((scaled < 0) | (scaled > 1)).sum())
    env = FlowClassificationEnv(scaled, np.zeros(len(scaled), dtype=np.int64), 2, low=0.0, high=1.0)
    assert outside > 0
    assert env.vector_env.clipped_cells == outside
    check_env(env, skip_render_check=True)
    observation, _ = env.reset(seed=0)
    assert observation.dtype == np.float32
    assert env.observation_space.contains(observation)


@pytest.mark.slow
def test_sb3_ppo_beats_chance(real):
    from stable_baselines3 import PPO

    states, labels = real
    env = FlowClassificationEnv(states, labels, 4)
    model = PPO("MlpPolicy", env, n_steps=256, batch_size=64, learning_rate=3e-3, seed=0, device="cpu")
    model.learn(total_timesteps=3072)
    predicted, _ = model.predict(states, deterministic=True)
    per_class_recall = [np.mean(predicted[labels == c] == c) for c in range(4)]
    # Chance is 0.25 per class under class-balanced rewards.
    assert np.mean(per_class_recall) > 0.6
