"""Ablation of HCLR-IDS: encoder architectures, decision heads, and a softmax control on the same embedding.

One CNN-LSTM encoder per seed serves the softmax, DQN, PPO, hybrid and control rows, so those rows differ only
in the decision head. The control is a linear softmax head trained on the frozen embedding for as many
gradient steps as the hybrid head took (DQN and PPO stages together). Comparing with it shows whether
reinforcement learning adds anything over plain supervised training of a head.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from hclr_ids.config import RunConfig, merge_overrides
from hclr_ids.experiments.common import (
    ExperimentConfig,
    RunSlot,
    Stopwatch,
    aggregate,
    describe_setup,
    evaluate,
    experiment_record,
    iterate_runs,
    known_validation,
    log_to_mlflow,
    per_class_f1_table,
    per_class_table,
    summary_table,
    write_plots,
    write_results,
)

logger = logging.getLogger(__name__)

CNN = "CNN only"
LSTM = "LSTM only"
SOFTMAX = "CNN-LSTM (softmax)"
DQN = "CNN-LSTM + DQN"
PPO = "CNN-LSTM + PPO"
HYBRID = "HCLR-IDS (CNN-LSTM + DQN + PPO)"
CONTROL = "CNN-LSTM + softmax control"
VARIANTS = (CNN, LSTM, SOFTMAX, DQN, PPO, HYBRID, CONTROL)
RL_VARIANTS = (DQN, PPO, HYBRID)


def dqn_gradient_steps(history: dict[str, list[float]], gradient_steps_per_step: int) -> int:
    """Count DQN gradient steps from its history: each step with a finite loss took ``gradient_steps_per_step``."""
    losses = np.asarray(history.get("rl/dqn_loss", []), dtype=np.float64)
    return int(np.isfinite(losses).sum()) * gradient_steps_per_step


def ppo_gradient_steps(history: dict[str, list[float]], update_epochs: int, num_minibatches: int) -> int:
    """Count PPO gradient steps: ``update_epochs * num_minibatches`` per completed rollout."""
    return len(history.get("rl/ppo_reward", [])) * update_epochs * num_minibatches


def train_softmax_control(
    train_states: np.ndarray, train_labels: np.ndarray, n_classes: int, *, gradient_steps: int,
    batch_size: int, learning_rate: float, class_weighting: str, seed: int,
) -> Any:
    """Train a linear softmax head on frozen embeddings with Adam for exactly ``gradient_steps`` minibatches.

    ``train_states`` has shape (n, d). Minibatches of ``batch_size`` rows are drawn uniformly with replacement,
    as the RL heads draw their transitions. The cross-entropy uses the encoder's class weighting.
    Returns the ``torch.nn.Linear`` head in eval mode.
    """
    import torch
    from torch import nn

    from hclr_ids.training import class_weights

    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(train_states.shape[1], n_classes)
    states = torch.from_numpy(np.ascontiguousarray(train_states, dtype=np.float32))
    labels = torch.from_numpy(np.asarray(train_labels, dtype=np.int64))
    weights = torch.from_numpy(class_weights(np.asarray(train_labels), n_classes, class_weighting))
    loss_fn = nn.CrossEntropyLoss(weight=weights)
    optimizer = torch.optim.Adam(head.parameters(), lr=learning_rate)
    for _ in range(gradient_steps):
        batch = torch.randint(len(states), (batch_size,), generator=generator)
        loss = loss_fn(head(states[batch]), labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return head.eval()


def _linear_proba(head: Any, states: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        logits = head(torch.from_numpy(np.ascontiguousarray(states, dtype=np.float32)))
    return torch.softmax(logits, dim=1).numpy()


def run_slot(slot: RunSlot, experiment: ExperimentConfig, watch: Stopwatch) -> dict[str, Any]:
    """Train every variant on one prepared split; return test metrics, probabilities, gradient steps and times."""
    from hclr_ids import pipeline, training
    from hclr_ids.rl import hybrid

    config, prepared = slot.config, slot.prepared
    n_classes = len(prepared.classes)
    X_val, y_val = known_validation(prepared)
    proba: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}

    encoders = {}
    for name, architecture in ((CNN, "cnn"), (LSTM, "lstm"), (SOFTMAX, "cnn-lstm")):
        encoder_config = merge_overrides(config, {"encoder.architecture": architecture}).encoder
        with watch.time(name) as timer:
            encoder, _ = training.train_encoder(prepared.X_train, prepared.y_train, X_val, y_val, n_classes,
                                                encoder_config, seed=slot.seed)
        seconds[name] = timer.elapsed
        encoders[name] = encoder
        proba[name] = training.predict_proba(encoder, prepared.X_test)

    shared = encoders[SOFTMAX]
    train_states = training.embed(shared, prepared.X_train)
    val_states = training.embed(shared, X_val)
    test_states = training.embed(shared, prepared.X_test)
    rl = config.rl
    budget = experiment.head_time_budget_s
    common = {"seed": slot.seed, "val_states": val_states, "val_labels": y_val, "time_budget_s": budget}

    with pipeline.torch_threads(rl.threads):
        start = time.perf_counter()
        hybrid_head, hybrid_history = hybrid.train_hybrid(train_states, prepared.y_train, n_classes, rl, **common)
        seconds[HYBRID] = time.perf_counter() - start
        start = time.perf_counter()
        ppo_head, ppo_history = hybrid.train_ppo_head(train_states, prepared.y_train, n_classes, rl, **common)
        seconds[PPO] = time.perf_counter() - start

    # The hybrid's first stage is the DQN-only head: train_hybrid and train_dqn_head build the same environment
    # and call train_dqn with the same seed. Its softmax temperature is fitted on validation as train_dqn_head does.
    dqn_head = hybrid_head.dqn
    dqn_head.temperature = hybrid.fit_temperature(dqn_head.q_values(val_states), y_val)
    steps = {
        DQN: dqn_gradient_steps(hybrid_history, rl.dqn.gradient_steps_per_step),
        PPO: ppo_gradient_steps(ppo_history, rl.ppo.update_epochs, rl.ppo.num_minibatches),
    }
    steps[HYBRID] = steps[DQN] + ppo_gradient_steps(hybrid_history, rl.ppo.update_epochs, rl.ppo.num_minibatches)
    steps[CONTROL] = steps[HYBRID]
    with pipeline.torch_threads(rl.threads):
        start = time.perf_counter()
        control = train_softmax_control(
            train_states, prepared.y_train, n_classes, gradient_steps=steps[CONTROL], batch_size=rl.dqn.batch_size,
            learning_rate=rl.dqn.learning_rate, class_weighting=config.encoder.class_weighting, seed=slot.seed,
        )
        seconds[CONTROL] = time.perf_counter() - start

    proba[DQN] = np.asarray(dqn_head.predict_proba(test_states))
    proba[PPO] = np.asarray(ppo_head.predict_proba(test_states))
    proba[HYBRID] = np.asarray(hybrid_head.predict_proba(test_states))
    proba[CONTROL] = _linear_proba(control, test_states)
    for name in (PPO, HYBRID, CONTROL):
        watch.add(name, seconds[name])
    models = {name: evaluate(prepared, proba[name]) for name in VARIANTS}
    logger.info("%s: %s", slot.name, ", ".join(f"{n} {m['macro_f1']:.4f}" for n, m in models.items()))
    return {"seed": slot.seed, "fold": slot.fold, "models": models, "gradient_steps": steps, "seconds": seconds,
            "proba": proba}


def compare_with_control(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Paired macro-F1 difference of each RL head minus the control, per run, with mean, std and a verdict."""
    out = {}
    for name in RL_VARIANTS:
        diffs = np.array([r["models"][name]["macro_f1"] - r["models"][CONTROL]["macro_f1"] for r in runs])
        std = float(diffs.std(ddof=1)) if len(diffs) > 1 else 0.0
        if (diffs > 0).all():
            verdict = f"better than the control in all {len(diffs)} runs"
        elif (diffs < 0).all():
            verdict = f"worse than the control in all {len(diffs)} runs"
        else:
            verdict = f"no consistent difference (better in {int((diffs > 0).sum())} of {len(diffs)} runs)"
        out[name] = {"mean": float(diffs.mean()), "std": std, "values": diffs.tolist(), "verdict": verdict}
    return out


