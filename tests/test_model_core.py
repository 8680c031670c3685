"""The model's numeric core without Ray: architectures, calibration, metrics, split, bundle hashes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from idcmap.errors import InputError
from idcmap.model.bundle import BundleError, load_bundle, write_manifest
from idcmap.model.calibration import calibrate, choose_threshold, fit_temperature, nll
from idcmap.model.data import PatchSet, apply_split, class_weights, split_patients
from idcmap.model.metrics import (
    average_precision,
    classification_metrics,
    expected_calibration_error,
    metrics_report,
    roc_auc,
)
from idcmap.model.scoring import (
    BASELINE_MIN_PATCHES,
    BASELINE_QUANTILE,
    calibrated_probability,
    idc_logit,
    logit,
    mix_neighbours,
    neighbour_counts,
    sigmoid,
    with_baseline,
    with_context,
)

# --- architectures ---------------------------------------------------------------------------


def test_seed_cnn_flops_and_shapes():
    from idcmap.model.architectures import build, flops_per_patch

    seed, net, deep = build("seed_cnn"), build("idcnet"), build("idcnet_deep", width=16)
    assert flops_per_patch(seed) == pytest.approx(145.5e6, rel=1e-3)
    assert flops_per_patch(net) < flops_per_patch(seed) / 2
    # idcnet_deep: a third separable block in each of the last three stages, 2 + 3 x 3 in all
    assert sum(layer.name.endswith("_sep") for layer in deep.layers) == 10
    assert deep.get_layer("stem_conv").output.shape[-1] == 16 and deep.get_layer("s4c_sep").output.shape[-1] == 128
    # the spec's Flatten is 12 x 12 x 128 = 18432 wide
    flatten = [type(layer).__name__ for layer in seed.layers].index("Flatten")
    assert seed.get_layer(index=flatten).output.shape[-1] == 18432
    x = np.random.default_rng(0).normal(size=(3, 50, 50, 3)).astype(np.float32)
    for m in (seed, net, deep):
        p = np.asarray(m(x, training=False))
        assert p.shape == (3, 2)
        np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-5)


def test_unknown_architecture_is_refused():
    from idcmap.model.architectures import build

    with pytest.raises(InputError, match="unknown architecture"):
        build("resnet999")
    with pytest.raises(InputError, match="seed_cnn has a fixed width"):
        build("seed_cnn", width=16)


def test_augmentation_keeps_pixels_and_range():
    import tensorflow as tf

    from idcmap.model.augment import augment, dihedral

    x = tf.constant(np.random.default_rng(1).integers(0, 256, (8, 50, 50, 3)), tf.float32)
    d = dihedral(x).numpy()
    # symmetries only move pixels: each image keeps its multiset of values
    np.testing.assert_array_equal(np.sort(d.reshape(8, -1), 1), np.sort(x.numpy().reshape(8, -1), 1))
    a = augment(x).numpy()
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 255


def test_consistency_loss_is_the_jensen_shannon_divergence():
    from scipy.spatial.distance import jensenshannon

    from idcmap.model.train import jensen_shannon

    rng = np.random.default_rng(2)
    p, q = rng.dirichlet([1, 1], 64).astype(np.float32), rng.dirichlet([1, 1], 64).astype(np.float32)
    js = jensen_shannon(p, q).numpy()
    np.testing.assert_allclose(js, jensenshannon(p, q, axis=1) ** 2, atol=1e-5)  # scipy's is its square root
    np.testing.assert_allclose(jensen_shannon(q, p).numpy(), js, atol=1e-7)
    assert np.abs(jensen_shannon(p, p).numpy()).max() < 1e-7
    one_hot = np.eye(2, dtype=np.float32)
    assert jensen_shannon(one_hot[:1], one_hot[1:]).numpy()[0] == pytest.approx(np.log(2), abs=1e-5)


def test_a_wide_second_view_learns_only_to_agree_with_the_first():
    import tensorflow as tf

    from idcmap.model.train import cross_entropy, jensen_shannon, two_view_loss

    rng = np.random.default_rng(4)
    p1, p2 = (tf.Variable(rng.dirichlet([1, 1], 16).astype(np.float32)) for _ in range(2))
    y, w = rng.integers(0, 2, 16), tf.constant(rng.uniform(0.5, 2, 16).astype(np.float32))
    ce = cross_entropy()

    def fit(p):
        return ce(y, p) * w

    def grads(wide):
        with tf.GradientTape() as tape:
            loss = two_view_loss(fit, w, p1, p2, 3.0, wide)
        return loss.numpy(), [g.numpy() for g in tape.gradient(loss, [p1, p2])]

    js = (jensen_shannon(p1, p2) * w).numpy()
    loss, (g1, g2) = grads(wide=True)
    np.testing.assert_allclose(loss, fit(p1).numpy() + 3.0 * js, rtol=1e-5)
    with tf.GradientTape() as tape:
        own = tf.reduce_sum(fit(p1))
    g_own = tape.gradient(own, p1).numpy()
    np.testing.assert_allclose(g1, g_own, rtol=1e-5)  # no pull towards the wide view
    assert np.abs(g2).max() > 1e-3  # the wide view is pulled, by the divergence alone
    loss, (g1_alike, _) = grads(wide=False)
    np.testing.assert_allclose(loss, 0.5 * (fit(p1) + fit(p2)).numpy() + 3.0 * js, rtol=1e-5)
    assert np.abs(g1_alike - 0.5 * g_own).max() > 1e-3  # alike views pull each other


def test_label_smoothing_moves_the_targets_off_zero_and_one():
    from idcmap.model.train import cross_entropy

    rng = np.random.default_rng(3)
    p = rng.dirichlet([1, 1], 32).astype(np.float32)
    y = rng.integers(0, 2, 32)
    own = p[np.arange(32), y]
    np.testing.assert_allclose(cross_entropy(0.0)(y, p).numpy(), -np.log(own), rtol=1e-5)
    smoothed = -(0.95 * np.log(own) + 0.05 * np.log(1 - own))  # s = 0.1: targets 0.95 and 0.05
    np.testing.assert_allclose(cross_entropy(0.1)(y, p).numpy(), smoothed, rtol=1e-5)
    # its minimum is at the smoothed target, not at certainty
    grid = np.stack([1 - np.linspace(0.01, 0.99, 99), np.linspace(0.01, 0.99, 99)], 1).astype(np.float32)
    best = grid[np.argmin(cross_entropy(0.1)(np.ones(99, int), grid).numpy()), 1]
    assert best == pytest.approx(0.95, abs=0.01)


def test_generalised_cross_entropy_weighs_a_contradicted_label_less():
    from idcmap.model.train import cross_entropy

    rng = np.random.default_rng(4)
    p = rng.dirichlet([1, 1], 32).astype(np.float32)
    y = rng.integers(0, 2, 32)
    own = p[np.arange(32), y]
    np.testing.assert_allclose(cross_entropy(0.0, 0.7)(y, p).numpy(), (1 - own**0.7) / 0.7, rtol=1e-5)
    np.testing.assert_allclose(cross_entropy(0.0, 1.0)(y, p).numpy(), 1 - own, rtol=1e-5)  # mean absolute error
    # q -> 0 is cross-entropy: (1 - p^q) / q = -log p - q log(p)^2 / 2 + O(q^2)
    q, ce = 1e-2, -np.log(own)
    np.testing.assert_allclose(cross_entropy(0.0, q)(y, p).numpy(), ce - q * ce**2 / 2, rtol=1e-3, atol=1e-4)
    # the gradient with respect to the logits: cross-entropy's times p^q, so a label the network
    # contradicts with p = 0.01 pulls 0.01^0.7 = 0.04 as hard as under cross-entropy
    import tensorflow as tf

    logits = tf.Variable(np.log(np.array([[0.99, 0.01], [0.01, 0.99]], np.float32)))
    grads = []
    for q in (0.0, 0.7):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(cross_entropy(0.0, q)(np.array([1, 1]), tf.nn.softmax(logits)))
        grads.append(tape.gradient(loss, logits).numpy()[:, 1])
    np.testing.assert_allclose(grads[1] / grads[0], [0.01**0.7, 0.99**0.7], rtol=1e-4)


def test_with_ema_the_checkpointed_model_is_the_weights_moving_average_and_training_goes_on_from_its_own(tmp_path):
    import keras

    from idcmap.model.train import TrainConfig, _optimizer, _save_checkpoint

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    optimizer = _optimizer(TrainConfig(data_dirs=[], ema=0.8))
    optimizer.build(model.trainable_variables)
    rng, path = np.random.default_rng(5), []
    for _ in range(6):
        grads = [rng.normal(size=v.shape).astype(np.float32) for v in model.trainable_variables]
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        path.append([v.numpy().copy() for v in model.trainable_variables])
    average = path[0]  # the average starts at the first step's weights
    for weights in path[1:]:
        average = [0.8 * a + 0.2 * w for a, w in zip(average, weights)]
    best = _save_checkpoint(tmp_path, model, optimizer, {}, None)
    for v, w in zip(model.trainable_variables, path[-1]):  # the model trains on from its own weights
        np.testing.assert_array_equal(v.numpy(), w)
    for name, expected in (("best", average), ("last", path[-1])):
        saved = keras.models.clone_model(model)
        saved.load_weights(tmp_path / f"{name}.weights.h5")
        for v, w in zip(saved.trainable_variables, expected):
            np.testing.assert_allclose(v.numpy(), w, rtol=1e-5, atol=1e-6)
    assert best == (tmp_path / "best.weights.h5").read_bytes()
    assert np.abs(average[0] - path[-1][0]).max() > 1e-3  # the two differ: the test can tell them apart


def test_weight_decay_shrinks_the_weights_by_lr_times_decay_each_step():
    import keras

    from idcmap.model.train import TrainConfig, _optimizer, learning_rate

    for decay in (0.0, 0.05):
        cfg = TrainConfig(data_dirs=[], weight_decay=decay, epochs=6)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, bias_initializer="ones")])
        before = [v.numpy().copy() for v in model.trainable_variables]
        optimizer = _optimizer(cfg)
        optimizer.apply_gradients([(np.zeros(v.shape, np.float32), v) for v in model.trainable_variables])
        for v, w in zip(model.trainable_variables, before):
            np.testing.assert_allclose(v.numpy(), w * (1 - learning_rate(cfg, 0) * decay), rtol=1e-6)


def test_mixup_blends_images_and_trains_towards_the_blend_of_their_labels():
    import tensorflow as tf
    from scipy.stats import beta, kstest

    from idcmap.model.train import cross_entropy, mix_images, mixed_loss, mixup_pairs

    tf.random.set_seed(6)
    partner, share = (t.numpy() for t in mixup_pairs(20000, 0.4))
    assert sorted(partner) == list(range(20000)) and (partner != np.arange(20000)).mean() > 0.99
    assert kstest(share, beta(0.4, 0.4).cdf).pvalue > 1e-3 and 0 <= share.min() and share.max() <= 1
    partner, share = (t.numpy() for t in mixup_pairs(5, 0.0))  # alpha 0: no mixing
    np.testing.assert_array_equal(partner, np.arange(5))
    np.testing.assert_array_equal(share, np.ones(5))

    rng = np.random.default_rng(7)
    x = rng.uniform(-2, 2, (4, 50, 50, 3)).astype(np.float32)
    partner, share = np.array([2, 0, 3, 1]), np.array([1.0, 0.25, 0.6, 0.0], np.float32)
    expected = share[:, None, None, None] * x + (1 - share[:, None, None, None]) * x[partner]
    np.testing.assert_allclose(mix_images(x, partner, share).numpy(), expected, rtol=1e-6)
    np.testing.assert_array_equal(mix_images(x, np.arange(4), np.ones(4, np.float32)).numpy(), x)

    # the loss is cross-entropy against the blended one-hot labels, each term weighted by its class weight
    y, w = np.array([1, 0, 0, 1]), np.array([3.0, 0.5, 0.5, 3.0], np.float32)
    p = rng.dirichlet([1, 1], 4).astype(np.float32)
    loss, weight = mixed_loss(cross_entropy(), y, np.ones(4, np.float32), partner, share)
    target = share[:, None] * np.eye(2)[y] + (1 - share[:, None]) * np.eye(2)[y[partner]]
    np.testing.assert_allclose(loss(p).numpy(), -(target * np.log(p)).sum(1), rtol=1e-5)
    np.testing.assert_allclose(weight.numpy(), np.ones(4))
    loss, weight = mixed_loss(cross_entropy(), y, w, partner, share)
    own, other = -np.log(p[np.arange(4), y]), -np.log(p[np.arange(4), y[partner]])
    np.testing.assert_allclose(loss(p).numpy(), share * own * w + (1 - share) * other * w[partner], rtol=1e-5)
    np.testing.assert_allclose(weight.numpy(), share * w + (1 - share) * w[partner], rtol=1e-6)


# --- calibration -----------------------------------------------------------------------------


def _overconfident(n=4000, factor=3.0, seed=0):
    """Labels drawn from sigmoid(z), reported as softmax probabilities with logit factor * z."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    p1 = 1 / (1 + np.exp(-factor * z))
    return np.stack([1 - p1, p1], 1), y


