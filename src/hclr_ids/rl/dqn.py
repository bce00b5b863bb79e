"""Deep Q-network decision head on frozen flow embeddings, trained on a vectorised environment.

The loop follows CleanRL's ``dqn.py``: epsilon-greedy acting in every copy of the environment, a circular
replay buffer, a target network copied from the online network at a fixed interval of gradient steps, and a
Huber or squared TD loss. Every step acts on all ``num_envs`` copies as one batch.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from hclr_ids.config import DQNConfig
from hclr_ids.rl.env import ArrayLike, FlowClassificationVecEnv, ProgressCallback, head_state_tensors

logger = logging.getLogger(__name__)


class QNetwork(nn.Module):
    """MLP from a state of size ``d`` to one Q-value per class."""

    def __init__(self, d: int, n_classes: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, n_classes),
        )

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.net(states)


def td_target(rewards: torch.Tensor, next_q_target: torch.Tensor, dones: torch.Tensor, gamma: float) -> torch.Tensor:
    """Return ``r + gamma * (1 - done) * max_a Q_target(s', a)``.

    ``rewards`` and ``dones`` have shape (n,); ``next_q_target`` contains the target network's Q-values of the
    next states, shape (n, n_classes).
    """
    return rewards + gamma * (1.0 - dones.to(rewards.dtype)) * next_q_target.max(dim=1).values


class ReplayBatch(NamedTuple):
    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_observations: torch.Tensor
    dones: torch.Tensor


class ReplayBuffer:
    """Circular buffer of transitions in preallocated tensors; the oldest are overwritten once full."""

    def __init__(self, capacity: int, d: int) -> None:
        if capacity < 1:
            raise ValueError(f"buffer_size must be at least 1, got {capacity}")
        self.capacity = capacity
        self.observations = torch.zeros(capacity, d)
        self.next_observations = torch.zeros(capacity, d)
        self.actions = torch.zeros(capacity, dtype=torch.int64)
        self.rewards = torch.zeros(capacity)
        self.dones = torch.zeros(capacity)
        self.position = 0
        self.size = 0

    def add(
        self, observations: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
        next_observations: torch.Tensor, dones: torch.Tensor,
    ) -> None:
        """Append a batch of n transitions; if n exceeds the capacity only the last ``capacity`` are kept."""
        n = observations.shape[0]
        keep = min(n, self.capacity)
        rows = (self.position + torch.arange(keep)) % self.capacity
        self.observations[rows] = observations[n - keep:]
        self.actions[rows] = actions[n - keep:]
        self.rewards[rows] = rewards[n - keep:]
        self.next_observations[rows] = next_observations[n - keep:]
        self.dones[rows] = dones[n - keep:].to(torch.float32)
        self.position = (self.position + keep) % self.capacity
        self.size = min(self.size + keep, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator) -> ReplayBatch:
        """Draw ``batch_size`` stored transitions uniformly, with replacement."""
        rows = torch.randint(self.size, (batch_size,), generator=generator)
        return ReplayBatch(
            self.observations[rows], self.actions[rows], self.rewards[rows],
            self.next_observations[rows], self.dones[rows],
        )


def box_bounds(low: ArrayLike, high: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(low, dtype=torch.float32).clone(), torch.as_tensor(high, dtype=torch.float32).clone()


def as_state_tensor(states: ArrayLike, d: int) -> torch.Tensor:
    """Return ``states`` as float32 (n, d), raising ValueError on another width."""
    states_t = torch.as_tensor(states, dtype=torch.float32)
    if states_t.ndim != 2 or states_t.shape[1] != d:
        raise ValueError(f"states: expected shape (n, {d}), got {tuple(states_t.shape)}")
    return states_t


class _ProbabilityModule(nn.Module):
    """States (n, d) to class probabilities: clamp into the observation box, then softmax(scores / T)."""

    def __init__(self, scorer: nn.Module, low: torch.Tensor, high: torch.Tensor, temperature: float) -> None:
        super().__init__()
        self.scorer = scorer
        self.register_buffer("low", low.clone())
        self.register_buffer("high", high.clone())
        self.temperature = float(temperature)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        clamped = torch.minimum(torch.maximum(states, self.low), self.high)
        return torch.softmax(self.scorer(clamped) / self.temperature, dim=1)


@dataclass
class DQNHead:
    """A trained Q-network with the observation box it was trained in.

    ``predict_proba`` returns ``softmax(Q / temperature)``. Q-values are expected returns, not logits, so these
    probabilities are a monotone score whose sharpness depends on the temperature. Fit the temperature on
    held-out data (``hybrid.fit_temperature``) when calibrated probabilities matter.
    """

    q_network: QNetwork
    obs_low: torch.Tensor
    obs_high: torch.Tensor
    hidden_units: int
    temperature: float = 1.0

    @property
    def state_dim(self) -> int:
        return int(self.obs_low.shape[0])

    @property
    def n_classes(self) -> int:
        return int(self.q_network.net[-1].out_features)

    def q_values(self, states: ArrayLike) -> torch.Tensor:
        """Return the Q-values of ``states`` (n, d) as float32 (n, n_classes), states clamped into the box."""
        states_t = as_state_tensor(states, self.state_dim)
        self.q_network.eval()
        with torch.no_grad():
            return self.q_network(torch.clamp(states_t, self.obs_low, self.obs_high))

    def predict(self, states: ArrayLike) -> np.ndarray:
        """Return the greedy class index of each state, int64 (n,)."""
        return self.q_values(states).argmax(dim=1).numpy()

    def predict_proba(self, states: ArrayLike) -> np.ndarray:
        """Return ``softmax(Q / temperature)``, float32 (n, n_classes)."""
        return torch.softmax(self.q_values(states) / self.temperature, dim=1).numpy()

    def torch_module(self) -> nn.Module:
        """Return a module from states (n, d) to probabilities (n, n_classes), made of ONNX-exportable ops."""
        module = _ProbabilityModule(copy.deepcopy(self.q_network), self.obs_low, self.obs_high, self.temperature)
        return module.eval()

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return head_state_tensors("q_network", self.q_network, self.obs_low, self.obs_high)

    def metadata(self) -> dict[str, Any]:
        return {
            "head": "dqn", "state_dim": self.state_dim, "n_classes": self.n_classes,
            "hidden_units": self.hidden_units, "temperature": self.temperature,
        }

    @classmethod
    def from_state(cls, metadata: dict[str, Any], tensors: dict[str, torch.Tensor]) -> DQNHead:
        network = QNetwork(int(metadata["state_dim"]), int(metadata["n_classes"]), int(metadata["hidden_units"]))
        prefix = "q_network."
        network.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        network.eval()
        return cls(
            network, tensors["obs_low"].clone(), tensors["obs_high"].clone(),
            int(metadata["hidden_units"]), float(metadata["temperature"]),
        )


def _td_loss(predicted: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    if loss == "huber":
        return F.smooth_l1_loss(predicted, target)
    return F.mse_loss(predicted, target)


def train_dqn(
    env: FlowClassificationVecEnv,
    config: DQNConfig,
    *,
    seed: int,
    time_budget_s: float = 0.0,
    progress: ProgressCallback | None = None,
) -> tuple[DQNHead, dict[str, list[float]]]:
    """Train a Q-network on ``env`` for ``config.total_steps`` vector steps (``num_envs`` flows each).

    ``env.num_envs`` sets the batch of copies; ``config.num_envs`` is used by callers that build the env.
    Stops early once ``time_budget_s`` seconds have passed (0 means no limit). Returns the head and a history
    of per-step lists under ``step`` (flows seen), ``rl/dqn_loss``, ``rl/dqn_reward`` (mean reward of the
    step), ``rl/epsilon`` and ``rl/flows_per_s``.
    """
    if config.loss not in ("huber", "mse"):
        raise ValueError(f"unknown DQN loss {config.loss!r}; expected 'huber' or 'mse'")
    if not 0.0 < config.epsilon_decay <= 1.0:
        raise ValueError(f"epsilon_decay must lie in (0, 1], got {config.epsilon_decay}")
    n_classes = env.n_classes
    num_envs = env.num_envs
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        q_network = QNetwork(env.state_dim, n_classes, config.hidden_units)
    target_network = copy.deepcopy(q_network)
    optimizer = torch.optim.Adam(q_network.parameters(), lr=config.learning_rate)
    buffer = ReplayBuffer(config.buffer_size, env.state_dim)
    history: dict[str, list[float]] = {
        "step": [], "rl/dqn_loss": [], "rl/dqn_reward": [], "rl/epsilon": [], "rl/flows_per_s": [],
    }
    learning_starts = max(config.batch_size, config.learning_starts)

    start = time.perf_counter()
    epsilon = config.epsilon_start
    gradient_steps = 0
    observations = env.reset_tensors(seed)
    for step in range(config.total_steps):
        # Act: greedy in every copy, replaced by a uniform random class with probability epsilon.
        with torch.no_grad():
            greedy = q_network(observations).argmax(dim=1)
        explore = torch.rand(num_envs, generator=generator) < epsilon
        random_actions = torch.randint(n_classes, (num_envs,), generator=generator)
        actions = torch.where(explore, random_actions, greedy)
        next_observations, rewards, terminated, _ = env.step_tensors(actions)
        buffer.add(observations, actions, rewards, next_observations, terminated)
        observations = next_observations

        # Learn: TD regression of Q(s, a) on r + gamma * max_a' Q_target(s', a').
        losses = []
        if buffer.size >= learning_starts:
            for _ in range(config.gradient_steps_per_step):
                batch = buffer.sample(config.batch_size, generator)
                with torch.no_grad():
                    target = td_target(batch.rewards, target_network(batch.next_observations), batch.dones, config.gamma)
                predicted = q_network(batch.observations).gather(1, batch.actions[:, None]).squeeze(1)
                loss = _td_loss(predicted, target, config.loss)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
                gradient_steps += 1
                if gradient_steps % config.target_sync_interval == 0:
                    target_network.load_state_dict(q_network.state_dict())

        epsilon = max(config.epsilon_end, epsilon * config.epsilon_decay)
        elapsed = time.perf_counter() - start
        flows = (step + 1) * num_envs
        metrics = {
            "rl/dqn_loss": float(np.mean(losses)) if losses else math.nan,
            "rl/dqn_reward": float(rewards.mean()),
            "rl/epsilon": epsilon,
            "rl/flows_per_s": flows / max(elapsed, 1e-9),
        }
        history["step"].append(flows)
        for key, value in metrics.items():
            history[key].append(value)
        if progress is not None:
            progress(flows, metrics)
        if time_budget_s > 0 and elapsed > time_budget_s:
            logger.info("DQN stopped by its time budget of %.1f s after %d of %d steps", time_budget_s, step + 1,
                        config.total_steps)
            break

    logger.info(
        "DQN trained: %d steps, %d gradient steps, %.1f s, last mean reward %.3f",
        len(history["step"]), gradient_steps, time.perf_counter() - start, history["rl/dqn_reward"][-1],
    )
    low, high = box_bounds(env.single_observation_space.low, env.single_observation_space.high)
    q_network.eval()
    return DQNHead(q_network, low, high, config.hidden_units, config.temperature), history