def run_ablation(config: RunConfig, experiment: ExperimentConfig, out_dir: str | Path) -> dict[str, Any]:
    """Run the ablation over every seed (and fold), write results.json, results.md and plots to ``out_dir``."""
    out = Path(out_dir)
    started = time.perf_counter()
    watch = Stopwatch()
    runs: list[dict[str, Any]] = []
    first: RunSlot | None = None
    roc_inputs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for slot in iterate_runs(config, experiment):
        result = run_slot(slot, experiment, watch)
        if first is None:
            first = slot
            roc_inputs = {n: (slot.prepared.y_test, _pad(p, len(slot.prepared.eval_labels)))
                          for n, p in result["proba"].items()}
        result.pop("proba")
        runs.append(result)
    assert first is not None
    aggregated = aggregate(runs)
    control = compare_with_control(runs)
    results = {
        "experiment": "ablation",
        "record": experiment_record(config, experiment, first),
        "selected_features": first.prepared.info["selection"].get("selected_names"),
        "variants": aggregated,
        "rl_minus_control_macro_f1": control,
        "runs": runs,
        "seconds_total": time.perf_counter() - started,
        "seconds_per_variant": watch.seconds,
    }
    markdown = render_ablation(config, experiment, first, aggregated, control, runs, watch)
    write_results(out, results, markdown)
    if experiment.plots:
        write_plots(out, aggregated, roc_inputs, first.prepared.eval_labels, f"Ablation, {config.data.task}")
    if experiment.mlflow_uri:
        log_to_mlflow(experiment.mlflow_uri, "hclr-ids-ablation", config, aggregated, out)
    return results


