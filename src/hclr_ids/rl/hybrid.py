"""The HCLR-IDS decision maker: a DQN whose Q-values augment the observation of a PPO policy.

Training runs in two stages on the same frozen embeddings. The DQN learns first. Its network is then frozen
and the PPO actor-critic observes ``concat(embedding, clip(Q(embedding), -q_bound, q_bound))``, and that
policy is the final classifier. ``q_bound`` is the largest absolute return an episode can earn, so the clip
only removes estimation overshoot and the augmented observation space is a bounded Box.

DQN-only and PPO-only heads share the ``predict_proba`` / ``predict`` / persistence interface.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch
from torch import nn

from hclr_ids.config import RLConfig
from hclr_ids.rl.dqn import DQNHead, QNetwork, train_dqn
from hclr_ids.rl.env import (
    ArrayLike,
    FlowClassificationVecEnv,
    ProgressCallback,
    class_reward_weights,
    validate_states_labels,
)
from hclr_ids.rl.ppo import PPOHead, train_ppo

logger = logging.getLogger(__name__)


def q_value_bound(class_weights: torch.Tensor, gamma: float, episode_length: int) -> float:
    """Return the largest absolute discounted return of an episode: ``max(w) * sum_{k<L} gamma^k``."""
    return float(class_weights.max()) * sum(gamma**k for k in range(episode_length))


class QValueObservation(nn.Module):
    """Frozen Q-network that appends clipped Q-values to each state: (n, d) to (n, d + n_classes)."""

    def __init__(self, q_network: QNetwork, state_low: torch.Tensor, state_high: torch.Tensor, q_bound: float) -> None:
        super().__init__()
        self.q_network = copy.deepcopy(q_network).eval()
        for parameter in self.q_network.parameters():
            parameter.requires_grad_(False)
        self.register_buffer("state_low", state_low.clone())
        self.register_buffer("state_high", state_high.clone())
        self.q_bound = float(q_bound)

    @property
    def n_classes(self) -> int:
        return int(self.q_network.net[-1].out_features)

    @property
    def observation_space(self) -> gymnasium.spaces.Box:
        """The augmented space: the state box, then ``[-q_bound, q_bound]`` for each Q-value."""
        q_low = np.full(self.n_classes, -self.q_bound, dtype=np.float32)
        low = np.concatenate([self.state_low.numpy(), q_low])
        high = np.concatenate([self.state_high.numpy(), -q_low])
        return gymnasium.spaces.Box(low, high, low.shape, np.float32)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        q_values = torch.clamp(self.q_network(states), -self.q_bound, self.q_bound)
        return torch.cat([states, q_values], dim=1)


class QValueObservationWrapper(gymnasium.ObservationWrapper):
    """Gymnasium wrapper that shows a single-copy environment's observations with the Q-values appended."""

    def __init__(self, env: gymnasium.Env, transform: QValueObservation) -> None:
        super().__init__(env)
        self.transform = transform
        self.observation_space = transform.observation_space

    def observation(self, observation: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            augmented = self.transform(torch.as_tensor(observation, dtype=torch.float32)[None])
        return augmented[0].numpy()


def fit_temperature(scores: ArrayLike, labels: ArrayLike) -> float:
    """Return the temperature T > 0 that minimises the log loss of ``softmax(scores / T)`` on ``labels``."""
    scores_t = torch.as_tensor(scores, dtype=torch.float32)
    labels_t = torch.as_tensor(labels, dtype=torch.int64)
    log_temperature = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_temperature], lr=0.5, max_iter=100)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(scores_t / log_temperature.exp(), labels_t)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_temperature.detach().exp())


@dataclass
class HybridHead:
    """The frozen DQN and the PPO policy that observes the states with the DQN's Q-values appended."""

    dqn: DQNHead
    ppo: PPOHead

    @property
    def n_classes(self) -> int:
        return self.ppo.n_classes

    def logits(self, states: ArrayLike) -> torch.Tensor:
        """Return the policy logits of ``states`` (n, d), float32 (n, n_classes)."""
        return self.ppo.logits(states)

    def predict_proba(self, states: ArrayLike) -> np.ndarray:
        """Return the softmax of the policy logits, float32 (n, n_classes)."""
        return self.ppo.predict_proba(states)

    def predict(self, states: ArrayLike) -> np.ndarray:
        """Return the most probable class of each state, int64 (n,)."""
        return self.ppo.predict(states)

    def torch_module(self) -> nn.Module:
        """Return a module from states (n, d) to probabilities (n, n_classes), made of ONNX-exportable ops."""
        return self.ppo.torch_module()

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"dqn.{k}": v for k, v in self.dqn.state_tensors().items()}
        tensors.update({f"ppo.{k}": v for k, v in self.ppo.state_tensors().items()})
        return tensors

    def metadata(self) -> dict[str, Any]:
        if not isinstance(self.ppo.transform, QValueObservation):
            raise TypeError("a hybrid head's policy must observe through a QValueObservation")
        return {"head": "hybrid", "q_bound": self.ppo.transform.q_bound, "dqn": self.dqn.metadata(),
                "ppo": self.ppo.metadata()}

    @classmethod
    def from_state(cls, metadata: dict[str, Any], tensors: dict[str, torch.Tensor]) -> HybridHead:
        dqn = DQNHead.from_state(metadata["dqn"], _strip(tensors, "dqn."))
        transform = QValueObservation(dqn.q_network, dqn.obs_low, dqn.obs_high, float(metadata["q_bound"]))
        ppo = PPOHead.from_state(metadata["ppo"], _strip(tensors, "ppo."), transform)
        return cls(dqn, ppo)


