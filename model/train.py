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
import logging
import math
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import data as datalib
from .architectures import CONTEXT_ARCHS, TRAINING, build
from .metrics import roc_auc

STATE_FILE = "state.json"
log = logging.getLogger("idcmap")
#: environment of the training workers: TensorFlow's C++ start-up messages off (its threads are
#: set per worker in the loop, so not OMP_NUM_THREADS=1 as for scoring)
TRAINING_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2"}
WORKER_FAILURES = 3  # restarts of the worker group (from its last checkpoint) before a run fails


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
    consistency: float = 0.0  # weight of the two-view consistency loss (Jensen-Shannon); 0: off
    wide_stain: float = 0.0  # with consistency: the second view's stain strength; it is only pulled to the first's
    # prediction (held fixed), and the cross-entropy is on the first view alone; 0: two alike views
    label_smoothing: float = 0.0  # targets 1 - s/2 and s/2 instead of 1 and 0 (coarse region labels)
    robust_q: float = 0.0  # generalised cross-entropy (1 - p^q) / q, robust to wrong labels; 0: cross-entropy
    patient_power: float = 0.0  # each patch weighted by its patient's patch count^-power (0: off, 1: patients equal)
    ema: float = 0.0  # momentum of the weights' moving average that is validated and saved as the model; 0: off
    weight_decay: float = 0.0  # AdamW's decoupled weight decay; 0: Adam
    mixup: float = 0.0  # each training patch blended with another by a share ~ Beta(a, a), labels too; 0: off
    stain_normalise: bool = False  # each patient's patches Macenko-normalised (folds only, for now)
    num_workers: int = 1
    cpus: int = 2  # threads shared by the workers
    seed: int = 0
    limit_per_patient: int | None = None  # for smoke tests: at most N patches per patient
    cache_dir: str | None = None  # memoise the decoded patches here (.npz)
    # filled in by the driver before the workers start
    split: dict = field(default_factory=dict)
    normalisation: dict = field(default_factory=dict)
    resume_from: str | None = None  # a checkpoint directory
    start_marker: str | None = None  # each worker rank leaves <start_marker>.rank<N>: found at its start = a restart


def load_patches(cfg: TrainConfig) -> datalib.PatchSet:
    """Every patch ``cfg`` trains on, as its network takes them."""
    return datalib.load_patches_cached(
        cfg.data_dirs,
        cfg.cache_dir,
        cfg.stain_normalise,
        CONTEXT_ARCHS.get(cfg.arch, 0),
        limit_per_patient=cfg.limit_per_patient,
    )


def load_split_data(cfg: TrainConfig):
    """(train, validation) patch sets for ``cfg`` (its split, or a fresh one)."""
    ps = load_patches(cfg)
    split = cfg.split or datalib.split_patients(ps)
    return datalib.apply_split(ps, split) + (split,)


def _epoch_indices(draw: np.ndarray | None, n: int, cfg: TrainConfig, epoch: int) -> np.ndarray:
    """The global order of the ``n`` training patches for an epoch (same on every worker): a
    permutation, or ``n`` drawn with probabilities ``draw`` (balanced sampling)."""
    rng = np.random.default_rng([cfg.seed, epoch])
    if draw is not None:
        return rng.choice(n, n, replace=True, p=draw)
    return rng.permutation(n)


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    spec = TRAINING[cfg.arch]
    if spec["schedule"] == "cosine":
        return spec["lr"] * 0.5 * (1.0 + math.cos(math.pi * epoch / max(cfg.epochs, 1)))
    return spec["lr"]


def _optimizer(cfg: TrainConfig):
    import keras

    ema = {"use_ema": True, "ema_momentum": cfg.ema} if cfg.ema > 0 else {}
    if cfg.weight_decay > 0:
        return keras.optimizers.AdamW(learning_rate(cfg, 0), weight_decay=cfg.weight_decay, **ema)
    return keras.optimizers.Adam(learning_rate(cfg, 0), **ema)


@contextmanager
def _averaged(model, optimizer):
    """Within: the model's trainable weights are the optimizer's moving average of them, if it keeps
    one (``--ema``); its own weights are back after."""
    if not optimizer.use_ema:
        yield
        return
    trained = [v.numpy() for v in model.trainable_variables]
    optimizer.finalize_variable_values(model.trainable_variables)
    try:
        yield
    finally:
        for v, w in zip(model.trainable_variables, trained):
            v.assign(w)


