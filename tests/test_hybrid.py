"""The hybrid head: DQN Q-values as extra PPO observations, persistence, export and the head variants."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from hclr_ids.config import DQNConfig, PPOConfig, RLConfig
from hclr_ids.rl.env import FlowClassificationEnv, class_reward_weights
from hclr_ids.rl.hybrid import (
    HybridHead,
    QValueObservationWrapper,
    fit_temperature,
    head_from_state,
    load_head,
    q_value_bound,
    save_head,
    train_head,
    train_hybrid,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def real(rl_real_states: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return rl_real_states


def _small_config(head: str = "hybrid") -> RLConfig:
    return RLConfig(
        head=head,  # type: ignore[arg-type]
        dqn=DQNConfig(num_envs=256, total_steps=100, batch_size=256, buffer_size=20_000, gradient_steps_per_step=2),
        ppo=PPOConfig(num_envs=256, rollout_steps=4, num_minibatches=4, total_iterations=25),
    )


@pytest.fixture(scope="module")
def trained(real) -> tuple[HybridHead, dict[str, list[float]]]:
    states, labels = real
    every_tenth = np.arange(len(labels)) % 10 == 0
    return train_hybrid(
        states[~every_tenth], labels[~every_tenth], 4, _small_config(), seed=0,
        val_states=states[every_tenth], val_labels=labels[every_tenth],
    )


def test_q_value_bound_hand_value():
    assert q_value_bound(torch.tensor([0.5, 2.0]), 0.9, 3) == pytest.approx(2.0 * (1 + 0.9 + 0.81))


def test_augmented_space(trained, real):
    head, _ = trained
    space = head.ppo.transform.observation_space
    every_tenth = np.arange(len(real[1])) % 10 == 0
    # With one flow per episode the bound is the largest class weight of the training labels.
    largest_weight = float(class_reward_weights(real[1][~every_tenth], 4, "sqrt").max())
    assert space.shape == (16 + 4,)
    assert space.dtype == np.float32
    np.testing.assert_array_equal(space.low[:16], -1.0)
    np.testing.assert_array_equal(space.high[:16], 1.0)
    np.testing.assert_allclose(space.low[16:], -largest_weight, rtol=1e-6)
    np.testing.assert_allclose(space.high[16:], largest_weight, rtol=1e-6)


def test_augmented_observations_in_space(trained, real):
    head, _ = trained
    transform = head.ppo.transform
    with torch.no_grad():
        observations = transform(torch.as_tensor(real[0][:500])).numpy()
    assert transform.observation_space.contains(observations[0])
    assert all(transform.observation_space.contains(row) for row in observations[:50])


def test_wrapper_passes_checkers(trained, real):
    from gymnasium.utils.env_checker import check_env as gymnasium_check
    from stable_baselines3.common.env_checker import check_env as sb3_check

    head, _ = trained
    states, labels = real
    wrapped = QValueObservationWrapper(FlowClassificationEnv(states, labels, 4), head.ppo.transform)
    gymnasium_check(wrapped, skip_render_check=True)
    sb3_check(wrapped, warn=True)


def test_hybrid_learns_real_states(trained):
    _, history = trained
    # Chance accuracy under the natural shares (0.61 / 0.25 / 0.04 / 0.10) is at most 0.61.
    assert history["val/accuracy"][0] > 0.85
    assert history["val/macro_f1"][0] > 0.75


def test_history_has_both_stages(trained):
    _, history = trained
    assert {"dqn_step", "rl/dqn_loss", "step", "rl/ppo_reward", "val/dqn_accuracy", "val/accuracy"} <= set(history)


def test_probabilities_are_softmax(trained, real):
    head, _ = trained
    probabilities = head.predict_proba(real[0][:100])
    expected = torch.softmax(head.logits(real[0][:100]), dim=1).numpy()
    np.testing.assert_allclose(probabilities, expected, rtol=1e-6)
    np.testing.assert_allclose(probabilities.sum(1), 1.0, rtol=1e-5)


def test_state_round_trip(trained, real):
    head, _ = trained
    restored = head_from_state(head.metadata(), head.state_tensors())
    np.testing.assert_array_equal(restored.predict_proba(real[0][:200]), head.predict_proba(real[0][:200]))


def test_file_round_trip(trained, real, tmp_path):
    head, _ = trained
    save_head(head, tmp_path / "head.safetensors")
    restored = load_head(tmp_path / "head.safetensors")
    assert isinstance(restored, HybridHead)
    np.testing.assert_array_equal(restored.predict_proba(real[0][:200]), head.predict_proba(real[0][:200]))


def test_onnx_export_matches(trained, real, tmp_path):
    import onnxruntime

    head, _ = trained
    module = head.torch_module()
    path = tmp_path / "head.onnx"
    torch.onnx.export(
        module, (torch.as_tensor(real[0][:4]),), str(path), dynamo=False,
        input_names=["states"], output_names=["probabilities"], dynamic_axes={"states": {0: "n"}},
    )
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_probabilities,) = session.run(None, {"states": real[0][:300]})
    np.testing.assert_allclose(onnx_probabilities, head.predict_proba(real[0][:300]), rtol=1e-4, atol=1e-5)


def test_dqn_variant_fits_temperature(real):
    states, labels = real
    head, history = train_head(states, labels, 4, _small_config("dqn"), seed=0, val_states=states[::7],
                               val_labels=labels[::7])
    assert head.temperature == history["val/temperature"][0]
    assert head.temperature > 0
    assert head.predict_proba(states[:10]).shape == (10, 4)


def test_ppo_variant_round_trip(real):
    states, labels = real
    config = _small_config("ppo")
    config.ppo.total_iterations = 2
    head, _ = train_head(states, labels, 4, config, seed=0)
    restored = head_from_state(head.metadata(), head.state_tensors())
    np.testing.assert_array_equal(restored.predict_proba(states[:100]), head.predict_proba(states[:100]))


def test_softmax_head_rejected(real):
    with pytest.raises(ValueError, match="not a reinforcement-learning head"):
        train_head(real[0], real[1], 4, _small_config("softmax"), seed=0)


def test_fit_temperature_recovers_scale():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(20_000, 5, generator=generator) * 2.0
    labels = torch.multinomial(torch.softmax(logits, dim=1), 1, generator=generator).squeeze(1)
    # Scores three times the true logits are best calibrated at temperature 3.
    assert fit_temperature(logits * 3.0, labels) == pytest.approx(3.0, rel=0.05)
