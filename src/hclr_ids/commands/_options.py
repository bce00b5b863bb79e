"""Options shared by the training commands, and their mapping onto :class:`RunConfig`."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from hclr_ids.schema import TASKS


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """Add data, split, feature and budget options used by ``train`` and ``run``."""
    data = parser.add_argument_group("data")
    data.add_argument("--data", default=None,
                      help="release root (or a folder below it), or a labelled CSV/Parquet file or folder "
                           "(default: the built-in lab dataset shipped with the package)")
    data.add_argument("--label-column", help="label column of a labelled table (the release takes labels from file names)")
    data.add_argument("--task", choices=TASKS, default=None, help="binary (Benign/Attack), category (6) or multiclass (19); default multiclass")
    data.add_argument("--split", choices=("official", "stratified", "contiguous"), default=None,
                      help="official: release train/ and test/ folders; stratified: pooled 70/10/20; "
                           "contiguous: each file cut in row order 70/10/20 (default)")
    data.add_argument("--folds", type=int, default=None, help="stratified K-fold cross-validation with K folds (run only)")
    data.add_argument("--dedup", action="store_true", default=None, help="remove exact duplicate rows before splitting")
    data.add_argument("--max-train-rows", type=int, default=None, help="stratified subsample of the training split")
    data.add_argument("--cache-dir", help="folder for the Parquet cache (default ~/.cache/hclr-ids or $HCLR_IDS_CACHE)")
    feats = parser.add_argument_group("features")
    feats.add_argument("--features", choices=("all", "no-leak"), default=None,
                       help="all: every column; no-leak: drop IAT, which identifies the capture (default)")
    feats.add_argument("--selection", choices=("none", "mi", "mifs"), default=None,
                       help="feature selection: mutual-information filter (default), Battiti's MIFS, or none")
    feats.add_argument("--mi-threshold", type=float, default=None, help="MI filter threshold in nats (default 0.1)")
    feats.add_argument("--mifs-k", type=int, default=None, help="number of features MIFS selects")
    feats.add_argument("--mifs-beta", type=float, default=None, help="MIFS redundancy weight beta")
    model = parser.add_argument_group("model")
    model.add_argument("--config", help="JSON run configuration (as written to config.json); options given here override it")
    model.add_argument("--architecture", choices=("cnn", "lstm", "cnn-lstm"), default=None, help="encoder (default cnn-lstm)")
    model.add_argument("--head", choices=("softmax", "dqn", "ppo", "hybrid"), default=None,
                       help="decision head on the frozen embedding (default hybrid: PPO over embedding and DQN Q-values)")
    model.add_argument("--epochs", type=int, default=None, help="maximum encoder epochs")
    model.add_argument("--time-budget", type=float, default=None, help="encoder training time limit in seconds")
    model.add_argument("--seed", type=int, default=None, help="random seed for splits, sampling and weights (default 0)")
    model.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def config_from_args(args: argparse.Namespace) -> Any:
    """Build the RunConfig: defaults, then ``--config`` if given, then explicit options."""
    from hclr_ids.config import RunConfig, merge_overrides

    config = RunConfig.from_json_file(args.config) if getattr(args, "config", None) else RunConfig()
    data_path = args.data
    if data_path is None and not config.data.path:
        from hclr_ids.datasets import builtin_dataset_path

        data_path = str(builtin_dataset_path())
        logging.getLogger(__name__).info("no --data given: using the built-in lab dataset %s", data_path)
    overrides = {
        "data.path": data_path,
        "data.label_column": args.label_column,
        "data.task": args.task,
        "data.split": args.split,
        "data.folds": args.folds,
        "data.dedup": args.dedup,
        "data.max_train_rows": args.max_train_rows,
        "data.cache_dir": args.cache_dir,
        "preprocess.features": args.features,
        "selection.method": args.selection,
        "selection.mi_threshold": args.mi_threshold,
        "selection.mifs_k": args.mifs_k,
        "selection.mifs_beta": args.mifs_beta,
        "encoder.architecture": args.architecture,
        "encoder.max_epochs": args.epochs,
        "encoder.time_budget_s": args.time_budget,
        "rl.head": args.head,
        "seed": args.seed,
        "threads": args.threads,
    }
    return merge_overrides(config, overrides)