def _save_checkpoint(path: Path, model, optimizer, state: dict, best_weights: bytes | None) -> bytes:
    """Write a checkpoint; returns the bytes of the best weights so far (this epoch's if None).
    ``last`` holds the weights training goes on from, ``best`` the model (their average with --ema)."""
    model.save_weights(path / "last.weights.h5")
    if best_weights is None:
        with _averaged(model, optimizer):
            model.save_weights(path / "best.weights.h5")
        best_weights = (path / "best.weights.h5").read_bytes()
    else:
        (path / "best.weights.h5").write_bytes(best_weights)
    np.savez(path / "optimizer.npz", *[np.asarray(v) for v in optimizer.variables])
    (path / STATE_FILE).write_text(json.dumps(state, indent=1))
    return best_weights


def class_balance(cfg: TrainConfig, patches: datalib.PatchSet) -> tuple[np.ndarray, dict[int, float]]:
    """(per-patch patient weights, class weights counted with them): how training on ``patches``
    weighs them. Imbalance "weights" puts both in the loss, "sampling" draws patches by the class
    weights and puts the patient weights in the loss; either way the classes weigh alike."""
    pw = datalib.patient_weights(patches.patient_ids, cfg.patient_power)
    return pw, datalib.class_weights(patches.labels, pw)


def _training_arrays(cfg: TrainConfig):
    """(train, validation, int32 labels, per-patch loss weights, per-patch draw probabilities or
    None) for a worker."""
    train, val, _ = load_split_data(cfg)
    y_train = train.labels.astype(np.int32)
    if len(y_train) < cfg.global_batch_size:
        raise datalib.DataError(f"{len(y_train)} training patches < one global batch of {cfg.global_batch_size}")
    pw, cw = class_balance(cfg, train)
    per_class = np.where(y_train == 1, cw[1], cw[0])
    loss_weight = pw * per_class if cfg.imbalance == "weights" else pw
    draw = per_class / per_class.sum() if cfg.imbalance == "sampling" else None
    return train, val, y_train, loss_weight.astype(np.float32), draw


def _started_before(cfg: TrainConfig) -> bool:
    """Whether this worker rank already started in this fit (and leaves its mark if not)."""
    import ray.train

    if not cfg.start_marker:
        return False
    marker = Path(f"{cfg.start_marker}.rank{ray.train.get_context().get_world_rank()}")
    if marker.exists():
        return True
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    return False


def _restore(cfg: TrainConfig, model, optimizer) -> tuple[dict, bytes | None]:
    """The run state and best weights so far: from Ray Train's checkpoint (a restarted run), or
    ``cfg.resume_from`` (``--resume``), or a fresh state."""
    import ray.train

    state: dict[str, Any] = {
        "epoch": -1,
        "best_auc": -1.0,
        "best_epoch": -1,
        "stale": 0,
        "history": [],
        "arch": cfg.arch,
        "width": cfg.width,
    }
    ckpt = ray.train.get_checkpoint()
    # the worker group restarted (a worker or its node was lost), after this fit's first checkpoint
    # or before it: on record
    restarted = _started_before(cfg) or ckpt is not None
    resume_dir = Path(ckpt.to_directory()) if ckpt is not None else (Path(cfg.resume_from) if cfg.resume_from else None)
    if resume_dir is not None:
        state = json.loads((resume_dir / STATE_FILE).read_text())
    if restarted:
        state.setdefault("restarts", []).append(state["epoch"] + 1)
    if resume_dir is None:
        return state, None
    model.load_weights(resume_dir / "last.weights.h5")
    saved = np.load(resume_dir / "optimizer.npz")
    for i, v in enumerate(optimizer.variables):
        v.assign(saved[f"arr_{i}"])
    return state, (resume_dir / "best.weights.h5").read_bytes()