def _pad(proba: np.ndarray, n_labels: int) -> np.ndarray:
    from hclr_ids.pipeline import _pad_proba

    return _pad_proba(np.asarray(proba, dtype=np.float64), n_labels)


def render_ablation(config: RunConfig, experiment: ExperimentConfig, first: RunSlot, aggregated: dict[str, Any],
                    control: dict[str, dict[str, Any]], runs: list[dict[str, Any]], watch: Stopwatch) -> str:
    steps = {name: int(np.mean([r["gradient_steps"][name] for r in runs])) for name in (*RL_VARIANTS, CONTROL)}
    extra = {name: {"gradient steps": str(steps.get(name, "")),
                    "train s (total)": f"{watch.seconds.get(name, math.nan):.1f}"} for name in aggregated}
    extra[DQN]["train s (total)"] = "in hybrid"  # the hybrid's first stage is the DQN head
    lines = [f"# Ablation: {config.data.task}", "", *describe_setup(config, experiment, first), "",
             "## Summary", "", summary_table(aggregated, extra), "",
             "## Do the RL heads add anything over the softmax control?", "",
             f"The control is a linear softmax head trained on the same frozen CNN-LSTM embedding for the same number "
             f"of gradient steps as the hybrid head ({steps[CONTROL]} per run). Differences are paired by run.", "",
             "| head | macro-F1 minus control (mean ± std) | per run | verdict |", "|---|---:|---|---|"]
    for name, values in control.items():
        per_run = ", ".join(f"{v:+.4f}" for v in values["values"])
        lines.append(f"| {name} | {values['mean']:+.4f} ± {values['std']:.4f} | {per_run} | {values['verdict']} |")
    lines += ["", f"## Per class: {HYBRID}", "", per_class_table(aggregated, HYBRID), "",
              "## Per-class F1 of every variant", "", per_class_f1_table(aggregated), ""]
    return "\n".join(lines)
