"""Training as a Ray Train job: TensorflowTrainer, MultiWorkerMirroredStrategy, a custom step.

Keras 3 ``model.fit`` fails under MultiWorkerMirroredStrategy inside Ray Train (keras#20585,
ray#47464), so each worker runs its own loop: a ``tf.function`` step through ``strategy.run``
whose gradients the Keras optimizer all-reduces (sum) across workers; the loss is therefore
scaled by the *global* batch size. Every worker sees the same shuffled order of the training
patches and takes its own stride of it; every worker scores the whole validation set, so the
early-stopping decision is identical on all of them. Rank 0 writes a checkpoint each epoch.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from idcmap.errors import InputError

from . import data as datalib
from .architectures import TRAINING, build

STATE_FILE = "state.json"


@dataclass
class TrainConfig:
    data_dirs: list[str]
    arch: str = "idcnet"
    width: int | None = None  # idcnet channel width (None: the architecture's default)
    epochs: int = 20
    global_batch_size: int = 64
    patience: int = 4  # epochs without a better validation AUC before stopping
    imbalance: str = "weights"  # "weights" (class weights), "sampling" (balanced) or "none"
    colour_strength: float = 1.0  # scales the colour jitter ranges of the augmentation
    stain_strength: float = 0.0  # scales the HED (stain space) jitter and gamma; 0: off
    artefact_strength: float = 0.0  # scales the blur and JPEG augmentation; 0: off
    num_workers: int = 1
    cpus: int = 2  # threads shared by the workers
    seed: int = 0
    limit_per_patient: int | None = None  # for smoke tests: at most N patches per patient
    cache_dir: str | None = None  # memoise the decoded patches here (.npz)
    # filled in by the driver before the workers start
    split: dict = field(default_factory=dict)
    normalisation: dict = field(default_factory=dict)
    resume_from: str | None = None  # a checkpoint directory


def load_split_data(cfg: TrainConfig):
    """(train, validation) patch sets for ``cfg`` (its split, or a fresh one)."""
    ps = datalib.load_patches_cached(cfg.data_dirs, cfg.cache_dir, limit_per_patient=cfg.limit_per_patient)
    split = cfg.split or datalib.split_patients(ps)
    return datalib.apply_split(ps, split) + (split,)


def _epoch_indices(labels: np.ndarray, cfg: TrainConfig, epoch: int) -> np.ndarray:
    """The global order of training patches for an epoch (same on every worker)."""
    rng = np.random.default_rng([cfg.seed, epoch])
    if cfg.imbalance == "sampling":
        cw = datalib.class_weights(labels)
        w = np.where(labels == 1, cw[1], cw[0])
        return rng.choice(len(labels), len(labels), replace=True, p=w / w.sum())
    return rng.permutation(len(labels))


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    spec = TRAINING[cfg.arch]
    if spec["schedule"] == "cosine":
        return spec["lr"] * 0.5 * (1.0 + math.cos(math.pi * epoch / max(cfg.epochs, 1)))
    return spec["lr"]


def _save_checkpoint(path: Path, model, optimizer, state: dict, best_weights: bytes | None) -> bytes:
    """Write a checkpoint; returns the bytes of the best weights so far (this epoch's if None)."""
    model.save_weights(path / "last.weights.h5")
    if best_weights is None:
        best_weights = (path / "last.weights.h5").read_bytes()
    (path / "best.weights.h5").write_bytes(best_weights)
    np.savez(path / "optimizer.npz", *[np.asarray(v) for v in optimizer.variables])
    (path / STATE_FILE).write_text(json.dumps(state, indent=1))
    return best_weights


def train_loop_per_worker(config: dict):
    """The Ray Train worker loop (``config`` is a TrainConfig as a dict)."""
    import keras
    import ray.train
    import tensorflow as tf
    from sklearn.metrics import roc_auc_score

    from .augment import augment
    from .scoring import normalise

    cfg = TrainConfig(**config)
    threads = max(1, cfg.cpus // max(cfg.num_workers, 1))
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()

    train, val, _ = load_split_data(cfg)
    y_train = train.labels.astype(np.int32)
    cw = datalib.class_weights(y_train) if cfg.imbalance == "weights" else {0: 1.0, 1: 1.0}
    sample_weight = np.where(y_train == 1, cw[1], cw[0]).astype(np.float32)
    per_replica = cfg.global_batch_size // world
    steps = len(y_train) // cfg.global_batch_size
    if steps < 1:
        raise datalib.DataError(f"{len(y_train)} training patches < one global batch of {cfg.global_batch_size}")

    with strategy.scope():
        model = build(cfg.arch, cfg.width)
        optimizer = keras.optimizers.Adam(learning_rate(cfg, 0))
        optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(reduction=None)

    state = {"epoch": -1, "best_auc": -1.0, "best_epoch": -1, "stale": 0, "history": [],
             "arch": cfg.arch, "width": cfg.width}
    ckpt = ray.train.get_checkpoint()
    resume_dir, best_weights = None, None
    if ckpt is not None:
        resume_dir = Path(ckpt.to_directory())
    elif cfg.resume_from:
        resume_dir = Path(cfg.resume_from)
    if resume_dir is not None:
        state = json.loads((resume_dir / STATE_FILE).read_text())
        model.load_weights(resume_dir / "last.weights.h5")
        best_weights = (resume_dir / "best.weights.h5").read_bytes()
        saved = np.load(resume_dir / "optimizer.npz")
        for i, v in enumerate(optimizer.variables):
            v.assign(saved[f"arr_{i}"])
        if rank == 0:
            print(f"[train] resumed from {resume_dir} after epoch {state['epoch'] + 1}", flush=True)

    def replica_step(x, y, w):
        x = normalise(augment(tf.cast(x, tf.float32), cfg.colour_strength, cfg.stain_strength,
                              cfg.artefact_strength),
                      cfg.normalisation)
        with tf.GradientTape() as tape:
            per_patch = loss_fn(y, model(x, training=True)) * w
            loss = tf.nn.compute_average_loss(per_patch, global_batch_size=cfg.global_batch_size)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function
    def train_step(x, y, w):
        losses = strategy.run(replica_step, args=(x, y, w))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    @tf.function
    def predict(x):
        return model(normalise(tf.cast(x, tf.float32), cfg.normalisation), training=False)[:, 1]

    @tf.function
    def average_statistics():
        """Average the batch-norm moving statistics over the workers, so all hold one model."""
        stats = [v for v in model.non_trainable_variables if "float" in str(v.dtype)]
        reduced = strategy.run(lambda: tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in stats]))
        for v, r in zip(stats, reduced):
            v.assign(strategy.experimental_local_results(r)[0])

    for epoch in range(state["epoch"] + 1, cfg.epochs):
        if state["stale"] >= cfg.patience:
            break
        optimizer.learning_rate.assign(learning_rate(cfg, epoch))
        order = _epoch_indices(y_train, cfg, epoch)[: steps * cfg.global_batch_size]
        mine = order.reshape(steps, world, per_replica)[:, rank]
        t0, total = time.perf_counter(), 0.0
        for idx in mine:
            idx = np.sort(idx)
            total += float(train_step(train.images[idx], y_train[idx], sample_weight[idx]))
        if world > 1:
            average_statistics()
        seconds = time.perf_counter() - t0
        if len(val):
            scores = np.concatenate([predict(val.images[i:i + 512]).numpy()
                                     for i in range(0, len(val), 512)])
            auc = float(roc_auc_score(val.labels, scores)) if len(set(val.labels.tolist())) == 2 else float("nan")
            improved = auc > state["best_auc"] + 1e-4
        else:  # a fixed number of epochs, nothing held out: the last epoch is the model
            auc, improved = None, True
        state.update(epoch=epoch, stale=0 if improved else state["stale"] + 1)
        if improved:
            state.update(best_auc=auc if auc is not None else state["best_auc"], best_epoch=epoch)
        metrics = {"epoch": epoch + 1, "loss": total / steps, "val_auc": auc,
                   "patches_per_s": steps * cfg.global_batch_size / seconds, "epoch_s": seconds,
                   "lr": learning_rate(cfg, epoch), "best_val_auc": state["best_auc"],
                   "best_epoch": state["best_epoch"] + 1}
        state["history"].append(metrics)
        if rank == 0:
            val_text = (f"val_auc {auc:.4f} (best {state['best_auc']:.4f} @ {state['best_epoch'] + 1}) "
                        if auc is not None else "")
            print(f"[train] {cfg.arch} epoch {epoch + 1}/{cfg.epochs} loss {metrics['loss']:.4f} "
                  f"{val_text}{metrics['patches_per_s']:.0f} patches/s ({seconds:.0f} s)", flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                best_weights = _save_checkpoint(Path(tmp), model, optimizer, state,
                                                None if improved else best_weights)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)


