"""Online adaptation from feedback, on a real bundle trained without the class Recon-OS_Scan."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import small_run_config
from fastapi.testclient import TestClient

from hclr_ids.adaptation import AdaptConfig, OnlineLearner, add_feedback_routes, grow_head
from hclr_ids.bundle import load_bundle
from hclr_ids.schema import FEATURE_COLUMNS
from hclr_ids.service import create_app

NEW_CLASS = "Recon-OS_Scan"


@pytest.fixture(scope="module")
def holdout_run(release_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """A hybrid bundle trained on the real subset without NEW_CLASS, with the rows of each split."""
    from hclr_ids import data, pipeline, splits, training

    cache = tmp_path_factory.mktemp("cache")
    config = small_run_config(release_root, cache, **{"data.max_train_rows": 2000, "encoder.max_epochs": 2})
    dataset = data.load_dataset(release_root, cache_dir=str(cache))
    split = splits.make_split(dataset, "contiguous", task="multiclass", seed=0)
    targets = dataset.targets("multiclass")
    split.train = split.train[targets[split.train] != NEW_CLASS]
    split.val = split.val[targets[split.val] != NEW_CLASS]
    training.set_seed(0)
    prepared = pipeline.prepare(config, dataset, split)
    model = pipeline.fit_models(config, prepared)
    out = tmp_path_factory.mktemp("bundle") / "without-os-scan"
    pipeline.save_model(out, config, prepared, model)
    rng = np.random.default_rng(0)
    reference = rng.choice(split.val, 2000, replace=False)
    new_rows = split.test[targets[split.test] == NEW_CLASS]
    return {"bundle": out, "X": dataset.X, "labels": targets, "reference": reference, "new": new_rows,
            "old_train": split.train, "test": split.test}


def _learner(run: dict, **overrides) -> OnlineLearner:
    config = AdaptConfig(**overrides)
    return OnlineLearner.from_bundle(run["bundle"], config, reference_X=run["X"][run["reference"]],
                                     reference_labels=run["labels"][run["reference"]])


def _records(X: np.ndarray) -> list[dict[str, float]]:
    return [dict(zip(FEATURE_COLUMNS, map(float, row))) for row in X]


def _head_tensors(learner: OnlineLearner) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in learner.head.state_tensors().items()}


def test_grown_head_keeps_verdicts(holdout_run):
    bundle = load_bundle(holdout_run["bundle"])
    learner = OnlineLearner(bundle)
    states = learner.embed(holdout_run["X"][holdout_run["reference"][:500]])
    grown = grow_head(bundle.head, 1)
    assert grown.n_classes == bundle.head.n_classes + 1
    assert np.array_equal(grown.predict(states), bundle.head.predict(states))


def test_imprinted_class_sits_margin_above_best_old_logit(holdout_run):
    import torch

    bundle = load_bundle(holdout_run["bundle"])
    learner = OnlineLearner(bundle)
    new_states = learner.embed(holdout_run["X"][holdout_run["new"][:50]])
    grown = grow_head(bundle.head, 1, [new_states], margin=1.5)
    with torch.no_grad():
        logits = grown.logits(new_states).numpy()
    # The bias puts the new logit the margin above the best old logit, on average over the imprinted flows.
    # The old logits stay as they were.
    gap = logits[:, -1] - logits[:, :-1].max(axis=1)
    assert gap.mean() == pytest.approx(1.5, abs=1e-4)
    with torch.no_grad():
        old_logits = bundle.head.logits(new_states).numpy()
    np.testing.assert_allclose(logits[:, :-1], old_logits, atol=1e-6)


def test_hybrid_window_trains_only_new_q_rows(holdout_run):
    learner = _learner(holdout_run, holdout_every=0, rollback_margin=1.0, class_rollback_margin=1.0)
    states = learner.embed(holdout_run["X"][holdout_run["reference"][:200]])
    q_before = learner.head.dqn.q_values(states).numpy()
    rows = holdout_run["new"][:64]
    learner.add_feedback(holdout_run["X"][rows], [NEW_CLASS] * len(rows), force=True)
    assert learner.history[-1].accepted
    q_after = learner.head.dqn.q_values(states).numpy()
    n_old = q_before.shape[1]
    # The policy observes the Q-values, so the trained rows keep theirs exactly. The new row starts at -1
    # (zero weights) and moves towards the +1 reward of its labelled flows.
    np.testing.assert_array_equal(q_after[:, :n_old], q_before)
    new_q = learner.head.dqn.q_values(learner.embed(holdout_run["X"][rows])).numpy()[:, n_old]
    assert new_q.mean() > -1.0 + 0.1


def test_new_class_waits_for_a_validated_window(holdout_run):
    learner = _learner(holdout_run, holdout_every=0, rollback_margin=1.0, class_rollback_margin=1.0)
    rows = holdout_run["new"][:20]
    old_classes = learner.classes
    before = learner.predict_proba(holdout_run["X"][rows])
    result = learner.add_feedback(holdout_run["X"][rows], [NEW_CLASS] * len(rows))
    # Fewer items than a window: the class is known to the learner but not yet part of any verdict.
    assert result.new_classes == [NEW_CLASS]
    assert result.windows == 0
    assert learner.classes == old_classes
    np.testing.assert_array_equal(learner.predict_proba(holdout_run["X"][rows]), before)
    assert learner.flush().accepted
    assert learner.classes == [*old_classes, NEW_CLASS]


def test_window_that_wrecks_one_class_rolled_back(holdout_run, caplog):
    # Only new-class labels, with the macro-F1 margin out of the way: the head learns to call everything
    # Recon-OS_Scan, which the per-class check catches on the reference rows.
    learner = _learner(holdout_run, holdout_every=0, rollback_margin=1.0, class_rollback_margin=0.3)
    rows = holdout_run["new"][:64]
    version = learner.version
    with caplog.at_level("WARNING", logger="hclr_ids.adaptation"):
        result = learner.add_feedback(holdout_run["X"][rows], [NEW_CLASS] * len(rows), force=True)
    assert result.rollbacks == 1
    assert learner.version == version
    assert NEW_CLASS not in learner.classes
    assert "fell by more than 0.30" in caplog.text


def test_service_feedback_teaches_new_class(holdout_run):
    learner = _learner(holdout_run, ppo_learning_rate=1e-3, dqn_learning_rate=1e-3, gradient_steps=32,
                       rollback_margin=1.0, class_rollback_margin=1.0, holdout_every=0)
    app = create_app(learner)
    add_feedback_routes(app, learner)
    new = holdout_run["new"]
    taught, later = new[:480], new[-400:]
    with TestClient(app) as client:
        before = client.post("/v1/predict", json=_records(holdout_run["X"][later])).json()
        first = client.post("/v1/predict", json=_records(holdout_run["X"][taught])).json()
        flow_ids = [verdict["flow_id"] for verdict in first["verdicts"]]
        for start in range(0, len(flow_ids), 32):
            items = [{"flow_id": i, "label": NEW_CLASS} for i in flow_ids[start:start + 32]]
            response = client.post("/v1/feedback", json=items)
            assert response.status_code == 200, response.text
        after = client.post("/v1/predict", json=_records(holdout_run["X"][later])).json()
    recall_before = np.mean([v["class"] == NEW_CLASS for v in before["verdicts"]])
    recall_after = np.mean([v["class"] == NEW_CLASS for v in after["verdicts"]])
    # Before feedback the new class is never predicted; 480 labels must move a clear share of unseen flows of it.
    assert recall_before == 0.0
    assert recall_after > 0.25
    assert NEW_CLASS in learner.classes
    assert after["verdicts"][0]["model_version"] == learner.version != before["verdicts"][0]["model_version"]


def test_poisoned_batch_rolled_back(holdout_run):
    # A learning rate high enough that 64 steps on flipped labels visibly harm the small test model.
    learner = _learner(holdout_run, ppo_learning_rate=1e-2, dqn_learning_rate=1e-2, gradient_steps=64)
    rows = np.random.default_rng(1).choice(holdout_run["old_train"], 512, replace=False)
    true = holdout_run["labels"][rows]
    classes = learner.classes
    flipped = [classes[(classes.index(label) + 1) % len(classes)] for label in true]
    version, weights = learner.version, _head_tensors(learner)

    result = learner.add_feedback(holdout_run["X"][rows], flipped, force=True)

    assert result.rollbacks == 1
    assert learner.history[-1].accepted is False
    window = learner.history[-1]
    assert window.candidate_macro_f1 < window.previous_macro_f1 - 0.02
    assert learner.version == version
    restored = _head_tensors(learner)
    assert all(np.array_equal(restored[k], weights[k]) for k in weights)


def test_snapshot_written_as_bundle(holdout_run, tmp_path):
    learner = OnlineLearner.from_bundle(holdout_run["bundle"], AdaptConfig(rollback_margin=1.0),
                                        snapshot_dir=tmp_path)
    rows = holdout_run["new"][:40]
    learner.add_feedback(holdout_run["X"][rows], [NEW_CLASS] * len(rows), force=True)
    snapshot = load_bundle(tmp_path / "adapt-1")
    assert snapshot.version == learner.version
    assert snapshot.version.endswith("+adapt.1")
    assert snapshot.classes[-1] == NEW_CLASS
    assert snapshot.predict_proba(holdout_run["X"][rows]).shape == (len(rows), len(learner.classes))


@pytest.mark.parametrize("body, status, kind", [
    ([{"flow_id": "nope-1", "label": "Benign"}], 422, "unknown_flow_id"),
    ([{"features": {}, "label": "Not_A_Class"}], 422, "unknown_label"),
    ([{"flow_id": "x", "label": "Benign", "comment": "hi"}], 422, "extra_forbidden"),
    ([{"label": "Benign"}], 422, "missing"),
    ({"flow_id": "x", "label": "Benign"}, 422, "list_type"),
])
def test_malformed_feedback_rejected(holdout_run, body, status, kind):
    learner = OnlineLearner.from_bundle(holdout_run["bundle"])
    app = create_app(learner)
    add_feedback_routes(app, learner)
    version, weights, seen = learner.version, _head_tensors(learner), learner.feedback_seen
    with TestClient(app) as client:
        response = client.post("/v1/feedback", json=body)
    assert response.status_code == status
    assert kind in {detail["type"] for detail in response.json()["detail"]}
    assert (learner.version, learner.feedback_seen) == (version, seen)
    assert all(np.array_equal(_head_tensors(learner)[k], weights[k]) for k in weights)


def test_invalid_json_feedback_is_400(holdout_run):
    learner = OnlineLearner.from_bundle(holdout_run["bundle"])
    app = create_app(learner)
    add_feedback_routes(app, learner)
    with TestClient(app) as client:
        response = client.post("/v1/feedback", content=b"[{", headers={"content-type": "application/json"})
    assert response.status_code == 400


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_adapt_command_leaves_model_untouched(holdout_run, tmp_path):
    from hclr_ids.cli import main

    rows = np.concatenate([holdout_run["new"][:64], holdout_run["old_train"][:64]])
    table = pl.DataFrame(holdout_run["X"][rows], schema=list(FEATURE_COLUMNS))
    table = table.with_columns(pl.Series("label", holdout_run["labels"][rows].astype(str)))
    feedback = tmp_path / "feedback.csv"
    table.write_csv(feedback)
    before = _digest(holdout_run["bundle"])

    status = main(["adapt", "--model", str(holdout_run["bundle"]), "--feedback", str(feedback),
                   "--out", str(tmp_path / "adapted")])

    assert status == 0
    assert _digest(holdout_run["bundle"]) == before
    adapted = load_bundle(tmp_path / "adapted")
    assert NEW_CLASS in adapted.classes
    assert "+adapt." in adapted.version
    summary = json.loads((tmp_path / "adapted" / "adaptation.json").read_text())
    assert summary["feedback_rows"] == 128


def test_adapt_rejects_unknown_label(holdout_run, tmp_path):
    from hclr_ids.cli import main

    rows = holdout_run["old_train"][:8]
    table = pl.DataFrame(holdout_run["X"][rows], schema=list(FEATURE_COLUMNS))
    table = table.with_columns(pl.Series("label", ["Benign"] * 7 + ["Not_A_Class"]))
    feedback = tmp_path / "feedback.csv"
    table.write_csv(feedback)

    status = main(["adapt", "--model", str(holdout_run["bundle"]), "--feedback", str(feedback),
                   "--out", str(tmp_path / "adapted")])

    assert status == 1
    assert not (tmp_path / "adapted").exists()


def test_unknown_threshold_is_validation_percentile(holdout_run):
    from hclr_ids.adaptation import UnknownDetector

    learner = _learner(holdout_run)
    states = learner.embed(holdout_run["X"][holdout_run["reference"]])
    fit, val = states[:1000], states[1000:]
    detector = UnknownDetector.fit(fit, val, AdaptConfig(unknown_percentile=90.0))
    # np.percentile interpolates, so exactly 10% of the 1000 validation scores lie above the threshold.
    assert np.mean(detector.scores(val) > detector.threshold) == pytest.approx(0.10, abs=0.002)


def test_unknown_flows_relabelled_with_score(holdout_run):
    learner = _learner(holdout_run)
    assert learner.detector is not None
    X = holdout_run["X"][holdout_run["test"][:50]]
    scores = learner.detector.scores(learner.features(X))
    # A threshold at the median flags the upper half, whose verdicts become "unknown" attacks with their score.
    learner.detector.threshold = float(np.median(scores))
    frame = learner.verdicts(X)
    flagged = scores > learner.detector.threshold
    assert frame["class"].to_numpy()[flagged].tolist() == ["unknown"] * int(flagged.sum())
    assert frame["attack"].to_numpy()[flagged].all()
    assert "unknown" not in frame["class"].to_numpy()[~flagged].tolist()
    np.testing.assert_allclose(frame["unknown_score"].to_numpy(), np.round(scores, 6), atol=1e-6)


@pytest.mark.parametrize("kind", ["neighbours", "autoencoder"])
def test_unknown_detector_saved_with_bundle(holdout_run, tmp_path, kind):
    from hclr_ids.adaptation import load_unknown_detector

    learner = _learner(holdout_run, unknown_detector=kind)
    learner.save(tmp_path / "adapted")
    loaded = load_unknown_detector(tmp_path / "adapted")
    assert type(loaded) is type(learner.detector)
    assert loaded.threshold == learner.detector.threshold
    X = holdout_run["X"][holdout_run["reference"][:20]]
    inputs = learner.features(X) if kind == "neighbours" else learner.embed(X)
    np.testing.assert_allclose(loaded.scores(inputs), learner.detector.scores(inputs), atol=1e-6)


def test_neighbour_scores_hand_computed():
    from hclr_ids.adaptation import NeighbourDetector

    reference = np.asarray([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    detector = NeighbourDetector(reference, k=2, threshold=1.0, percentile=99.0, max_rows=4)
    # (0, 0): distances 0, 1 and 2, mean of the two nearest 0.5. (3, 4): distances 5, sqrt(20) and sqrt(13).
    np.testing.assert_allclose(detector.scores(np.asarray([[0.0, 0.0], [3.0, 4.0]])),
                               [0.5, (np.sqrt(13.0) + np.sqrt(20.0)) / 2], rtol=1e-6)


def test_neighbour_refit_makes_taught_rows_known():
    from hclr_ids.adaptation import NeighbourDetector

    rng = np.random.default_rng(0)
    detector = NeighbourDetector.fit(rng.random((500, 3)), rng.random((200, 3)), AdaptConfig(unknown_max_rows=600))
    far = 5.0 + 0.01 * rng.random((150, 3))
    assert (detector.scores(far) > detector.threshold).all()
    detector.refit(far, steps=0, seed=0)
    # 150 new rows on top of 500 exceed the 600-row cap, so 50 old rows make room.
    assert len(detector.reference) == 600
    assert (detector.scores(far) < detector.threshold).all()


@pytest.mark.parametrize(("field", "value", "message"), [
    ("imprint_false_positive_rate", 1.5, "imprint_false_positive_rate must lie in \\[0, 1\\], got 1.5"),
    ("class_rollback_margin", -0.1, "class_rollback_margin must be >= 0, got -0.1"),
])
def test_adapt_config_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        AdaptConfig(**{field: value})


def test_grow_head_needs_states_per_class(holdout_run):
    bundle = load_bundle(holdout_run["bundle"])
    with pytest.raises(ValueError, match="new_states has 1 arrays for 2 new classes; pass one per class"):
        grow_head(bundle.head, 2, [np.zeros((1, 4), dtype=np.float32)])
