"""Data-parallel encoder training with Ray Train: ``hclr-ids train --ray-address ADDR --ray-workers N``.

The driver fits preprocessing, feature selection and the encoder's input encoding on the training rows, as
:func:`hclr_ids.pipeline.train` does. Each Ray Train worker then receives an equal shard of the training rows and
trains a replica of the encoder under PyTorch DDP (gloo backend), which averages gradients every step. The
per-worker batch is the single-process batch (``training.effective_batch_size``) divided by ``num_workers``,
so one step covers the same number of rows as a single-process step. The decision head trains in the driver on the frozen embedding afterwards.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from hclr_ids.config import RunConfig

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "encoder.safetensors"
HISTORY_FILE = "history.json"


def _train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train worker: DDP training of the encoder classifier on this worker's shard of the training rows."""
    import ray.train
    import torch
    from ray.train.torch import prepare_model
    from safetensors.torch import save_file
    from torch import nn

    from hclr_ids import training
    from hclr_ids.config import EncoderConfig
    from hclr_ids.networks import EncoderClassifier

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    config = EncoderConfig(**loop_config["encoder"])
    seed = loop_config["seed"]
    torch.set_num_threads(loop_config["threads"])
    X_train, y_train = loop_config["X_train"], loop_config["y_train"]
    X_val, y_val = loop_config["X_val"], loop_config["y_val"]
    n_classes = loop_config["n_classes"]

    # Equal shards keep the number of DDP steps per epoch the same on every worker (up to world - 1 rows unused).
    order = np.random.default_rng(seed).permutation(len(X_train))
    shard_size = len(order) // world
    shard = np.sort(order[rank * shard_size : (rank + 1) * shard_size])
    x = torch.from_numpy(np.ascontiguousarray(X_train[shard], dtype=np.float32))
    t = torch.from_numpy(np.asarray(y_train[shard], dtype=np.int64))
    x_val = torch.from_numpy(np.ascontiguousarray(X_val, dtype=np.float32))

    torch.manual_seed(seed)
    model = EncoderClassifier(config, X_train.shape[1], n_classes)
    model.load_state_dict(loop_config["initial_state"])
    ddp_model = prepare_model(model, parallel_strategy="ddp")
    weights = torch.from_numpy(training.class_weights(y_train, n_classes, config.class_weighting))
    loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=config.label_smoothing)
    val_loss_fn = nn.CrossEntropyLoss(weight=weights)
    optimizer = torch.optim.AdamW(ddp_model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    # The global batch follows the single-process rule (smaller on small training sets), split over the workers.
    batch_size = max(1, training.effective_batch_size(len(X_train), config.batch_size) // world)
    steps_per_epoch = math.ceil(len(x) / batch_size)
    scheduler = None
    if config.scheduler == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.learning_rate,
                                                        total_steps=config.max_epochs * steps_per_epoch)
    shuffler = torch.Generator().manual_seed(seed + rank)

    history: dict[str, list[float]] = {k: [] for k in ("train/loss", "val/loss", "val/macro_f1", "val/accuracy", "time_s")}
    best_f1, best_epoch = -math.inf, 0
    best_state = copy.deepcopy(model.state_dict())
    start = time.perf_counter()
    for epoch in range(1, config.max_epochs + 1):
        ddp_model.train()
        permutation = torch.randperm(len(x), generator=shuffler)
        total = 0.0
        for first in range(0, len(permutation), batch_size):
            batch = permutation[first : first + batch_size]
            loss = loss_fn(ddp_model(x[batch]), t[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total += loss.item() * len(batch)
        # Every replica has the same weights, so each computes the same validation score and takes the same
        # early-stopping decision without communication.
        val = training._evaluate(model, x_val, y_val, val_loss_fn, batch_size=4096)
        elapsed = time.perf_counter() - start
        for key, value in (("train/loss", total / len(x)), ("val/loss", val["loss"]),
                           ("val/macro_f1", val["macro_f1"]), ("val/accuracy", val["accuracy"]), ("time_s", elapsed)):
            history[key].append(float(value))
        if val["macro_f1"] > best_f1:
            best_f1, best_epoch, best_state = val["macro_f1"], epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= config.patience:
            break
        # The time budget is checked once per epoch from rank 0's clock, shared by an all-reduce.
        out_of_time = torch.tensor([float(config.time_budget_s > 0 and elapsed > config.time_budget_s)])
        torch.distributed.all_reduce(out_of_time, op=torch.distributed.ReduceOp.MAX)
        if out_of_time.item() > 0:
            break

    metrics = {"val_macro_f1": best_f1, "best_epoch": best_epoch, "epochs": len(history["time_s"])}
    if rank == 0:
        with tempfile.TemporaryDirectory() as folder:
            save_file({k: v.contiguous() for k, v in best_state.items()}, str(Path(folder) / WEIGHTS_FILE))
            (Path(folder) / HISTORY_FILE).write_text(json.dumps(history), encoding="utf-8")
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
    else:
        ray.train.report(metrics)


def train_encoder_distributed(config: RunConfig, prepared: Any, out_dir: Path, *, num_workers: int,
                              address: str | None = None) -> tuple[Any, dict[str, list[float]]]:
    """Train the encoder classifier on ``num_workers`` Ray Train workers; return it (eval mode) and its history."""
    from ray.train import RunConfig as RayRunConfig
    from ray.train import ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from safetensors.torch import load_file

    from hclr_ids import training
    from hclr_ids.experiments.tune import init_ray
    from hclr_ids.networks import EncoderClassifier
    from hclr_ids.pipeline import _cpu_count

    if num_workers < 1:
        raise ValueError(f"--ray-workers must be >= 1, got {num_workers}")
    n_classes = len(prepared.classes)
    known = prepared.y_val < n_classes
    training.set_seed(config.seed)
    model = EncoderClassifier(config.encoder, prepared.X_train.shape[1], n_classes)
    model.encoder.fit_inputs(prepared.X_train)
    loop_config = {
        "encoder": config.to_dict()["encoder"], "seed": config.seed, "threads": max(1, config.threads or 1),
        "X_train": prepared.X_train, "y_train": prepared.y_train, "X_val": prepared.X_val[known],
        "y_val": prepared.y_val[known], "n_classes": n_classes,
        "initial_state": {k: v.clone() for k, v in model.state_dict().items()},
    }
    init_ray(address, num_cpus=None if address else max(_cpu_count(), num_workers + 1))
    trainer = TorchTrainer(
        _train_loop_per_worker, train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=False, resources_per_worker={"CPU": 1}),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RayRunConfig(name="train-encoder", storage_path=str(Path(out_dir).resolve() / "ray_train")),
    )
    start = time.perf_counter()
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train returned no checkpoint (error: {result.error}); see {out_dir}/ray_train")
    with result.checkpoint.as_directory() as folder:
        model.load_state_dict(load_file(str(Path(folder) / WEIGHTS_FILE)))
        history = json.loads((Path(folder) / HISTORY_FILE).read_text(encoding="utf-8"))
    logger.info("distributed encoder training on %d workers: %.1f s, best val/macro_f1 %.4f",
                num_workers, time.perf_counter() - start, result.metrics["val_macro_f1"])
    return model.eval(), history


def train_distributed(config: RunConfig, out_dir: str | Path, *, num_workers: int,
                      address: str | None = None) -> dict[str, Any]:
    """Train like :func:`hclr_ids.pipeline.train`, with the encoder trained data-parallel on Ray Train.

    Writes the same bundle, ``train_info.json``, ``validation_metrics.json`` and ``history.json`` to
    ``out_dir`` and returns the validation metrics. ``address`` names an existing Ray cluster; None starts a
    local instance bound to loopback.
    """
    from hclr_ids import pipeline, training

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dataset, folds, info = pipeline.load_and_split(config)
    if len(folds) > 1:
        raise ValueError("--folds applies to 'hclr-ids run'; 'train' fits one model on one split")
    training.set_seed(config.seed)
    prepared = pipeline.prepare(config, dataset, folds[0])
    start = time.perf_counter()
    encoder, enc_history = train_encoder_distributed(config, prepared, out, num_workers=num_workers, address=address)
    seconds = {"encoder": time.perf_counter() - start}
    history: dict[str, dict[str, list[float]]] = {"encoder": enc_history}
    head, extra = None, {}
    if config.rl.head != "softmax":
        from hclr_ids.rl import hybrid

        known = prepared.y_val < len(prepared.classes)
        start = time.perf_counter()
        with pipeline.torch_threads(config.rl.threads):
            head, history["rl"] = hybrid.train_head(
                training.embed(encoder, prepared.X_train), prepared.y_train, len(prepared.classes), config.rl,
                seed=config.seed, val_states=training.embed(encoder, prepared.X_val[known]),
                val_labels=prepared.y_val[known])
        seconds["rl_head"] = time.perf_counter() - start
        if config.rl.head == "hybrid":
            extra[f"{pipeline.encoder_name(config.encoder.architecture)} + DQN"] = head.dqn
    model = pipeline.TrainedModel(encoder, head, config.rl.head, history, extra_heads=extra, seconds=seconds)
    pipeline.save_model(out, config, prepared, model)
    proba = pipeline.predict_proba_models(model, prepared.X_val)[pipeline.HCLR_NAME]
    metrics = pipeline.evaluate_probabilities(prepared.y_val, proba, prepared.eval_labels)
    context = pipeline._context(config, prepared, info)
    context["split_fingerprint"] = pipeline.split_fingerprint(folds[0])
    context["ray"] = {"num_workers": num_workers, "address": address, "seconds": seconds}
    pipeline.write_json(out / "train_info.json", context)
    pipeline.write_json(out / "validation_metrics.json", metrics)
    pipeline.write_json(out / "history.json", history)
    return metrics