def _step_functions(cfg: TrainConfig, model, optimizer, strategy):
    """(train_step, predict, average_statistics) as ``tf.function``s."""
    import tensorflow as tf

    from .augment import augment
    from .scoring import normalise

    loss_fn = cross_entropy(cfg.label_smoothing, cfg.robust_q)

    def view(x, stain_strength=cfg.stain_strength):
        x = augment(tf.cast(x, tf.float32), cfg.colour_strength, stain_strength, cfg.artefact_strength)
        return normalise(x, cfg.normalisation)

    def replica_step(x, y, w):
        partner, share = mixup_pairs(tf.shape(x)[0], cfg.mixup)
        fit, weight = mixed_loss(loss_fn, y, w, partner, share)
        with tf.GradientTape() as tape:
            if cfg.consistency > 0:  # two augmented views of each patch, one forward pass
                second = view(x, cfg.wide_stain or cfg.stain_strength)
                both = tf.concat([mix_images(view(x), partner, share), mix_images(second, partner, share)], 0)
                p1, p2 = tf.split(model(both, training=True), 2)
                per_patch = two_view_loss(fit, weight, p1, p2, cfg.consistency, wide=cfg.wide_stain > 0)
            else:
                per_patch = fit(model(mix_images(view(x), partner, share), training=True))
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
        reduced = strategy.run(
            lambda: tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in stats]
            )
        )
        for v, r in zip(stats, reduced):
            v.assign(strategy.experimental_local_results(r)[0])

    return train_step, predict, average_statistics


def cross_entropy(label_smoothing: float = 0.0, q: float = 0.0):
    """Per-patch cross-entropy of (N, 2) softmax outputs against int labels, the one-hot targets
    smoothed to 1 - s/2 and s/2 (Keras' convention). With ``q`` > 0, the generalised cross-entropy
    of Zhang & Sabuncu 2018, sum_k t_k (1 - p_k^q) / q: cross-entropy as q -> 0, the mean absolute
    error at q = 1; a confidently contradicted label (a wrong one, often) pulls with p^q of
    cross-entropy's gradient."""
    import keras
    import tensorflow as tf

    if q > 0:

        def generalised(y, p):
            t = tf.one_hot(y, 2) * (1 - label_smoothing) + label_smoothing / 2
            return tf.reduce_sum(t * (1 - tf.pow(tf.clip_by_value(p, 1e-7, 1.0), q)), axis=-1) / q

        return generalised
    loss = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing, reduction=None)
    return lambda y, p: loss(tf.one_hot(y, 2), p)


def mixup_pairs(n, alpha: float):
    """Mixup (Zhang et al. 2018): each patch's partner, a shuffle of the batch, and the share of
    itself it keeps, ~ Beta(alpha, alpha). At alpha 0 every patch is its own partner and keeps all."""
    import tensorflow as tf

    if alpha <= 0:
        return tf.range(n), tf.ones([n])
    a, b = tf.random.gamma([n], alpha), tf.random.gamma([n], alpha)
    return tf.random.shuffle(tf.range(n)), tf.math.divide_no_nan(a, a + b)


def mix_images(x, partner, share):
    """Each image blended with its partner's: share x + (1 - share) x[partner]."""
    import tensorflow as tf

    s = tf.reshape(share, [-1, 1, 1, 1])
    return s * x + (1.0 - s) * tf.gather(x, partner)


def mixed_loss(loss_fn, y, w, partner, share):
    """(loss, weight) of patches mixed by (partner, share): loss(p) is each label's weighted loss
    for the prediction p, in its patch's share of the mix; weight, the mixed patch's weight."""
    import tensorflow as tf

    y2, w2 = tf.gather(y, partner), tf.gather(w, partner)
    return (lambda p: share * loss_fn(y, p) * w + (1.0 - share) * loss_fn(y2, p) * w2), share * w + (1.0 - share) * w2


def jensen_shannon(p, q):
    """Per row, the Jensen-Shannon divergence between two class-probability vectors (nats)."""
    import tensorflow as tf

    p, q = tf.clip_by_value(p, 1e-7, 1.0), tf.clip_by_value(q, 1e-7, 1.0)
    m = 0.5 * (p + q)
    return 0.5 * tf.reduce_sum(p * tf.math.log(p / m) + q * tf.math.log(q / m), axis=-1)


def two_view_loss(fit, weight, p1, p2, consistency: float, wide: bool = False):
    """Per patch: the mean of both views' losses ``fit(p)`` plus ``consistency`` times their
    Jensen-Shannon divergence (in the patch's ``weight``). ``wide``: the second view is only pulled
    to the first's prediction, which is held fixed there, and the loss is the first view's alone."""
    import tensorflow as tf

    if wide:
        return fit(p1) + consistency * jensen_shannon(tf.stop_gradient(p1), p2) * weight
    return 0.5 * (fit(p1) + fit(p2)) + consistency * jensen_shannon(p1, p2) * weight


