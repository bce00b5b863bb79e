"""``hclr-ids experiment``: ablation, feature-selection and baseline comparisons over seeds or folds."""

from __future__ import annotations

import argparse
from typing import Any

from hclr_ids.schema import TASKS


def add_experiment_options(parser: argparse.ArgumentParser, *, seeds_default: str) -> None:
    """Add the options every experiment takes: data, split, features, repetitions, budgets and output."""
    parser.add_argument("--data", required=True, help="release root (or a folder below it), or a labelled CSV/Parquet file or folder")
    parser.add_argument("--task", choices=TASKS, default="multiclass", help="binary, category or multiclass (default)")
    parser.add_argument("--split", choices=("official", "stratified", "contiguous"), default="contiguous",
                        help="contiguous: each file cut in row order 70/10/20 (default); stratified: pooled random")
    parser.add_argument("--features", choices=("all", "no-leak"), default="no-leak",
                        help="all: every column; no-leak: drop IAT, which identifies the capture (default)")
    parser.add_argument("--folds", type=int, default=0, help="stratified K-fold cross-validation with K >= 2 folds")
    parser.add_argument("--seeds", type=int, nargs="+", default=[int(s) for s in seeds_default.split(",")],
                        help=f"seeds to repeat each variant with (default {seeds_default.replace(',', ' ')})")
    parser.add_argument("--max-train-rows", type=int, default=None, help="stratified subsample of the training split")
    parser.add_argument("--epochs", type=int, default=None, help="maximum encoder epochs")
    parser.add_argument("--time-budget", type=float, default=None, help="encoder training time limit in seconds")
    parser.add_argument("--head-time-budget", type=float, default=0.0,
                        help="time limit of each decision head in seconds (0: none)")
    parser.add_argument("--dqn-steps", type=int, default=None,
                        help="DQN vector steps (rl.dqn.total_steps; default 400)")
    parser.add_argument("--ppo-iterations", type=int, default=None,
                        help="PPO rollouts (rl.ppo.total_iterations; default 60)")
    parser.add_argument("--config", help="JSON run configuration; the options above override it")
    parser.add_argument("--cache-dir", help="folder of the Parquet cache (default ~/.cache/hclr-ids)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--mlflow-uri", help="also log each variant's mean metrics to this MLflow tracking URI")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--out", required=True, help="output folder for results.json, results.md and plots")


def configs_from_args(args: argparse.Namespace) -> tuple[Any, Any]:
    """Build the RunConfig and ExperimentConfig of an experiment command."""
    from hclr_ids.config import RunConfig, merge_overrides
    from hclr_ids.experiments.common import ExperimentConfig

    config = RunConfig.from_json_file(args.config) if args.config else RunConfig()
    overrides: dict[str, Any] = {
        "data.path": args.data, "data.task": args.task, "data.split": args.split,
        "data.max_train_rows": args.max_train_rows, "data.cache_dir": args.cache_dir,
        "preprocess.features": args.features, "encoder.max_epochs": args.epochs,
        "encoder.time_budget_s": args.time_budget, "threads": args.threads,
        "rl.dqn.total_steps": args.dqn_steps, "rl.ppo.total_iterations": args.ppo_iterations,
    }
    overrides.update(getattr(args, "extra_overrides", {}) or {})
    config = merge_overrides(config, overrides)
    if args.folds == 1 or args.folds < 0:
        raise ValueError(f"--folds {args.folds}: use 0 for the single split or K >= 2 for K-fold cross-validation")
    experiment = ExperimentConfig(seeds=tuple(args.seeds), folds=args.folds, mlflow_uri=args.mlflow_uri,
                                  plots=not args.no_plots, head_time_budget_s=args.head_time_budget)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return config, experiment


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "experiment", help="ablation, feature-selection and baseline experiments",
        description="Reproducible comparisons on one split (or K folds) repeated over seeds; each writes "
                    "results.json, results.md (mean ± std tables) and plots to --out.",
    )
    sub = parser.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)

    ablation = sub.add_parser(
        "ablation", help="CNN, LSTM, CNN-LSTM and its softmax, DQN, PPO, hybrid and control heads",
        description="Train CNN only, LSTM only and CNN-LSTM encoders per seed; on the CNN-LSTM embedding train "
                    "DQN, PPO and hybrid heads and a softmax control with the hybrid's number of gradient steps.",
    )
    add_experiment_options(ablation, seeds_default="0,1,2")
    ablation.set_defaults(handler=handle_ablation)

    selection = sub.add_parser(
        "feature-selection", help="the same model with all columns, the MI filter and MIFS",
        description="Train the configured model (default HCLR-IDS) with no selection, the mutual-information "
                    "filter and MIFS with k features; the selected feature lists go into the results.",
    )
    add_experiment_options(selection, seeds_default="0")
    selection.add_argument("--mi-threshold", type=float, default=0.1, help="MI filter threshold in nats (default 0.1)")
    selection.add_argument("--mifs-k", type=int, default=20, help="number of features MIFS selects (default 20)")
    selection.add_argument("--head", choices=("softmax", "dqn", "ppo", "hybrid"), default=None,
                           help="decision head of the model (default hybrid)")
    selection.set_defaults(handler=handle_feature_selection)

    baselines = sub.add_parser(
        "baselines", help="classical and neural baselines with fit time, throughput and model size",
        description="Fit logistic regression, histogram gradient boosting, RandomForest + SVM soft voting, 1D CNN, "
                    "LSTM, a small FT-Transformer, RandomForest, LightGBM and XGBoost on the same rows.",
    )
    add_experiment_options(baselines, seeds_default="0")
    baselines.add_argument("--models", nargs="+", default=None,
                           help="subset of baselines to fit (default all); see results.md for the names")
    baselines.set_defaults(handler=handle_baselines)


def handle_ablation(args: argparse.Namespace) -> int:
    from hclr_ids.experiments.ablation import run_ablation

    config, experiment = configs_from_args(args)
    results = run_ablation(config, experiment, args.out)
    _print_summary(results["variants"])
    for name, values in results["rl_minus_control_macro_f1"].items():
        print(f"{name}: macro-F1 minus control {values['mean']:+.4f} ± {values['std']:.4f} ({values['verdict']})")
    print(f"results: {args.out}/results.md")
    return 0


def handle_feature_selection(args: argparse.Namespace) -> int:
    from hclr_ids.experiments.feature_selection import run_feature_selection

    args.extra_overrides = {"selection.mi_threshold": args.mi_threshold, "selection.mifs_k": args.mifs_k,
                            "rl.head": args.head}
    config, experiment = configs_from_args(args)
    results = run_feature_selection(config, experiment, args.out)
    _print_summary(results["variants"])
    print(f"results: {args.out}/results.md")
    return 0


def handle_baselines(args: argparse.Namespace) -> int:
    from hclr_ids.experiments.baselines import run_baselines

    config, experiment = configs_from_args(args)
    results = run_baselines(config, experiment, args.out, models=args.models)
    _print_summary(results["variants"])
    print(f"results: {args.out}/results.md")
    return 0


def _print_summary(aggregated: dict[str, Any]) -> None:
    for name, values in aggregated.items():
        f1 = values["summary"]["macro_f1"]
        acc = values["summary"]["accuracy"]
        print(f"{name:<40} accuracy {acc['mean']:.4f} ± {acc['std']:.4f}  macro-F1 {f1['mean']:.4f} ± {f1['std']:.4f}")
