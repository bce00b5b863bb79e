"""Flow classification as a reinforcement-learning environment.

Each step shows the agent one flow's embedding (the state), the agent picks a class index (the action) and
receives +1 when it matches the true class and -1 otherwise, optionally scaled by a weight of the true class.
The next flow is drawn independently of the action, so the discounted future return is the same for every
action and the greedy policy is a per-flow classifier whatever the discount factor. With the default episode
length of 1 the task is a contextual bandit: every transition is terminal, the bootstrap term of the TD target
and of GAE is masked out, and ``gamma`` has no effect at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector.vector_env import AutoresetMode

logger = logging.getLogger(__name__)

RewardWeighting = Literal["balanced", "sqrt", "none"]
Sampling = Literal["balanced", "stream"]
ArrayLike = np.ndarray | torch.Tensor

#: Called by the trainers with the global environment step and the latest metrics.
ProgressCallback = Callable[[int, dict[str, float]], None]


def reward(actions: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Return +1 for each action equal to its label and -1 otherwise, times ``class_weights[labels]``.

    ``actions`` and ``labels`` are integer tensors of shape (n,); ``class_weights`` has shape (n_classes,).
    The result is float32 of shape (n,).
    """
    signs = torch.where(actions == labels, 1.0, -1.0).to(torch.float32)
    if class_weights is None:
        return signs
    return signs * class_weights.to(signs.device, torch.float32)[labels]


def class_reward_weights(labels: ArrayLike, n_classes: int, mode: RewardWeighting) -> torch.Tensor:
    """Compute one reward weight per class from the class counts of ``labels``.

    ``balanced`` gives ``n / (n_classes * count)``, so each present class carries the same total weight.
    ``sqrt`` takes the square root of the balanced weights and rescales them to mean 1 over the samples.
    ``none`` gives ones. Classes absent from ``labels`` get weight 0 because they never earn a reward.
    Returns float32 of shape (n_classes,).
    """
    if mode not in ("balanced", "sqrt", "none"):
        raise ValueError(f"unknown reward weighting {mode!r}; expected 'balanced', 'sqrt' or 'none'")
    labels_t = torch.as_tensor(labels).to(torch.int64).reshape(-1)
    if mode == "none":
        return torch.ones(n_classes, dtype=torch.float32)
    counts = torch.bincount(labels_t, minlength=n_classes).to(torch.float64)
    n = float(labels_t.numel())
    present = counts > 0
    balanced = torch.zeros(n_classes, dtype=torch.float64)
    balanced[present] = n / (n_classes * counts[present])
    if mode == "balanced":
        return balanced.to(torch.float32)
    root = balanced.sqrt()
    mean_over_samples = (counts * root).sum() / n
    return (root / mean_over_samples).to(torch.float32)