RLHead = DQNHead | PPOHead | HybridHead


def _strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def head_from_state(metadata: dict[str, Any], tensors: dict[str, torch.Tensor]) -> RLHead:
    """Rebuild a head saved with ``state_tensors()`` and ``metadata()``."""
    kinds: dict[str, Any] = {"dqn": DQNHead, "ppo": PPOHead, "hybrid": HybridHead}
    kind = metadata.get("head")
    if kind not in kinds:
        raise ValueError(f"unknown decision head {kind!r} in metadata; expected one of {sorted(kinds)}")
    return kinds[kind].from_state(metadata, tensors)


def save_head(head: RLHead, path: str | Path) -> None:
    """Write a head to one safetensors file; its metadata is stored as JSON under the ``hclr_ids`` key."""
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in head.state_tensors().items()}
    save_file(tensors, str(path), metadata={"hclr_ids": json.dumps(head.metadata())})


def load_head(path: str | Path) -> RLHead:
    """Read a head written by ``save_head``."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata() or {}
        if "hclr_ids" not in header:
            raise ValueError(f"{path}: no 'hclr_ids' metadata; the file was not written by save_head")
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    return head_from_state(json.loads(header["hclr_ids"]), tensors)


def _make_env(
    states: torch.Tensor, labels: torch.Tensor, n_classes: int, rl_config: RLConfig, num_envs: int,
    class_weights: torch.Tensor,
) -> FlowClassificationVecEnv:
    return FlowClassificationVecEnv(
        states, labels, n_classes, num_envs=num_envs, episode_length=rl_config.episode_length,
        sampling=rl_config.sampling, class_weights=class_weights,
    )


def _record_validation(
    history: dict[str, list[float]], prefix: str, head: RLHead, val_states: ArrayLike | None,
    val_labels: ArrayLike | None,
) -> None:
    if val_states is None or val_labels is None:
        return
    from sklearn.metrics import accuracy_score, f1_score

    predicted = head.predict(val_states)
    truth = np.asarray(val_labels)
    history[f"{prefix}accuracy"] = [float(accuracy_score(truth, predicted))]
    history[f"{prefix}macro_f1"] = [float(f1_score(truth, predicted, average="macro"))]
    logger.info("%saccuracy %.4f, macro-F1 %.4f", prefix, history[f"{prefix}accuracy"][0],
                history[f"{prefix}macro_f1"][0])


def _prepare(
    states: ArrayLike, labels: ArrayLike, n_classes: int, rl_config: RLConfig, val_states: ArrayLike | None,
    val_labels: ArrayLike | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    states_t, labels_t = validate_states_labels(states, labels, n_classes)
    if (val_states is None) != (val_labels is None):
        raise ValueError("pass both val_states and val_labels, or neither")
    if val_states is not None:
        val_t, _ = validate_states_labels(val_states, val_labels, n_classes, name="val_states")
        if val_t.shape[1] != states_t.shape[1]:
            raise ValueError(f"val_states has {val_t.shape[1]} columns but states have {states_t.shape[1]}")
    weights = class_reward_weights(labels_t, n_classes, rl_config.reward_weighting)
    return states_t, labels_t, weights


def train_dqn_head(
    states: ArrayLike, labels: ArrayLike, n_classes: int, rl_config: RLConfig, *, seed: int,
    val_states: ArrayLike | None = None, val_labels: ArrayLike | None = None, time_budget_s: float = 0.0,
    progress: ProgressCallback | None = None,
) -> tuple[DQNHead, dict[str, list[float]]]:
    """Train a DQN-only head; with validation data its softmax temperature is fitted there by log loss."""
    states_t, labels_t, weights = _prepare(states, labels, n_classes, rl_config, val_states, val_labels)
    env = _make_env(states_t, labels_t, n_classes, rl_config, rl_config.dqn.num_envs, weights)
    head, history = train_dqn(env, rl_config.dqn, seed=seed, time_budget_s=time_budget_s, progress=progress)
    if val_states is not None and val_labels is not None:
        head.temperature = fit_temperature(head.q_values(val_states), val_labels)
        history["val/temperature"] = [head.temperature]
    _record_validation(history, "val/", head, val_states, val_labels)
    return head, history


def train_ppo_head(
    states: ArrayLike, labels: ArrayLike, n_classes: int, rl_config: RLConfig, *, seed: int,
    val_states: ArrayLike | None = None, val_labels: ArrayLike | None = None, time_budget_s: float = 0.0,
    progress: ProgressCallback | None = None,
) -> tuple[PPOHead, dict[str, list[float]]]:
    """Train a PPO-only head on the states themselves."""
    states_t, labels_t, weights = _prepare(states, labels, n_classes, rl_config, val_states, val_labels)
    env = _make_env(states_t, labels_t, n_classes, rl_config, rl_config.ppo.num_envs, weights)
    head, history = train_ppo(env, rl_config.ppo, seed=seed, time_budget_s=time_budget_s, progress=progress)
    _record_validation(history, "val/", head, val_states, val_labels)
    return head, history


def train_hybrid(
    states: ArrayLike, labels: ArrayLike, n_classes: int, rl_config: RLConfig, *, seed: int,
    val_states: ArrayLike | None = None, val_labels: ArrayLike | None = None, time_budget_s: float = 0.0,
    progress: ProgressCallback | None = None,
) -> tuple[HybridHead, dict[str, list[float]]]:
    """Train the DQN, freeze it, then train the PPO policy on the states with the Q-values appended.

    ``states`` are float32 (n, d) embeddings and ``labels`` int64 (n,) class indices of the training split.
    The DQN may use half of ``time_budget_s`` (0 means no limit) and PPO the rest. The history merges both
    stages' lists (``step`` of the DQN stage is kept as ``dqn_step``) and, with validation data, adds
    ``val/dqn_accuracy``, ``val/dqn_macro_f1``, ``val/accuracy`` and ``val/macro_f1``.
    """
    start = time.perf_counter()
    states_t, labels_t, weights = _prepare(states, labels, n_classes, rl_config, val_states, val_labels)

    dqn_env = _make_env(states_t, labels_t, n_classes, rl_config, rl_config.dqn.num_envs, weights)
    dqn_budget = time_budget_s / 2 if time_budget_s > 0 else 0.0
    dqn_head, dqn_history = train_dqn(dqn_env, rl_config.dqn, seed=seed, time_budget_s=dqn_budget, progress=progress)
    _record_validation(dqn_history, "val/dqn_", dqn_head, val_states, val_labels)

    q_bound = q_value_bound(weights, rl_config.dqn.gamma, rl_config.episode_length)
    transform = QValueObservation(dqn_head.q_network, dqn_head.obs_low, dqn_head.obs_high, q_bound)
    ppo_env = _make_env(states_t, labels_t, n_classes, rl_config, rl_config.ppo.num_envs, weights)
    ppo_budget = max(time_budget_s - (time.perf_counter() - start), 1e-3) if time_budget_s > 0 else 0.0
    ppo_head, ppo_history = train_ppo(
        ppo_env, rl_config.ppo, seed=seed + 1, obs_transform=transform, time_budget_s=ppo_budget, progress=progress,
    )
    head = HybridHead(dqn_head, ppo_head)

    history = {("dqn_step" if key == "step" else key): values for key, values in dqn_history.items()}
    history["rl/dqn_flows_per_s"] = history.pop("rl/flows_per_s")
    history.update(ppo_history)
    _record_validation(history, "val/", head, val_states, val_labels)
    logger.info("hybrid head trained in %.1f s", time.perf_counter() - start)
    return head, history


def train_head(
    states: ArrayLike, labels: ArrayLike, n_classes: int, rl_config: RLConfig, *, seed: int,
    val_states: ArrayLike | None = None, val_labels: ArrayLike | None = None, time_budget_s: float = 0.0,
    progress: ProgressCallback | None = None,
) -> tuple[RLHead, dict[str, list[float]]]:
    """Train the head named by ``rl_config.head``: ``dqn``, ``ppo`` or ``hybrid``."""
    trainers = {"dqn": train_dqn_head, "ppo": train_ppo_head, "hybrid": train_hybrid}
    if rl_config.head not in trainers:
        raise ValueError(
            f"rl.head={rl_config.head!r} is not a reinforcement-learning head; expected one of {sorted(trainers)}"
        )
    return trainers[rl_config.head](
        states, labels, n_classes, rl_config, seed=seed, val_states=val_states, val_labels=val_labels,
        time_budget_s=time_budget_s, progress=progress,
    )


__all__ = [
    "HybridHead", "QValueObservation", "QValueObservationWrapper", "RLHead", "fit_temperature",
    "head_from_state", "load_head", "q_value_bound", "save_head", "train_dqn_head", "train_head", "train_hybrid",
    "train_ppo_head",
]
