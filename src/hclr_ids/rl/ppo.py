"""Proximal policy optimisation decision head on frozen flow embeddings.

The update follows CleanRL's ``ppo.py``: rollouts of ``rollout_steps`` x ``num_envs`` transitions, GAE
advantages, several epochs of shuffled minibatches, per-minibatch advantage normalisation, the clipped
surrogate objective, a value loss, an entropy bonus and gradient-norm clipping.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

import gymnasium
import numpy as np
import torch
from torch import nn

from hclr_ids.config import PPOConfig
from hclr_ids.rl.dqn import as_state_tensor, box_bounds
from hclr_ids.rl.env import ArrayLike, FlowClassificationVecEnv, ProgressCallback, head_state_tensors

logger = logging.getLogger(__name__)


class ObservationTransform(Protocol):
    """A ``torch.nn.Module`` from environment states (n, d) to agent observations inside ``observation_space``."""

    observation_space: gymnasium.spaces.Box

    def __call__(self, states: torch.Tensor) -> torch.Tensor: ...


def _layer(n_in: int, n_out: int, std: float) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    nn.init.orthogonal_(layer.weight, std)
    nn.init.zeros_(layer.bias)
    return layer


class ActorCritic(nn.Module):
    """Separate tanh MLPs for the policy logits and the state value, with CleanRL's orthogonal init."""

    def __init__(self, d_in: int, n_classes: int, hidden: int) -> None:
        super().__init__()
        self.actor = nn.Sequential(
            _layer(d_in, hidden, math.sqrt(2)), nn.Tanh(),
            _layer(hidden, hidden, math.sqrt(2)), nn.Tanh(),
            _layer(hidden, n_classes, 0.01),
        )
        self.critic = nn.Sequential(
            _layer(d_in, hidden, math.sqrt(2)), nn.Tanh(),
            _layer(hidden, hidden, math.sqrt(2)), nn.Tanh(),
            _layer(hidden, 1, 1.0),
        )

    def forward(self, observations: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return logits (n, n_classes) and values (n,)."""
        return self.actor(observations), self.critic(observations).squeeze(-1)


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    next_value: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return generalised advantage estimates and returns (advantages + values), both (T, N).

    ``rewards``, ``values`` and ``dones`` have shape (T, N) for T steps of N copies; ``dones[t]`` is 1 where
    the transition at step t ended its episode, so neither the value nor the advantage of step t + 1 flows
    back into step t. ``next_value`` (N,) is the value of the observation after the last step.
    """
    steps = rewards.shape[0]
    not_done = 1.0 - dones.to(rewards.dtype)
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(next_value)
    for t in reversed(range(steps)):
        following_value = next_value if t == steps - 1 else values[t + 1]
        delta = rewards[t] + gamma * not_done[t] * following_value - values[t]
        running = delta + gamma * lam * not_done[t] * running
        advantages[t] = running
    return advantages, advantages + values


def clipped_surrogate_loss(
    new_logprob: torch.Tensor, old_logprob: torch.Tensor, advantages: torch.Tensor, clip_coef: float
) -> torch.Tensor:
    """Return PPO's policy loss ``mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)))``."""
    ratio = torch.exp(new_logprob - old_logprob)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_coef, 1.0 + clip_coef)
    return torch.max(unclipped, clipped).mean()