def validate_states_labels(
    states: ArrayLike, labels: ArrayLike, n_classes: int, *, name: str = "states"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check shapes, finiteness and label range, and return float32 and int64 tensors.

    Raises ValueError naming the first offending row and column and its value.
    """
    states_t = torch.as_tensor(states)
    labels_t = torch.as_tensor(labels)
    if states_t.ndim != 2:
        raise ValueError(f"{name}: expected shape (n, d), got {tuple(states_t.shape)}")
    if labels_t.ndim != 1 or labels_t.shape[0] != states_t.shape[0]:
        raise ValueError(
            f"{name}: labels must have shape ({states_t.shape[0]},) to match the states, got {tuple(labels_t.shape)}"
        )
    if states_t.shape[0] == 0:
        raise ValueError(f"{name}: no rows; pass at least one state")
    if labels_t.is_floating_point():
        raise ValueError(f"{name}: labels must be integer class indices, got dtype {labels_t.dtype}")
    states_t = states_t.to(torch.float32)
    labels_t = labels_t.to(torch.int64)
    finite = torch.isfinite(states_t)
    if not bool(finite.all()):
        row, column = (int(v) for v in torch.nonzero(~finite)[0])
        raise ValueError(
            f"{name}: row {row}, column {column} is {float(states_t[row, column])}; "
            "states must be finite, so impute or drop such rows first"
        )
    out_of_range = (labels_t < 0) | (labels_t >= n_classes)
    if bool(out_of_range.any()):
        row = int(torch.nonzero(out_of_range)[0])
        raise ValueError(
            f"{name}: label of row {row} is {int(labels_t[row])}; expected a class index in [0, {n_classes - 1}]"
        )
    return states_t, labels_t


class FlowSampler:
    """Draws flows class-balanced or in stream order from a fixed table of states, as tensors.

    ``balanced`` draws a class uniformly among the classes present, then a flow uniformly within it.
    ``stream`` gives each of ``num_envs`` copies its own contiguous segment of the table and advances every copy
    by one flow per step, wrapping at the end. Seeding restarts the stream at the first flow of each segment.

    NOTE: balanced sampling already equalises the classes, so combining it with ``balanced`` or ``sqrt``
    reward weights (computed from the natural class counts) weights rare classes above common ones.
    """

    def __init__(self, labels: torch.Tensor, n_classes: int, num_envs: int, sampling: Sampling) -> None:
        if sampling not in ("balanced", "stream"):
            raise ValueError(f"unknown sampling {sampling!r}; expected 'balanced' or 'stream'")
        self.sampling = sampling
        self.num_envs = num_envs
        self.n_flows = int(labels.shape[0])
        self.order = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels, minlength=n_classes)
        starts = torch.cumsum(counts, 0) - counts
        present = counts > 0
        self.class_counts = counts[present]
        self.class_starts = starts[present]
        self.segment_offsets = torch.arange(num_envs, dtype=torch.int64) * max(1, self.n_flows // num_envs)
        self.stream_position = 0
        self.generator = torch.Generator()
        self.seeded = False

    def seed(self, seed: int) -> None:
        self.generator.manual_seed(seed)
        self.seeded = True
        self.stream_position = 0

    def draw(self, n: int) -> torch.Tensor:
        """Return ``n`` flow indices: one per copy when ``n == num_envs``."""
        if self.sampling == "balanced":
            classes = torch.randint(len(self.class_counts), (n,), generator=self.generator)
            within = (torch.rand(n, generator=self.generator, dtype=torch.float64) * self.class_counts[classes]).long()
            within = torch.minimum(within, self.class_counts[classes] - 1)
            return self.order[self.class_starts[classes] + within]
        if n == self.num_envs:
            indices = (self.segment_offsets + self.stream_position) % self.n_flows
            self.stream_position += 1
        else:
            indices = (torch.arange(n, dtype=torch.int64) + self.stream_position) % self.n_flows
            self.stream_position += n
        return indices


class FlowClassificationVecEnv(gymnasium.vector.VectorEnv):
    """``num_envs`` copies of the flow classification task, stepped as one batch.

    Observations are float32 of shape (num_envs, d) inside ``Box(low, high)``; states outside the box are
    clipped once at construction and counted in ``clipped_cells`` (per column in ``clipped_per_column``).
    Actions are class indices of shape (num_envs,). Every copy ends its episode after ``episode_length``
    flows, all copies at the same step, and resets in the same step (Gymnasium's same-step autoreset): the
    returned observation is the first flow of the next episode, and ``infos["final_obs"]`` repeats it because
    a terminal transition never bootstraps from its next observation. ``infos["label"]`` holds the true
    classes of the flows just classified.

    The trainers use the tensor methods ``reset_tensors``, ``step_tensors``, ``sample`` and ``rewards``,
    which skip the numpy conversion at the Gymnasium boundary.
    """

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(
        self,
        states: ArrayLike,
        labels: ArrayLike,
        n_classes: int,
        *,
        num_envs: int = 1,
        episode_length: int = 1,
        sampling: Sampling = "balanced",
        class_weights: ArrayLike | None = None,
        low: float | ArrayLike = -1.0,
        high: float | ArrayLike = 1.0,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be at least 1, got {num_envs}")
        if episode_length < 1:
            raise ValueError(f"episode_length must be at least 1, got {episode_length}")
        if n_classes < 2:
            raise ValueError(f"n_classes must be at least 2, got {n_classes}")
        states_t, labels_t = validate_states_labels(states, labels, n_classes)
        d = states_t.shape[1]

        low_t = torch.broadcast_to(torch.as_tensor(low, dtype=torch.float32), (d,)).clone()
        high_t = torch.broadcast_to(torch.as_tensor(high, dtype=torch.float32), (d,)).clone()
        if bool((low_t >= high_t).any()):
            raise ValueError(f"observation bounds must satisfy low < high in every column, got {low_t} and {high_t}")
        outside = (states_t < low_t) | (states_t > high_t)
        self.clipped_per_column = outside.sum(0)
        self.clipped_cells = int(self.clipped_per_column.sum())
        if self.clipped_cells:
            logger.warning(
                "clipped %d of %d state cells (%d rows) into the observation box [%s, %s]",
                self.clipped_cells, outside.numel(), int(outside.any(1).sum()), float(low_t.min()), float(high_t.max()),
            )
        self.states = torch.clamp(states_t, low_t, high_t)
        self.labels = labels_t
        self.n_classes = n_classes
        self.num_envs = num_envs
        self.episode_length = episode_length
        self.class_weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        if self.class_weights is not None and self.class_weights.shape != (n_classes,):
            raise ValueError(f"class_weights must have shape ({n_classes},), got {tuple(self.class_weights.shape)}")

        self.single_observation_space = spaces.Box(low_t.numpy(), high_t.numpy(), (d,), np.float32)
        self.single_action_space = spaces.Discrete(n_classes)
        self.observation_space = spaces.Box(
            np.broadcast_to(low_t.numpy(), (num_envs, d)), np.broadcast_to(high_t.numpy(), (num_envs, d)),
            (num_envs, d), np.float32,
        )
        self.action_space = spaces.MultiDiscrete(np.full(num_envs, n_classes, dtype=np.int64))

        self.sampler = FlowSampler(labels_t, n_classes, num_envs, sampling)
        self._flow_index = torch.zeros(num_envs, dtype=torch.int64)
        self._episode_step = 0
        self._needs_reset = True

    @property
    def state_dim(self) -> int:
        return int(self.states.shape[1])

    # Tensor fast path -------------------------------------------------------------------------------------

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` flows with the environment's sampling; return states (n, d) and labels (n,)."""
        indices = self.sampler.draw(n)
        return self.states[indices], self.labels[indices]

    def rewards(self, actions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Return the rewards of ``actions`` for flows of class ``labels`` (float32, shape (n,))."""
        return reward(actions, labels, self.class_weights)

    def reset_tensors(self, seed: int | None = None) -> torch.Tensor:
        """Start a new episode in every copy and return the first observations (num_envs, d)."""
        if seed is not None:
            self.sampler.seed(seed)
            self._np_random_seed = seed
        self._flow_index = self.sampler.draw(self.num_envs)
        self._episode_step = 0
        self._needs_reset = False
        return self.states[self._flow_index]

    def step_tensors(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Classify the current flows; return next observations, rewards, terminations and the true labels."""
        if self._needs_reset:
            raise RuntimeError("step called before reset; call reset() or reset_tensors() first")
        labels = self.labels[self._flow_index]
        rewards = self.rewards(actions.to(torch.int64), labels)
        self._episode_step += 1
        ended = self._episode_step >= self.episode_length
        if ended:
            self._episode_step = 0
        terminated = torch.full((self.num_envs,), ended, dtype=torch.bool)
        self._flow_index = self.sampler.draw(self.num_envs)
        return self.states[self._flow_index], rewards, terminated, labels

    # Gymnasium interface ----------------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        observations = self.reset_tensors(self._sampler_seed(seed))
        return observations.numpy().copy(), {}

    def _sampler_seed(self, seed: int | None) -> int | None:
        # An unseeded first reset draws the sampler seed from Gymnasium's own np_random.
        if seed is None and not self.sampler.seeded:
            return int(self.np_random.integers(2**31))
        return seed

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        actions_t = torch.as_tensor(np.asarray(actions, dtype=np.int64)).reshape(self.num_envs)
        if bool(((actions_t < 0) | (actions_t >= self.n_classes)).any()):
            raise ValueError(f"actions must be class indices in [0, {self.n_classes - 1}], got {actions_t.tolist()}")
        observations, rewards, terminated, labels = self.step_tensors(actions_t)
        obs = observations.numpy().copy()
        terminations = terminated.numpy().copy()
        infos: dict[str, Any] = {"label": labels.numpy().copy(), "_label": np.ones(self.num_envs, dtype=bool)}
        if terminations.any():
            final = np.empty(self.num_envs, dtype=object)
            final[:] = list(obs)
            infos["final_obs"] = final
            infos["_final_obs"] = terminations.copy()
            infos["final_info"] = {}
        truncations = np.zeros(self.num_envs, dtype=bool)
        return obs, rewards.numpy().astype(np.float32), terminations, truncations, infos


class FlowClassificationEnv(gymnasium.Env):
    """A single copy of the flow classification task, for Gymnasium's and Stable-Baselines3's env checkers.

    Observations are float32 vectors of shape (d,) inside ``Box(low, high)``, actions are ``Discrete(n_classes)``.
    After ``terminated`` the caller must call ``reset()``, as for any Gymnasium environment.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        states: ArrayLike,
        labels: ArrayLike,
        n_classes: int,
        *,
        episode_length: int = 1,
        sampling: Sampling = "balanced",
        class_weights: ArrayLike | None = None,
        low: float | ArrayLike = -1.0,
        high: float | ArrayLike = 1.0,
    ) -> None:
        self.vector_env = FlowClassificationVecEnv(
            states, labels, n_classes, num_envs=1, episode_length=episode_length, sampling=sampling,
            class_weights=class_weights, low=low, high=high,
        )
        self.observation_space = self.vector_env.single_observation_space
        self.action_space = self.vector_env.single_action_space

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is None and not self.vector_env.sampler.seeded:
            seed = int(self.np_random.integers(2**31))
        observation = self.vector_env.reset_tensors(seed)
        return observation[0].numpy().copy(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if not self.action_space.contains(action):
            raise ValueError(f"action must be a class index in [0, {self.vector_env.n_classes - 1}], got {action!r}")
        actions = torch.tensor([int(action)], dtype=torch.int64)
        observation, rewards, terminated, labels = self.vector_env.step_tensors(actions)
        info = {"label": int(labels[0])}
        return observation[0].numpy().copy(), float(rewards[0]), bool(terminated[0]), False, info


def head_state_tensors(
    prefix: str, module: torch.nn.Module, low: torch.Tensor, high: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Copy a head's network weights under ``prefix`` plus its observation box, for safetensors."""
    tensors = {f"{prefix}.{k}": v.detach().clone() for k, v in module.state_dict().items()}
    tensors["obs_low"] = low.clone()
    tensors["obs_high"] = high.clone()
    return tensors