def test_temperature_scaling_fixes_overconfidence():
    probs, y = _overconfident()
    t = fit_temperature(idc_logit(probs), y)
    assert t == pytest.approx(3.0, rel=0.15)
    assert nll(calibrated_probability(probs, t), y) < nll(calibrated_probability(probs, 1.0), y) - 0.05
    cal = calibrate(probs, y)
    assert cal["nll_after"] < cal["nll_before"]
    # temperature scaling does not change the ranking
    assert roc_auc_score(y, calibrated_probability(probs, t)) == pytest.approx(roc_auc_score(y, probs[:, 1]))


def test_threshold_is_finite_even_for_a_model_worse_than_chance():
    # every IDC patch scores below every other: the best Youden J is "call nothing" (+inf in roc_curve)
    thr = choose_threshold(np.array([0.1, 0.2, 0.8, 0.9]), np.array([1, 1, 0, 0]))
    assert np.isfinite(thr) and 0.0 <= thr <= 1.0


def test_neighbour_context_mixes_scored_neighbours_of_the_same_slide():
    # a 3x3 block of one slide, one isolated patch, and a patch of another slide next to the block
    rows = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 9, 1])
    cols = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 9, 3])
    groups = np.array(["a"] * 10 + ["b"])
    z = np.arange(11, dtype=float)
    out = mix_neighbours(z, rows, cols, groups, self_weight=0.5)
    assert out[4] == pytest.approx(0.5 * 4 + 0.5 * np.mean([0, 1, 2, 3, 5, 6, 7, 8]))  # centre: 8 neighbours
    assert out[0] == pytest.approx(0.5 * 0 + 0.5 * np.mean([1, 3, 4]))  # corner: 3 neighbours
    assert out[9] == 9 and out[10] == 10  # no neighbour in its own slide: unchanged
    assert (mix_neighbours(z, rows, cols, groups, self_weight=1.0) == z).all()
    with pytest.raises(ValueError, match="same grid position"):
        mix_neighbours(z[:2], [0, 0], [1, 1])
    # the same count the context step mixes by: centre 8, edges 5, corners 3, alone in its slide 0
    assert neighbour_counts(rows, cols, groups).tolist() == [3, 5, 3, 5, 8, 5, 3, 5, 3, 0, 0]
    assert neighbour_counts(rows, cols).tolist()[5] == 6  # one slide: the patch at (1, 3) now counts
    assert neighbour_counts([], []).tolist() == []