def value_loss(new_values: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """Return ``0.5 * mean((V(s) - return)^2)``."""
    return 0.5 * ((new_values - returns) ** 2).mean()


class _PolicyProbabilities(nn.Module):
    """States (n, d) to policy probabilities: clamp into the box, transform, actor, softmax."""

    def __init__(self, actor: nn.Module, low: torch.Tensor, high: torch.Tensor, transform: nn.Module | None) -> None:
        super().__init__()
        self.actor = actor
        self.transform = transform if transform is not None else nn.Identity()
        self.register_buffer("low", low.clone())
        self.register_buffer("high", high.clone())

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        clamped = torch.minimum(torch.maximum(states, self.low), self.high)
        return torch.softmax(self.actor(self.transform(clamped)), dim=1)


@dataclass
class PPOHead:
    """A trained actor-critic with the observation box of its input states and an optional transform.

    ``obs_low`` and ``obs_high`` bound the raw states; ``transform`` (if any) maps the clamped states to the
    observations the actor was trained on.
    """

    actor_critic: ActorCritic
    obs_low: torch.Tensor
    obs_high: torch.Tensor
    hidden_units: int
    transform: nn.Module | None = None

    @property
    def state_dim(self) -> int:
        return int(self.obs_low.shape[0])

    @property
    def observation_dim(self) -> int:
        return int(self.actor_critic.actor[0].in_features)

    @property
    def n_classes(self) -> int:
        return int(self.actor_critic.actor[-1].out_features)

    def _observations(self, states: ArrayLike) -> torch.Tensor:
        clamped = torch.clamp(as_state_tensor(states, self.state_dim), self.obs_low, self.obs_high)
        return clamped if self.transform is None else self.transform(clamped)

    def logits(self, states: ArrayLike) -> torch.Tensor:
        """Return the policy logits of ``states`` (n, d) as float32 (n, n_classes)."""
        self.actor_critic.eval()
        with torch.no_grad():
            return self.actor_critic.actor(self._observations(states))

    def values(self, states: ArrayLike) -> torch.Tensor:
        """Return the critic's state values, float32 (n,)."""
        self.actor_critic.eval()
        with torch.no_grad():
            return self.actor_critic.critic(self._observations(states)).squeeze(-1)

    def predict_proba(self, states: ArrayLike) -> np.ndarray:
        """Return the policy's action probabilities, float32 (n, n_classes)."""
        return torch.softmax(self.logits(states), dim=1).numpy()

    def predict(self, states: ArrayLike) -> np.ndarray:
        """Return the most probable class of each state, int64 (n,)."""
        return self.logits(states).argmax(dim=1).numpy()

    def torch_module(self) -> nn.Module:
        """Return a module from states (n, d) to probabilities (n, n_classes), made of ONNX-exportable ops."""
        transform = copy.deepcopy(self.transform) if self.transform is not None else None
        return _PolicyProbabilities(copy.deepcopy(self.actor_critic.actor), self.obs_low, self.obs_high, transform).eval()

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Return the actor-critic weights and the box; a transform is saved by the head that owns it."""
        return head_state_tensors("actor_critic", self.actor_critic, self.obs_low, self.obs_high)

    def metadata(self) -> dict[str, Any]:
        return {
            "head": "ppo", "state_dim": self.state_dim, "observation_dim": self.observation_dim,
            "n_classes": self.n_classes, "hidden_units": self.hidden_units,
        }

    @classmethod
    def from_state(
        cls, metadata: dict[str, Any], tensors: dict[str, torch.Tensor], transform: nn.Module | None = None
    ) -> PPOHead:
        network = ActorCritic(int(metadata["observation_dim"]), int(metadata["n_classes"]), int(metadata["hidden_units"]))
        prefix = "actor_critic."
        network.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        network.eval()
        return cls(network, tensors["obs_low"].clone(), tensors["obs_high"].clone(), int(metadata["hidden_units"]),
                   transform)


def _sample_actions(logits: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    log_probs = torch.log_softmax(logits, dim=1)
    actions = torch.multinomial(log_probs.exp(), 1, generator=generator).squeeze(1)
    return actions, log_probs.gather(1, actions[:, None]).squeeze(1)


def train_ppo(
    env: FlowClassificationVecEnv,
    config: PPOConfig,
    *,
    seed: int,
    obs_transform: ObservationTransform | None = None,
    time_budget_s: float = 0.0,
    progress: ProgressCallback | None = None,
) -> tuple[PPOHead, dict[str, list[float]]]:
    """Train an actor-critic on ``env`` for ``config.total_iterations`` rollouts.

    ``obs_transform`` maps the environment's states to the agent's observations; the actor's input size is
    the width of its ``observation_space``. Stops early once ``time_budget_s`` seconds have passed (0 means no
    limit). Returns the head and per-iteration lists under ``step`` (flows seen), ``rl/ppo_reward``,
    ``rl/ppo_policy_loss``, ``rl/ppo_value_loss``, ``rl/ppo_entropy``, ``rl/ppo_approx_kl``,
    ``rl/ppo_clipfrac`` and ``rl/flows_per_s``.
    """
    steps, num_envs = config.rollout_steps, env.num_envs
    batch_size = steps * num_envs
    if config.num_minibatches < 1 or batch_size % config.num_minibatches:
        raise ValueError(
            f"num_minibatches={config.num_minibatches} must divide rollout_steps * num_envs = {batch_size}"
        )
    minibatch_size = batch_size // config.num_minibatches
    if obs_transform is not None and not isinstance(obs_transform, nn.Module):
        raise TypeError(f"obs_transform must be a torch.nn.Module so the head can keep it, got {type(obs_transform)}")
    transform = obs_transform if obs_transform is not None else (lambda states: states)
    obs_dim = obs_transform.observation_space.shape[0] if obs_transform is not None else env.state_dim

    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        agent = ActorCritic(obs_dim, env.n_classes, config.hidden_units)
    optimizer = torch.optim.Adam(agent.parameters(), lr=config.learning_rate, eps=1e-5)

    observations = torch.zeros(steps, num_envs, obs_dim)
    actions = torch.zeros(steps, num_envs, dtype=torch.int64)
    logprobs = torch.zeros(steps, num_envs)
    rewards = torch.zeros(steps, num_envs)
    dones = torch.zeros(steps, num_envs)
    values = torch.zeros(steps, num_envs)
    history: dict[str, list[float]] = {key: [] for key in (
        "step", "rl/ppo_reward", "rl/ppo_policy_loss", "rl/ppo_value_loss", "rl/ppo_entropy",
        "rl/ppo_approx_kl", "rl/ppo_clipfrac", "rl/flows_per_s",
    )}

    start = time.perf_counter()
    with torch.no_grad():
        next_observations = transform(env.reset_tensors(seed))
    for iteration in range(config.total_iterations):
        if config.anneal_lr:
            optimizer.param_groups[0]["lr"] = config.learning_rate * (1.0 - iteration / config.total_iterations)

        # Rollout: act in every copy for `steps` steps with the current policy.
        with torch.no_grad():
            for t in range(steps):
                observations[t] = next_observations
                logits, values[t] = agent(next_observations)
                actions[t], logprobs[t] = _sample_actions(logits, generator)
                states, rewards[t], terminated, _ = env.step_tensors(actions[t])
                dones[t] = terminated.to(torch.float32)
                next_observations = transform(states)
            next_value = agent.critic(next_observations).squeeze(-1)
            advantages, returns = compute_gae(rewards, values, dones, next_value, config.gamma, config.gae_lambda)

        b_observations = observations.reshape(batch_size, obs_dim)
        b_actions = actions.reshape(-1)
        b_logprobs = logprobs.reshape(-1)
        b_advantages = advantages.reshape(-1)
        b_returns = returns.reshape(-1)

        # Update: several epochs of shuffled minibatches over the rollout.
        agent.train()
        stats = {"policy": [], "value": [], "entropy": [], "kl": [], "clipfrac": []}
        for _ in range(config.update_epochs):
            permutation = torch.randperm(batch_size, generator=generator)
            for first in range(0, batch_size, minibatch_size):
                mb = permutation[first:first + minibatch_size]
                logits, new_values = agent(b_observations[mb])
                log_probs = torch.log_softmax(logits, dim=1)
                new_logprob = log_probs.gather(1, b_actions[mb][:, None]).squeeze(1)
                entropy = -(log_probs.exp() * log_probs).sum(dim=1).mean()

                mb_advantages = b_advantages[mb]
                mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)
                policy_loss = clipped_surrogate_loss(new_logprob, b_logprobs[mb], mb_advantages, config.clip_coef)
                v_loss = value_loss(new_values, b_returns[mb])
                loss = policy_loss - config.entropy_coef * entropy + config.value_coef * v_loss

                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), config.max_grad_norm)
                optimizer.step()

                with torch.no_grad():
                    log_ratio = new_logprob - b_logprobs[mb]
                    ratio = log_ratio.exp()
                    stats["kl"].append(float(((ratio - 1) - log_ratio).mean()))
                    stats["clipfrac"].append(float(((ratio - 1.0).abs() > config.clip_coef).float().mean()))
                stats["policy"].append(float(policy_loss.detach()))
                stats["value"].append(float(v_loss.detach()))
                stats["entropy"].append(float(entropy.detach()))

        elapsed = time.perf_counter() - start
        flows = (iteration + 1) * batch_size
        metrics = {
            "rl/ppo_reward": float(rewards.mean()),
            "rl/ppo_policy_loss": float(np.mean(stats["policy"])),
            "rl/ppo_value_loss": float(np.mean(stats["value"])),
            "rl/ppo_entropy": float(np.mean(stats["entropy"])),
            "rl/ppo_approx_kl": float(np.mean(stats["kl"])),
            "rl/ppo_clipfrac": float(np.mean(stats["clipfrac"])),
            "rl/flows_per_s": flows / max(elapsed, 1e-9),
        }
        history["step"].append(flows)
        for key, value in metrics.items():
            history[key].append(value)
        if progress is not None:
            progress(flows, metrics)
        if time_budget_s > 0 and elapsed > time_budget_s:
            logger.info("PPO stopped by its time budget of %.1f s after %d of %d iterations", time_budget_s,
                        iteration + 1, config.total_iterations)
            break

    logger.info(
        "PPO trained: %d iterations, %.1f s, last mean reward %.3f",
        len(history["step"]), time.perf_counter() - start, history["rl/ppo_reward"][-1],
    )
    agent.eval()
    low, high = box_bounds(env.single_observation_space.low, env.single_observation_space.high)
    return PPOHead(agent, low, high, config.hidden_units, obs_transform), history