def latest_checkpoint(run_dir) -> Path | None:
    """The checkpoint directory under ``run_dir`` with the most epochs done, or None."""
    best, best_epoch = None, -2
    for state_file in Path(run_dir).rglob(STATE_FILE):
        epoch = json.loads(state_file.read_text())["epoch"]
        if epoch > best_epoch:
            best, best_epoch = state_file.parent, epoch
    return best


def prepare(cfg: TrainConfig):
    """Driver side, before the workers start: fix the split and the normalisation in ``cfg``.

    Returns the (train, validation) patch sets, which the driver needs again after training.
    """
    train, val, split = load_split_data(cfg)
    if not len(val) or len(set(val.labels.tolist())) < 2:
        raise datalib.DataError("validation patients hold a single class; give more patients")
    cfg.split = split
    cfg.normalisation = {"input": "RGB uint8, 50x50, white-padded partial patches",
                         "formula": "(x - mean) / std per channel", **datalib.channel_stats(train.images)}
    return train, val


def fit(cfg: TrainConfig, run_dir, resume: bool = False, ray_address: str | None = None) -> Path:
    """Run the Ray Train job; returns the directory of its final checkpoint."""
    import ray
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    run_dir = Path(run_dir).resolve()
    if resume:
        last = latest_checkpoint(run_dir)
        if last is None:
            raise InputError(f"{run_dir}: no checkpoint to resume from (train without --resume)")
        cfg.resume_from = str(last)
    if not ray.is_initialized():
        if ray_address:
            ray.init(address=ray_address)
        else:  # embedded local instance
            ray.init(num_cpus=max(2, cfg.cpus), include_dashboard=False)
    trainer = TensorflowTrainer(
        train_loop_per_worker,
        train_loop_config=asdict(cfg),
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=False,
                                     resources_per_worker={"CPU": cfg.cpus / cfg.num_workers}),
        run_config=RunConfig(name=f"{cfg.arch}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
                             storage_path=str(run_dir),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        if cfg.resume_from:  # nothing left to do: the resumed run had already finished
            return Path(cfg.resume_from)
        raise RuntimeError("training reported no checkpoint")
    return Path(result.checkpoint.path)