def _validation_auc(predict, val) -> float | None:
    """ROC AUC on the validation patches (None: nothing held out; nan: one class only)."""
    if not len(val):
        return None
    scores = np.concatenate([predict(val.images[i : i + 512]).numpy() for i in range(0, len(val), 512)])
    return roc_auc(val.labels, scores)


def train_loop_per_worker(config: dict):
    """The Ray Train worker loop (``config`` is a TrainConfig as a dict)."""
    import ray.train
    import tensorflow as tf

    cfg = TrainConfig(**config)
    threads = max(1, cfg.cpus // max(cfg.num_workers, 1))
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    train, val, y_train, sample_weight, draw = _training_arrays(cfg)
    per_replica, steps = cfg.global_batch_size // world, len(y_train) // cfg.global_batch_size
    with strategy.scope():
        model = build(cfg.arch, cfg.width)
        optimizer = _optimizer(cfg)
        optimizer.build(model.trainable_variables)
    state, best_weights = _restore(cfg, model, optimizer)
    train_step, predict, average_statistics = _step_functions(cfg, model, optimizer, strategy)

    for epoch in range(state["epoch"] + 1, cfg.epochs):
        if state["stale"] >= cfg.patience:
            break
        optimizer.learning_rate.assign(learning_rate(cfg, epoch))
        order = _epoch_indices(draw, len(y_train), cfg, epoch)[: steps * cfg.global_batch_size]
        t0, total = time.perf_counter(), 0.0
        for idx in order.reshape(steps, world, per_replica)[:, rank]:
            idx = np.sort(idx)
            total += float(train_step(train.images[idx], y_train[idx], sample_weight[idx]))
        if world > 1:
            average_statistics()
        seconds = time.perf_counter() - t0
        with _averaged(model, optimizer):
            auc = _validation_auc(predict, val)
        improved = auc is None or auc > state["best_auc"] + 1e-4  # nothing held out: the last epoch is the model
        state.update(epoch=epoch, stale=0 if improved else state["stale"] + 1)
        if improved:
            state.update(best_auc=auc if auc is not None else state["best_auc"], best_epoch=epoch)
        metrics = {
            "epoch": epoch + 1,
            "loss": total / steps,
            "val_auc": auc,
            "patches_per_s": steps * cfg.global_batch_size / seconds,
            "epoch_s": seconds,
            "lr": learning_rate(cfg, epoch),
            "best_val_auc": state["best_auc"],
            "best_epoch": state["best_epoch"] + 1,
        }
        state["history"].append(metrics)
        if rank != 0:
            ray.train.report(metrics)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            best_weights = _save_checkpoint(Path(tmp), model, optimizer, state, None if improved else best_weights)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _readable(ckpt: Path) -> bool:
    """Whether every file of a checkpoint opens whole: a run killed while Ray copied it can leave
    one with a truncated file, which a resume must pass over."""
    import zipfile

    import h5py

    try:
        for name in ("last.weights.h5", "best.weights.h5"):
            h5py.File(ckpt / name, "r").close()
        np.load(ckpt / "optimizer.npz").close()
        return True
    except (OSError, ValueError, zipfile.BadZipFile):
        return False


def latest_checkpoint(run_dir) -> Path | None:
    """The whole checkpoint directory under ``run_dir`` with the most epochs done, or None."""
    done = []
    for state_file in Path(run_dir).rglob(STATE_FILE):
        try:
            done.append((json.loads(state_file.read_text())["epoch"], state_file.parent))
        except (ValueError, KeyError):
            continue
    for _, ckpt in sorted(done, key=lambda d: d[0], reverse=True):
        if _readable(ckpt):
            return ckpt
        log.warning("[train] %s: incomplete checkpoint (a run stopped while writing it), passed over", ckpt)
    return None


def prepare(cfg: TrainConfig):
    """Driver side, before the workers start: fix the split and the normalisation in ``cfg``.

    Returns the (train, validation) patch sets, which the driver needs again after training.
    """
    train, val, split = load_split_data(cfg)
    if not len(val) or len(set(val.labels.tolist())) < 2:
        raise datalib.DataError("validation patients hold a single class; give more patients")
    cfg.split = split
    cfg.normalisation = {
        "input": "RGB uint8, 50x50, white-padded partial patches",
        "formula": "(x - mean) / std per channel",
        **datalib.channel_stats(train.images),
    }
    return train, val


class _EpochLog:
    """Logs each reported epoch on the driver: a Ray Train callback (it runs in the train
    controller) forwards worker 0's metrics through a Ray queue, which the driver reads."""

    def __init__(self, cfg: TrainConfig, label: str):
        import ray
        from ray.train import UserCallback
        from ray.util.queue import Queue
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # on the driver's node: a queue on a worker node would die with it, and the driver with it
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        queue = self.queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})

        class Forward(UserCallback):
            def after_report(self, run_context, metrics, checkpoint):
                queue.put(metrics[0])

            def after_exception(self, run_context, worker_exceptions):
                rank, exc = min(worker_exceptions.items(), key=lambda item: item[0])
                first = (str(exc).splitlines() or [""])[0][:200]
                queue.put({"failed": f"worker {rank}: {type(exc).__name__}: {first}"})

        self.callback, self.cfg, self.label = Forward(), cfg, label
        self.seconds: list[float] = []

    def drain(self, timeout: float) -> None:
        """Log the epochs reported so far (waiting up to ``timeout`` s for the first)."""
        from ray.util.queue import Empty

        try:
            while True:
                self._log(self.queue.get(timeout=timeout))
                timeout = 0.01
        except Empty:
            pass

    def _log(self, m: dict) -> None:
        if "failed" in m:
            log.warning(
                "[train] %s %s; the workers restart from the last checkpoint (at most %d times)",
                self.label,
                m["failed"],
                WORKER_FAILURES,
            )
            return
        self.seconds.append(m["epoch_s"])
        eta = (self.cfg.epochs - m["epoch"]) * sum(self.seconds) / len(self.seconds)
        val = f"val_auc {m['val_auc']:.4f} (best {m['best_val_auc']:.4f} @ {m['best_epoch']}) " if m["val_auc"] else ""
        log.info(
            "[train] %s epoch %d/%d loss %.4f %s%.0f patches/s, %.0f s; ETA %d:%02d",
            self.label,
            m["epoch"],
            self.cfg.epochs,
            m["loss"],
            val,
            m["patches_per_s"],
            m["epoch_s"],
            eta // 60,
            eta % 60,
        )