def test_context_on_probabilities_equals_calibrating_mixed_logits():
    rng = np.random.default_rng(4)
    probs, _ = _overconfident(n=64, seed=4)
    rows, cols = np.divmod(rng.permutation(64), 8)
    t, offset = 1.7, 0.4
    direct = sigmoid((mix_neighbours(logit(probs[:, 1]) - 0, rows, cols) - offset) / t)
    via_patches = with_context(calibrated_probability(probs, t, offset), rows, cols)
    assert np.abs(direct - via_patches).max() < 1e-5
    assert (with_context(probs[:, 1], rows, cols, self_weight=1.0) == probs[:, 1].astype(np.float32)).all()


def test_the_slide_baseline_lifts_a_pale_slide_and_leaves_the_others():
    rng = np.random.default_rng(5)
    groups = np.array(["a"] * 30 + ["pale"] * 25 + ["tumour"] * 20 + ["c"] * (BASELINE_MIN_PATCHES - 1) + ["d"])
    z = rng.normal(-2, 2, len(groups))
    z[groups == "pale"] -= 3.0  # a slide whose every score sits low
    z[groups == "tumour"] += 5.0  # a slide whose least IDC-like tissue still scores high
    a = groups == "a"
    reference = float(np.quantile(z[a], BASELINE_QUANTILE))
    out = with_baseline(z, groups, 0.75, reference)
    assert out[a] == pytest.approx(z[a])  # slide a's baseline is the reference: unchanged
    pale = groups == "pale"
    gap = reference - np.quantile(z[pale], BASELINE_QUANTILE)
    assert gap > 0 and out[pale] == pytest.approx(z[pale] + 0.75 * gap)  # lifted by 3/4 of its gap
    assert (out[~a & ~pale] == z[~a & ~pale]).all()  # above the reference, or too few patches
    assert (with_baseline(z, groups, 0.0, reference) == z).all()
    # at weight 1 a slide made paler as a whole comes back to where it was
    paler = np.where(a, z - 2.0, z)
    assert with_baseline(paler, groups, 1.0, reference)[a] == pytest.approx(z[a])


