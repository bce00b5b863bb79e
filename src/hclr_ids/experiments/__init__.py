"""Reproducible experiments: ablation, feature selection, baselines, hyperparameter search and Ray training.

Each experiment trains on the same split, features and seeds for every variant and writes ``results.json``,
``results.md`` and plots to its output folder. Ray, MLflow, LightGBM and XGBoost are imported only inside the
functions that use them.
"""
