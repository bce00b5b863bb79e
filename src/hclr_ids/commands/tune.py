"""``hclr-ids tune``: grid or random search of one stage's hyperparameters on Ray Tune."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from hclr_ids.commands._options import add_training_options

    parser = subparsers.add_parser(
        "tune", help="hyperparameter search on Ray Tune, chosen on validation macro-F1",
        description="Search the paper's grid of one stage (cnn: lr x filters x kernel x dropout; lstm: lr x units x "
                    "dropout; dqn: lr x gamma x epsilon decay; ppo: lr x clip x update epochs) on a local Ray "
                    "instance or the cluster at --address. Trials see only training and validation rows; the best "
                    "trial is saved as a full configuration in --out/best_config.json for 'hclr-ids train --config'.",
    )
    add_training_options(parser)
    parser.add_argument("--stage", choices=("cnn", "lstm", "dqn", "ppo"), required=True, help="which grid to search")
    parser.add_argument("--search", choices=("grid", "random"), default="grid",
                        help="grid: every combination (default); random: --num-samples draws from the grid's values")
    parser.add_argument("--num-samples", type=int, default=8, help="trials of a random search (default 8)")
    parser.add_argument("--scheduler", choices=("fifo", "asha"), default="fifo",
                        help="asha stops weak encoder trials after each epoch (default fifo: run all to the end)")
    parser.add_argument("--grid-file", help="JSON object of dotted settings to lists of values, replacing the stage grid")
    parser.add_argument("--address", help="address of an existing Ray cluster (default: start a local instance)")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs Ray reserves per trial (default 1)")
    parser.add_argument("--out", required=True, help="output folder for best_config.json, trials.json and results.md")
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from hclr_ids.commands._options import config_from_args
    from hclr_ids.experiments.tune import load_grid_file, run_tune

    grid = load_grid_file(args.grid_file) if args.grid_file else None
    summary = run_tune(config_from_args(args), args.out, stage=args.stage, grid=grid, search=args.search,
                       num_samples=args.num_samples, scheduler=args.scheduler, address=args.address,
                       cpus_per_trial=args.cpus_per_trial)
    best = summary["best"]
    print(f"best of {len(summary['trials'])} trials: {best['params']} (validation macro-F1 {best[summary['metric']]:.4f})")
    print(f"config: {args.out}/best_config.json")
    return 0
