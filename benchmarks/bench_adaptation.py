"""Benchmark: learning a class unseen in training from delayed analyst feedback, on real CICIoMT2024 rows.

For each held-out class the model is trained without it (contiguous split, a stratified sample of
``--max-train-rows`` training rows, default settings otherwise). Test rows of
every class are split in half: a stream whose true labels are fed back for a fraction ``p`` of flows after a
delay, and a fixed evaluation set. After every ``--checkpoint`` feedback labels the benchmark records the
recall of the new class and the macro-F1 over the old classes on the evaluation set for:

- ``none``: the trained bundle, unchanged;
- ``hclr-online``: the HCLR-IDS online learner (DQN and PPO heads updated from the feedback, encoder frozen);
- ``river-arf``: river's adaptive random forest on the same selected, scaled features, first fed a sample
  of training rows and then the feedback stream;
- ``softmax-retrain``: a logistic-regression head on the frozen embeddings, refitted from scratch on the
  training sample plus all feedback every ``--retrain-every`` labels.

It also reports the unknown detector's recall on the new class before any feedback, next to a novelty score
in the input space: the mean distance to the 5 nearest training rows of selected, scaled features. Output: a
Markdown table on stdout, ``adaptation.json`` and ``adaptation.png`` in ``--out``.

Example: ``.venv/bin/python benchmarks/bench_adaptation.py --classes Recon-OS_Scan --out /tmp/bench``
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

logger = logging.getLogger("bench_adaptation")


def train_without(data_path: Path, cache: Path, excluded: str, out: Path, max_train_rows: int, seed: int):
    from hclr_ids import data, pipeline, splits, training
    from hclr_ids.config import RunConfig, merge_overrides

    config = merge_overrides(RunConfig(), {
        "data.path": str(data_path), "data.cache_dir": str(cache), "data.max_train_rows": max_train_rows,
        "selection.sample_size": 50_000, "seed": seed,
    })
    dataset = data.load_dataset(data_path, cache_dir=str(cache))
    split = splits.make_split(dataset, "contiguous", task="multiclass", seed=seed)
    targets = dataset.targets("multiclass")
    split.train = split.train[targets[split.train] != excluded]
    split.val = split.val[targets[split.val] != excluded]
    training.set_seed(seed)
    prepared = pipeline.prepare(config, dataset, split)
    model = pipeline.fit_models(config, prepared)
    pipeline.save_model(out, config, prepared, model)
    return dataset, targets, split


def macro_f1_old(truth: np.ndarray, predicted: np.ndarray, old: list[str]) -> float:
    from sklearn.metrics import f1_score

    mask = np.isin(truth, old)
    return float(f1_score(truth[mask], predicted[mask], labels=old, average="macro", zero_division=0))


def run_class(args: argparse.Namespace, excluded: str) -> dict:
    from river import forest

    from hclr_ids.adaptation import AdaptConfig, OnlineLearner
    from hclr_ids.bundle import load_bundle

    rng = np.random.default_rng(args.seed)
    out = args.out / excluded
    start = time.perf_counter()
    dataset, targets, split = train_without(args.data, args.cache, excluded, out / "bundle", args.max_train_rows,
                                            args.seed)
    train_seconds = time.perf_counter() - start
    bundle = load_bundle(out / "bundle")
    old = list(bundle.classes)

    test = rng.permutation(split.test)
    new_rows, old_rows = test[targets[test] == excluded], test[targets[test] != excluded]
    old_rows = old_rows[: args.old_rows]
    half_new, half_old = len(new_rows) // 2, len(old_rows) // 2
    stream = rng.permutation(np.concatenate([new_rows[:half_new], old_rows[:half_old]]))
    evaluation = np.concatenate([new_rows[half_new:], old_rows[half_old:]])
    # The label of the flow at stream position i arrives at position i + delay, so flows within `delay` of the
    # end of the stream never get theirs. Evaluation is by label count, so the delay only truncates.
    positions = np.flatnonzero(rng.random(len(stream)) < args.feedback_fraction)
    labelled = stream[positions[positions + args.delay < len(stream)]]
    feedback = labelled[: args.max_feedback]
    X, y = dataset.X, targets
    X_eval, y_eval = X[evaluation], y[evaluation]
    reference = rng.choice(split.val, min(args.reference_rows, len(split.val)), replace=False)
    train_sample = rng.choice(split.train, min(args.reference_rows, len(split.train)), replace=False)

    learner = OnlineLearner(bundle, AdaptConfig(seed=args.seed, unknown_detector=args.unknown_detector),
                            reference_X=X[reference], reference_labels=y[reference])
    eval_states = learner.embed(X_eval)
    _, unknown = learner.unknown_scores(X_eval, np.ones(len(X_eval)), eval_states)
    unknown_recall = float(unknown[y_eval == excluded].mean())
    unknown_false = float(unknown[y_eval != excluded].mean())

    preprocess = bundle.preprocessor
    selected = bundle.selected_indices

    def features(rows: np.ndarray) -> np.ndarray:
        return preprocess.transform(X[rows])[:, selected]

    # Novelty in the input space for comparison: mean distance to the 5 nearest of 20,000 training rows (selected,
    # scaled features), with the threshold at the same percentile of the reference rows' distances.
    from sklearn.neighbors import NearestNeighbors

    knn_rows = np.random.default_rng(args.seed + 1).choice(split.train, min(20_000, len(split.train)), replace=False)
    knn = NearestNeighbors(n_neighbors=5).fit(features(knn_rows))

    def knn_score(rows: np.ndarray) -> np.ndarray:
        return knn.kneighbors(features(rows))[0].mean(axis=1)

    knn_flag = knn_score(evaluation) > np.percentile(knn_score(reference), learner.config.unknown_percentile)
    knn_recall = float(knn_flag[y_eval == excluded].mean())
    knn_false = float(knn_flag[y_eval != excluded].mean())

    arf = forest.ARFClassifier(n_models=10, seed=args.seed)
    names = [f"f{i}" for i in range(len(selected))]
    for row, label in zip(features(train_sample), y[train_sample]):
        arf.learn_one(dict(zip(names, row)), label)
    F_eval = preprocess.transform(X_eval)[:, selected]

    from sklearn.linear_model import LogisticRegression

    sample_states = learner.embed(X[train_sample])
    softmax_X, softmax_y = sample_states, y[train_sample]
    softmax = LogisticRegression(max_iter=300).fit(softmax_X, softmax_y)

    classes_none = np.asarray(bundle.classes)[bundle.predict_proba(X_eval).argmax(1)]
    curves: dict[str, list[dict]] = {name: [] for name in ("none", "hclr-online", "river-arf", "softmax-retrain")}

    def record(n_labels: int) -> None:
        predictions = {
            "none": classes_none,
            "hclr-online": np.asarray(learner.classes)[learner.predict_proba(X_eval).argmax(1)],
            "river-arf": np.asarray([arf.predict_one(dict(zip(names, row))) for row in F_eval], dtype=object),
            "softmax-retrain": softmax.predict(eval_states),
        }
        for name, predicted in predictions.items():
            curves[name].append({
                "labels": n_labels, "new_recall": float(np.mean(predicted[y_eval == excluded] == excluded)),
                "old_macro_f1": macro_f1_old(y_eval, predicted.astype(str), old),
            })

    record(0)
    F_feedback = features(feedback)
    fed = 0
    for first in range(0, len(feedback), args.checkpoint):
        rows = feedback[first:first + args.checkpoint]
        for chunk in range(0, len(rows), 32):
            part = rows[chunk:chunk + 32]
            learner.add_feedback(X[part], list(y[part]))
        for row, label in zip(F_feedback[first:first + len(rows)], y[rows]):
            arf.learn_one(dict(zip(names, row)), label)
        fed += len(rows)
        if fed // args.retrain_every > (fed - len(rows)) // args.retrain_every:
            states = learner.embed(X[feedback[:fed]])
            softmax = LogisticRegression(max_iter=300).fit(np.concatenate([sample_states, states]),
                                                           np.concatenate([y[train_sample], y[feedback[:fed]]]))
        record(fed)
        logger.info("%s: %d labels, hclr recall %.3f, river recall %.3f", excluded, fed,
                    curves["hclr-online"][-1]["new_recall"], curves["river-arf"][-1]["new_recall"])

    return {"class": excluded, "train_seconds": train_seconds, "stream_flows": int(len(stream)),
            "feedback_labels": int(len(feedback)), "new_class_feedback": int(np.sum(y[feedback] == excluded)),
            "unknown_recall_before_feedback": unknown_recall, "unknown_false_positive_rate": unknown_false,
            "knn_novelty_recall": knn_recall, "knn_novelty_false_positive_rate": knn_false,
            "hclr_rollbacks": learner.rollbacks, "curves": curves}


def labels_to_reach(curve: list[dict], recall: float) -> int | None:
    for point in curve:
        if point["new_recall"] >= recall:
            return point["labels"]
    return None


def render(results: list[dict]) -> str:
    lines = ["| held-out class | method | labels to recall 0.9 | final new-class recall | old macro-F1 start | "
             "old macro-F1 end | unknown recall before feedback |", "|---|---|---:|---:|---:|---:|---:|"]
    for result in results:
        for name, curve in result["curves"].items():
            reach = labels_to_reach(curve, 0.9)
            lines.append(f"| {result['class']} | {name} | {'not reached' if reach is None else reach} | "
                         f"{curve[-1]['new_recall']:.3f} | {curve[0]['old_macro_f1']:.3f} | "
                         f"{curve[-1]['old_macro_f1']:.3f} | {result['unknown_recall_before_feedback']:.3f} |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(5 * len(results), 7), squeeze=False)
    for column, result in enumerate(results):
        for name, curve in result["curves"].items():
            labels = [p["labels"] for p in curve]
            axes[0, column].plot(labels, [p["new_recall"] for p in curve], label=name)
            axes[1, column].plot(labels, [p["old_macro_f1"] for p in curve], label=name)
        axes[0, column].set_title(f"new class {result['class']}")
        axes[0, column].set_ylabel("new-class recall")
        axes[1, column].set_ylabel("old-class macro-F1")
        axes[1, column].set_xlabel("feedback labels")
    axes[0, 0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/ciciomt2024",
                        help="release root of the real CICIoMT2024 subset")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/hclr-ids-bench-cache"), help="Parquet cache folder")
    parser.add_argument("--out", type=Path, default=Path("bench-adaptation"), help="output folder")
    parser.add_argument("--classes", nargs="+", default=["Recon-OS_Scan", "MQTT-Malformed_Data", "ARP_Spoofing"],
                        help="classes held out of training, one run each")
    parser.add_argument("--feedback-fraction", type=float, default=0.3, help="fraction p of stream flows labelled")
    parser.add_argument("--delay", type=int, default=100, help="flows between a flow and its label")
    parser.add_argument("--max-feedback", type=int, default=800, help="feedback labels at most")
    parser.add_argument("--checkpoint", type=int, default=64, help="feedback labels between evaluations")
    parser.add_argument("--retrain-every", type=int, default=128, help="labels between softmax head refits")
    parser.add_argument("--old-rows", type=int, default=6000, help="test rows of the old classes used")
    parser.add_argument("--reference-rows", type=int, default=2000, help="validation rows given to the learner")
    parser.add_argument("--max-train-rows", type=int, default=20_000, help="training rows of each model")
    parser.add_argument("--unknown-detector", choices=["neighbours", "autoencoder"], default="neighbours",
                        help="novelty score of the learner's unknown check (default neighbours)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("hclr_ids.preprocessing", "hclr_ids.pipeline", "hclr_ids.training", "hclr_ids.rl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    results = [run_class(args, excluded) for excluded in args.classes]
    (args.out / "adaptation.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    plot(results, args.out / "adaptation.png")
    print(render(results))


if __name__ == "__main__":
    main()