def test_the_slide_baseline_on_probabilities_equals_it_on_calibrated_logits():
    probs, _ = _overconfident(n=64, seed=6)
    rows, cols = np.divmod(np.arange(64), 8)
    t, offset, weight, reference = 1.7, 0.4, 0.5, -1.1  # reference on the raw scale
    raw = with_baseline(mix_neighbours(logit(probs[:, 1]) - offset, rows, cols, None, 0.5), None, weight, reference)
    via_patches = with_context(calibrated_probability(probs, t, offset), rows, cols, None, 0.5, (weight, reference / t))
    assert np.abs(sigmoid(raw / t) - via_patches).max() < 1e-5


def test_platt_fit_recovers_the_scale_and_offset_the_labels_were_drawn_with():
    from idcmap.model.calibration import fit_platt

    rng = np.random.default_rng(3)
    z = rng.normal(-1.0, 2.5, 200_000)
    for a, c in ((0.5, 1.0), (1.6, -0.7)):
        y = (rng.random(len(z)) < 1 / (1 + np.exp(-a * (z - c)))).astype(np.int8)
        scale, offset = fit_platt(z, y)
        # 200,000 draws: the standard errors are about 0.005 (scale) and 0.01 (offset)
        assert scale == pytest.approx(a, abs=0.03) and offset == pytest.approx(c, abs=0.05)
        assert fit_platt(scale * (z - offset), y) == pytest.approx((1.0, 0.0), abs=1e-3)  # a fixed point