def _fit_logging_epochs(trainer, epochs: _EpochLog):
    """``trainer.fit()`` in a thread while this one logs the epochs it reports; its result (or its
    exception, raised here)."""
    import threading

    outcome: dict = {}

    def run():
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # raised again below, in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    while thread.is_alive():
        epochs.drain(timeout=1.0)
    epochs.drain(timeout=0.01)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def fit(
    cfg: TrainConfig, run_dir, resume_from: Path | None = None, ray_address: str | None = None, label: str = ""
) -> Path:
    """Run the Ray Train job (in the session of :func:`idcmap.cluster.ray_session`, joining a
    cluster at ``ray_address`` if given), continuing from the checkpoint ``resume_from`` if given;
    returns the directory of its final checkpoint. Progress: one line per epoch on the ``idcmap``
    logger."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    from idcmap.cluster import ray_session

    run_dir = Path(run_dir).resolve()
    if resume_from is not None:
        last = Path(resume_from).resolve()
        cfg.resume_from = str(last)
        log.info(
            "[train] %s resuming after epoch %d (%s)",
            label or cfg.arch,
            json.loads((last / STATE_FILE).read_text())["epoch"] + 1,
            last,
        )
    name = f"{cfg.arch}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    cfg.start_marker = str(run_dir / name / "worker-started")
    with ray_session(ray_address, num_cpus=max(2, cfg.cpus), env_vars=TRAINING_ENV):
        epochs = _EpochLog(cfg, label or cfg.arch)
        trainer = TensorflowTrainer(
            train_loop_per_worker,
            train_loop_config=asdict(cfg),
            scaling_config=ScalingConfig(
                num_workers=cfg.num_workers, use_gpu=False, resources_per_worker={"CPU": cfg.cpus / cfg.num_workers}
            ),
            run_config=RunConfig(
                name=name,
                storage_path=str(run_dir),
                callbacks=[epochs.callback],  # Ray Train V2 takes UserCallbacks
                checkpoint_config=CheckpointConfig(num_to_keep=2),
                # a worker (or its node) lost: the group restarts from the last checkpoint
                failure_config=FailureConfig(max_failures=WORKER_FAILURES),
            ),
        )
        result = _fit_logging_epochs(trainer, epochs)
    if result.checkpoint is None:
        if cfg.resume_from:  # nothing left to do: the resumed run had already finished
            return Path(cfg.resume_from)
        raise RuntimeError("training reported no checkpoint")
    return Path(result.checkpoint.path)