def test_prior_offset_undoes_class_weighting():
    from idcmap.model.calibration import prior_offset

    probs, y = _overconfident(factor=1.0, seed=5)
    offset = prior_offset({0: 0.625, 1: 2.5})  # IDC weighted 4x: logits shifted by log 4
    z = np.log(probs[:, 1] / probs[:, 0]) + offset
    shifted = np.stack([1 / (1 + np.exp(z)), 1 / (1 + np.exp(-z))], 1)
    cal = calibrate(shifted, y, offset)
    assert offset == pytest.approx(np.log(4.0))
    assert cal["temperature"] == pytest.approx(1.0, abs=0.1)
    assert cal["nll_after"] < cal["nll_before"] - 0.05
    p = calibrated_probability(shifted, cal["temperature"], offset)
    assert expected_calibration_error(p, y) < 0.03 < expected_calibration_error(shifted[:, 1], y)


def test_threshold_maximises_balanced_accuracy():
    probs, y = _overconfident(n=1500, factor=1.0, seed=3)
    p = probs[:, 1]
    thr = choose_threshold(p, y)
    best = max(balanced_accuracy_score(y, p >= t) for t in np.unique(p))
    assert balanced_accuracy_score(y, p >= thr) == pytest.approx(best)


# --- metrics ---------------------------------------------------------------------------------


def test_metrics_equal_sklearn():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 0, 1, 0])
    p = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.9, 0.3, 0.2, 0.65, 0.55])
    m = classification_metrics(y, p, 0.5)
    pred = p >= 0.5
    assert m["confusion_matrix"] == {"tn": 4, "fp": 2, "fn": 1, "tp": 3}
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred)) == pytest.approx(0.7)
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred)) == pytest.approx(0.75)
    assert m["specificity"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(precision_score(y, pred))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, p))


def test_ranking_metrics_equal_sklearn_with_ties_and_weights():
    """Tied scores, and weights that count a patch that many times (as a bootstrap resample does)."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500)
    p = np.round(rng.random(500) * 0.6 + 0.3 * y, 1)  # rounded: many ties
    assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert average_precision(y, p) == pytest.approx(average_precision_score(y, p), abs=1e-12)
    w = rng.integers(0, 4, 500)
    copies = np.repeat(np.arange(500), w)
    assert roc_auc(y, p, w) == pytest.approx(roc_auc_score(y[copies], p[copies]), abs=1e-12)
    assert expected_calibration_error(p, y, weights=w) == pytest.approx(
        expected_calibration_error(p[copies], y[copies])
    )
    assert np.isnan(roc_auc(np.zeros(5), np.arange(5)))


def test_ece_known_values():
    # perfectly calibrated bins -> 0; all predicted 0.9 for a 50 % rate -> 0.4
    assert expected_calibration_error(np.array([0.25] * 4), np.array([1, 0, 0, 0])) == pytest.approx(0.0)
    assert expected_calibration_error(np.array([0.9] * 4), np.array([1, 0, 1, 0])) == pytest.approx(0.4)


def test_report_per_patient_and_single_class_patient():
    y = np.array([0, 1, 0, 0, 0])
    p = np.array([0.2, 0.9, 0.6, 0.1, 0.3])
    r = metrics_report(y, p, np.array(["a", "a", "a", "b", "b"]), 0.5)
    assert r["n_patients"] == 2 and r["n_patches"] == 5
    assert r["per_patient"]["a"]["roc_auc"] == pytest.approx(1.0)
    assert r["per_patient"]["b"]["roc_auc"] is None  # one class only
    assert r["per_patient"]["b"]["specificity"] == pytest.approx(1.0)
    json.dumps(r)  # JSON-ready


# --- data ------------------------------------------------------------------------------------


def _synthetic_patches():
    rng = np.random.default_rng(0)
    pids, srcs = [], []
    for src, n_pat in (("big", 10), ("small", 30)):
        for i in range(n_pat):
            k = int(rng.integers(5, 40))
            pids += [f"{src}{i}"] * k
            srcs += [src] * k
    n = len(pids)
    return PatchSet(
        np.zeros((n, 50, 50, 3), np.uint8),
        (rng.random(n) < 0.3).astype(np.int8),
        np.array(pids),
        np.array(srcs),
        np.zeros((n, 2), np.int64),
    )


def test_split_is_by_patient_deterministic_and_covers_each_source():
    ps = _synthetic_patches()
    split = split_patients(ps)
    assert split == split_patients(ps)
    assert not set(split["train"]) & set(split["validation"])
    assert set(split["train"]) | set(split["validation"]) == set(ps.patients)
    train, val = apply_split(ps, split)
    assert len(train) + len(val) == len(ps)
    for src in ("big", "small"):
        share = (val.sources == src).sum() / (ps.sources == src).sum()
        assert 0.2 <= share < 0.6
        assert (train.sources == src).any()


def test_class_weights_balance_the_classes():
    y = np.array([0] * 80 + [1] * 20)
    w = class_weights(y)
    assert w[1] / w[0] == pytest.approx(4.0)
    assert (80 * w[0] + 20 * w[1]) / 100 == pytest.approx(1.0)


def test_patient_weights_trade_patches_for_patients_and_the_classes_stay_balanced():
    from idcmap.model.data import patient_weights

    ids = np.array(["whole"] * 900 + ["sparse"] * 100)
    y = np.array([0] * 810 + [1] * 90 + [0] * 50 + [1] * 50)  # 10 % IDC on the slide, 50 % on the few patches
    assert np.array_equal(patient_weights(ids, 0.0), np.ones(1000))
    for power, sparse_share in ((0.5, 0.25), (1.0, 0.5)):  # 100^-p * 100 against 900^-p * 900
        w = patient_weights(ids, power)
        assert w.mean() == pytest.approx(1.0)
        assert w[ids == "sparse"].sum() / w.sum() == pytest.approx(sparse_share)
        cw = class_weights(y, w)
        weighted = w * np.where(y == 1, cw[1], cw[0])
        assert weighted[y == 1].sum() == pytest.approx(weighted[y == 0].sum())  # balanced, patients weighted
        assert weighted.mean() == pytest.approx(1.0)


def test_neighbourhoods_are_the_patch_and_its_grid_cells_averaged_down_and_augmented_as_one():
    import tensorflow as tf

    from idcmap.model.augment import augment
    from idcmap.model.data import neighbourhoods

    rng = np.random.default_rng(0)
    cells = [(r, c) for r in range(3) for c in range(4) if (r, c) != (1, 3)]  # one cell of the slide is background
    images = rng.integers(0, 255, (len(cells) + 1, 50, 50, 3), dtype=np.uint8)
    rows, cols = np.array([r for r, _ in cells] + [1]), np.array([c for _, c in cells] + [1])
    groups = np.array(["slide"] * len(cells) + ["other"])  # same grid cell as a slide patch, another patient
    slide = np.full((350, 400, 3), 255.0)  # the slide on white, two cells of margin
    for i, (r, c) in enumerate(cells):
        slide[100 + 50 * r : 150 + 50 * r, 100 + 50 * c : 150 + 50 * c] = images[i]

    for n in (3, 5):
        pairs = neighbourhoods(images, rows, cols, groups, n, chunk=4)
        assert pairs.shape == (len(images), 50, 50, 6) and np.array_equal(pairs[..., :3], images)
        top = 100 - 50 * (n // 2)
        for i, (r, c) in enumerate(cells):
            window = slide[top + 50 * r : top + 50 * (r + n), top + 50 * c : top + 50 * (c + n)]
            assert np.array_equal(pairs[i, ..., 3:], np.round(window.reshape(50, n, 50, n, 3).mean(axis=(1, 3))))
        lone, centre = np.full((50 * n, 50 * n, 3), 255.0), 50 * (n // 2)
        lone[centre : centre + 50, centre : centre + 50] = images[-1]
        assert np.array_equal(pairs[-1, ..., 3:], np.round(lone.reshape(50, n, 50, n, 3).mean(axis=(1, 3))))
        some = np.arange(len(images)) % 3 == 0  # only these returned, the rest still their neighbours
        assert np.array_equal(neighbourhoods(images, rows, cols, groups, n, keep=some), pairs[some])

    # no colour change: each output is one symmetry of the square, the same for the patch and its neighbourhood
    out = augment(tf.constant(pairs, tf.float32), colour_strength=0.0).numpy()
    views = lambda a: [np.rot90(f, k) for f in (a, a[:, ::-1]) for k in range(4)]  # noqa: E731
    for x, y in zip(pairs.astype(np.float32), out):
        same = [k for k, v in enumerate(views(x)) if np.allclose(v, y, atol=1e-3)]
        assert len(same) == 1
    # a stain draw is shared: the patch and its neighbourhood change alike where their pixels were alike
    flat = np.tile(pairs[:1, :, :, :3], (64, 1, 1, 2))
    out = augment(tf.constant(flat, tf.float32), colour_strength=1.0, stain_strength=1.0).numpy()
    assert np.allclose(np.sort(out[..., :3].reshape(64, -1), 1), np.sort(out[..., 3:].reshape(64, -1), 1), atol=1e-3)
    assert out[..., :3].std(axis=0).mean() > 5  # and it differs between patches


# --- bundle manifest -------------------------------------------------------------------------

FAKE_META = {
    "name": "fake",
    "architecture": {"name": "idcnet"},
    "input": {"shape": [50, 50, 3], "target_mpp": 4.0},
    "normalisation": {"mean": [0, 0, 0], "std": [1, 1, 1]},
    "calibration": {"temperature": 1.5},
    "threshold": {"value": 0.4},
    "backends": {},
}


def _fake_bundle(tmp_path, **changes):
    (tmp_path / "weights.bin").write_bytes(bytes(range(256)))
    write_manifest(tmp_path, FAKE_META | changes)
    return tmp_path


def test_manifest_roundtrip_and_tamper(tmp_path):
    b = load_bundle(_fake_bundle(tmp_path))
    assert b.temperature == 1.5 and set(b.meta["files"]) == {"weights.bin"} and b.channels == 3
    ctx = load_bundle(_fake_bundle(tmp_path, input={"shape": [50, 50, 6], "neighbourhood_cells": 5, "target_mpp": 4}))
    assert (ctx.neighbourhood, ctx.channels) == (5, 6)
    data = bytearray((tmp_path / "weights.bin").read_bytes())
    data[100] ^= 1
    (tmp_path / "weights.bin").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="weights.bin: sha256 does not match"):
        load_bundle(tmp_path)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"threshold": {}}, "lacks 'value'"),
        ({"input": {"shape": [50, 40, 3], "target_mpp": 4.0}}, "is not square RGB"),
        ({"input": {"shape": [50, 50, 6], "target_mpp": 4.0}}, "is not square RGB"),  # 6 channels: of which cells?
        ({"input": {"shape": [50, 50, 6], "neighbourhood_cells": 4, "target_mpp": 4.0}}, "is not square RGB"),
        ({"calibration": {"temperature": "hot"}}, "malformed field"),
    ],
)
def test_manifest_without_what_scoring_needs_is_one_line(tmp_path, changes, message):
    with pytest.raises(BundleError, match=message) as err:
        load_bundle(_fake_bundle(tmp_path, **changes))
    assert str(err.value).startswith(str(tmp_path / "model.json")) and "\n" not in str(err.value)


def test_manifest_edit_and_extra_file_are_refused(tmp_path):
    _fake_bundle(tmp_path)
    text = (tmp_path / "model.json").read_text()
    (tmp_path / "model.json").write_text(text.replace('"temperature": 1.5', '"temperature": 1.6'))
    with pytest.raises(BundleError, match="manifest_sha256"):
        load_bundle(tmp_path)
    (tmp_path / "model.json").write_text(text)
    load_bundle(tmp_path)
    (tmp_path / "extra.onnx").write_bytes(b"x")
    with pytest.raises(BundleError, match="not listed"):
        load_bundle(tmp_path)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(tmp_path)


def test_channels_first_input_keeps_the_outputs_bit_for_bit(tmp_path):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from idcmap.model.export import channels_first_input

    rng = np.random.default_rng(0)
    consts = [
        numpy_helper.from_array(np.array([180.0, 120.0, 200.0], np.float32), "mean"),
        numpy_helper.from_array(np.array([1 / 40, 1 / 50, 1 / 30], np.float32), "scale"),
        numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
    ]
    nodes = [
        helper.make_node("Cast", ["patches"], ["c"], to=TensorProto.FLOAT),  # as tf2onnx writes it
        helper.make_node("Sub", ["c", "mean"], ["s"]),
        helper.make_node("Mul", ["s", "scale"], ["m"]),
        helper.make_node("Transpose", ["m"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t", "w"], ["out"], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("patches", TensorProto.UINT8, ["n", 50, 50, 3])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 4, 50, 50])],
        consts,
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    x = rng.integers(0, 256, (8, 50, 50, 3), dtype=np.uint8)

    def run():
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"patches": x})[0]

    before = run()
    assert channels_first_input(path) is True
    assert [n.op_type for n in onnx.load(path).graph.node] == ["Transpose", "Cast", "Sub", "Mul", "Conv"]
    assert np.array_equal(run(), before)
    assert channels_first_input(path) is False  # already in that layout: left as it is


def test_resume_passes_over_a_checkpoint_cut_short_while_it_was_written(tmp_path):
    """A run killed while Ray copied its last checkpoint leaves a truncated file: a resume takes the
    checkpoint before it, and finds none when every one is cut short."""
    import h5py

    from idcmap.model.train import STATE_FILE, latest_checkpoint

    dirs = []
    for epoch in (0, 1):
        ckpt = tmp_path / "run" / f"checkpoint_{epoch}"
        ckpt.mkdir(parents=True)
        for name in ("last.weights.h5", "best.weights.h5"):
            with h5py.File(ckpt / name, "w") as f:
                f["w"] = np.arange(5000, dtype=np.float32)
        np.savez(ckpt / "optimizer.npz", np.zeros(10))
        (ckpt / STATE_FILE).write_text(json.dumps({"epoch": epoch}))
        dirs.append(ckpt)
    assert latest_checkpoint(tmp_path / "run") == dirs[1]
    weights = dirs[1] / "last.weights.h5"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert latest_checkpoint(tmp_path / "run") == dirs[0]
    optimizer = dirs[0] / "optimizer.npz"
    optimizer.write_bytes(optimizer.read_bytes()[:-30])
    assert latest_checkpoint(tmp_path / "run") is None


def test_a_worker_group_restarted_before_its_first_checkpoint_is_on_record(tmp_path, monkeypatch):
    """A group restarted before this fit wrote a checkpoint gets none from Ray Train: its workers'
    marks tell the restart, recorded after the epoch it starts from; other ranks and fits are apart."""
    import ray.train

    from idcmap.model.train import TrainConfig, _restore

    rank = {"n": 0}
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)
    monkeypatch.setattr(ray.train, "get_context", lambda: type("C", (), {"get_world_rank": lambda s: rank["n"]})())
    cfg = TrainConfig(data_dirs=[], start_marker=str(tmp_path / "fit-1" / "worker-started"))
    assert "restarts" not in _restore(cfg, None, None)[0]  # the first start
    rank["n"] = 1
    assert "restarts" not in _restore(cfg, None, None)[0]  # another worker of the same group
    assert _restore(cfg, None, None)[0]["restarts"] == [0]  # that worker again: the group restarted
    cfg.start_marker = str(tmp_path / "fit-2" / "worker-started")
    assert "restarts" not in _restore(cfg, None, None)[0]  # a new fit (a resume) starts afresh
