"""Cross-validation without training: folds, cross-fitted calibration, out-of-fold figures; and
the stain-space augmentation and re-staining they are measured under."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from idcmap.errors import InputError
from idcmap.model.crossval import assign_folds, bootstrap_intervals, cross_fitted, out_of_fold_report
from idcmap.model.metrics import expected_calibration_error
from idcmap.model.stain import HED_FROM_RGB, RGB_FROM_HED, macenko, optical_density, restain, transfer


def _patients(n_sources=(30, 12), seed=0):
    """Patch-level arrays of synthetic patients: id, source, label (prevalence varies by patient)."""
    rng = np.random.default_rng(seed)
    ids, sources, labels = [], [], []
    for s, n in enumerate(n_sources):
        for i in range(n):
            m, prevalence = int(rng.integers(3, 60)), rng.uniform(0, 0.8)
            ids += [f"s{s}p{i}"] * m
            sources += [f"src{s}"] * m
            labels += (rng.random(m) < prevalence).astype(int).tolist()
    return np.array(ids), np.array(sources), np.array(labels)


# --- folds ---------------------------------------------------------------------------------------
def test_folds_split_patients_not_patches_balanced_by_source_and_prevalence():
    ids, sources, labels = _patients()
    folds = assign_folds(ids, sources, labels, k=3)
    assert set(folds) == set(ids.tolist()) and set(folds.values()) == {0, 1, 2}
    assert folds == assign_folds(ids, sources, labels, k=3)  # deterministic
    elsewhere = np.array([f"/mnt/other/{s}" for s in sources])  # the same folders at another path
    assert folds == assign_folds(ids, elsewhere, labels, k=3)
    df = pd.DataFrame({"p": ids, "s": sources, "y": labels}).groupby("p").agg(s=("s", "first"), y=("y", "mean"))
    df["fold"] = [folds[p] for p in df.index]
    for _, g in df.groupby("s"):
        counts = np.bincount(g.fold, minlength=3)
        assert counts.max() - counts.min() <= 1  # each source spread evenly
        # patients of neighbouring prevalence land in different folds (blocks of k)
        assert all(
            len(set(b)) == len(b) for b in np.array_split(g.sort_values("y").fold.to_numpy(), range(3, len(g), 3))
        )


def test_folds_refuse_too_few_patients():
    with pytest.raises(InputError, match="cannot fill 3 folds"):
        assign_folds(np.array(["a", "b"]), np.array(["s", "s"]), np.array([0, 1]), k=3)


def test_a_run_keeps_its_deal_and_refuses_one_of_other_patients(tmp_path, caplog):
    import json
    import logging
    from types import SimpleNamespace

    from idcmap.model.make_bundle import FOLDS_FILE, _run_folds

    ids, sources, labels = _patients()
    patches = SimpleNamespace(patient_ids=ids, sources=sources, labels=labels)
    logger = logging.getLogger("idcmap")  # the CLI stops it propagating to the root's capture
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="idcmap"):
            folds = _run_folds(patches, 3, tmp_path)
            assert folds == assign_folds(ids, sources, labels, 3)
            assert f"{tmp_path}: no earlier run there, a new 3-fold cross-validation starts" in caplog.text
            caplog.clear()
            _run_folds(patches, 3, tmp_path)  # a resume says nothing of a new run
            assert "new 3-fold" not in caplog.text
    finally:
        logger.removeHandler(caplog.handler)
    kept = {p: (f + 1) % 3 for p, f in folds.items()}  # another deal written there is used as it is
    (tmp_path / FOLDS_FILE).write_text(json.dumps(kept))
    assert _run_folds(patches, 3, tmp_path) == kept
    with pytest.raises(InputError, match="not a deal of this data's patients into 4 folds"):
        _run_folds(patches, 4, tmp_path)
    del kept[ids[0]]
    (tmp_path / FOLDS_FILE).write_text(json.dumps(kept))
    with pytest.raises(InputError, match=f"{FOLDS_FILE}: not a deal"):
        _run_folds(patches, 3, tmp_path)


# --- cross-fitted calibration --------------------------------------------------------------------
def _oof(seed=0, n_patients=30):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        shift = rng.normal(0, 0.7)  # patient-level shift the model does not know
        for i in range(40):
            y = int(rng.random() < 0.3)
            rows.append(
                (f"p{p}", "src", 50 * (i % 8), 50 * (i // 8), y, p % 3, 2.5 * y - 1.2 + shift + rng.normal(0, 1.2))
            )
    return pd.DataFrame(rows, columns=["patient_id", "source", "x", "y", "label", "fold", "logit"])


def test_each_fold_is_calibrated_without_its_own_patients():
    oof = _oof()
    _, _, per_fold = cross_fitted(oof)
    changed = oof.copy()
    mine = changed.fold == 0
    changed.loc[mine, "logit"] = changed.loc[mine, "logit"] * 3 + 5  # fold 0's scores change wildly
    changed.loc[mine, "label"] = 1 - changed.loc[mine, "label"]
    _, _, after = cross_fitted(changed)
    for key in ("temperature", "threshold", "context_self_weight", "baseline_weight", "baseline_reference"):
        assert after[0][key] == per_fold[0][key], key
    assert after[1]["temperature"] != per_fold[1]["temperature"]  # the others did use fold 0


def test_the_slide_baseline_is_chosen_where_patients_scores_sit_at_different_levels():
    oof = _oof(seed=1, n_patients=60)  # each patient's logits shifted by a level the model does not know
    prob, _, per_fold = cross_fitted(oof)
    assert all(f["baseline_weight"] > 0 for f in per_fold.values())
    y = oof.label.to_numpy()
    without = cross_fitted(oof, baselines=(0.0,))[0]
    assert roc_auc_score(y, prob) > roc_auc_score(y, without)
    level = oof.patient_id.map(oof.groupby("patient_id").logit.mean())  # the same data, no patient levels
    _, _, flat = cross_fitted(oof.assign(logit=oof.logit - level + level.mean()))
    assert all(f["baseline_weight"] < per_fold[k]["baseline_weight"] for k, f in flat.items())


def test_out_of_fold_report_pooled_per_patient_and_intervals():
    oof = _oof()
    r = out_of_fold_report(oof, bootstrap=200, per_patient=True)
    prob, thr, _ = cross_fitted(oof)
    y = oof.label.to_numpy()
    assert r["roc_auc"] == pytest.approx(roc_auc_score(y, prob))
    call = prob >= thr
    sens, spec = call[y == 1].mean(), 1 - call[y == 0].mean()
    assert r["balanced_accuracy"] == pytest.approx((sens + spec) / 2)
    assert r["n_patients"] == 30 and r["n_folds"] == 3 and r["threshold"] is None
    for key in ("roc_auc", "balanced_accuracy", "sensitivity", "specificity", "ece"):
        lo, hi = r["intervals_95"][key]
        assert lo <= r[key] <= hi and lo < hi
    spread = r["per_patient_spread"]
    assert spread["n_patients"] == sum(
        1 for m in r["per_patient"].values() if m["n_idc"] >= 10 and m["n_patches"] - m["n_idc"] >= 10
    )
    assert spread["roc_auc"]["worst_tenth"] <= spread["roc_auc"]["median"]
    assert sum(m["n_patches"] for m in r["per_patient"].values()) == len(oof)


def test_bootstrap_weights_equal_resampling_patients_by_copying_their_patches():
    oof = _oof()
    prob, thr, _ = cross_fitted(oof)
    y, patients = oof.label.to_numpy(), oof.patient_id.to_numpy()
    got = bootstrap_intervals(y, prob, thr, patients, n=40, seed=7)
    ids, inverse = np.unique(patients, return_inverse=True)
    rng, samples = np.random.default_rng(7), {k: [] for k in got}
    for _ in range(40):  # the same draws, as copies of each drawn patient's patches
        idx = np.concatenate([np.flatnonzero(inverse == i) for i in rng.integers(0, len(ids), len(ids))])
        call = prob[idx] >= thr[idx]
        sens, spec = call[y[idx] == 1].mean(), 1 - call[y[idx] == 0].mean()
        samples["roc_auc"].append(roc_auc_score(y[idx], prob[idx]))
        samples["sensitivity"].append(sens)
        samples["specificity"].append(spec)
        samples["balanced_accuracy"].append((sens + spec) / 2)
        samples["ece"].append(expected_calibration_error(prob[idx], y[idx]))
    for key, (lo, hi) in got.items():
        assert [lo, hi] == pytest.approx([np.percentile(samples[key], 2.5), np.percentile(samples[key], 97.5)]), key


# --- stain space ---------------------------------------------------------------------------------
def _he_image(nuclei: int = 12, seed: int = 3) -> np.ndarray:
    """A synthetic H&E-like image: nuclei (haematoxylin) in eosin stroma, white glass at the top."""
    rng = np.random.default_rng(seed)
    conc = np.zeros((60, 60, 3))
    conc[..., 1] = rng.uniform(0.6, 1.2, (60, 60))  # eosin stroma with a little haematoxylin
    conc[..., 0] = rng.uniform(0.15, 0.3, (60, 60))
    yy, xx = np.mgrid[0:60, 0:60]
    for cy, cx in rng.integers(15, 55, (nuclei, 2)):
        nucleus = ((yy - cy) ** 2 + (xx - cx) ** 2) < 9
        conc[nucleus, 0], conc[nucleus, 1] = 1.0, 0.1
    conc[:10] = 0
    return np.clip(np.rint(256 * np.exp(-(conc @ RGB_FROM_HED)) - 1), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def he_patch():
    return _he_image()


def test_restain_is_identity_at_neutral_and_scales_one_stain(he_patch):
    assert np.array_equal(restain(he_patch), he_patch)
    np.testing.assert_allclose(RGB_FROM_HED @ HED_FROM_RGB, np.eye(3), atol=1e-12)
    before = optical_density(he_patch) @ HED_FROM_RGB
    after = optical_density(restain(he_patch, h_scale=0.6)) @ HED_FROM_RGB
    tissue = before[..., 0] > 0.3
    ratio = after[..., 0][tissue] / before[..., 0][tissue]
    assert np.median(ratio) == pytest.approx(0.6, abs=0.02)
    np.testing.assert_allclose(after[..., 1][tissue], before[..., 1][tissue], atol=0.02)  # eosin kept


def test_hed_jitter_is_identity_at_neutral_and_keeps_geometry(he_patch):
    import tensorflow as tf

    from idcmap.model.augment import augment, hed_jitter

    x = tf.constant(np.stack([he_patch[:50, :50], he_patch[10:, 10:]]), tf.float32)
    np.testing.assert_allclose(hed_jitter(x, 0.0, 0.0).numpy(), x.numpy(), atol=0.01)
    # a per-pixel colour map: the same draws on a transposed batch give the transposed result
    tf.random.set_seed(7)
    a = hed_jitter(x).numpy()
    tf.random.set_seed(7)
    b = hed_jitter(tf.transpose(x, [0, 2, 1, 3])).numpy()
    np.testing.assert_allclose(b, a.transpose(0, 2, 1, 3), atol=1e-3)
    assert not np.allclose(a, x.numpy(), atol=1.0)  # it does change colours
    out = augment(x, colour_strength=1.0, stain_strength=1.0).numpy()
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 255
    # augmentation at zero strengths is the symmetries alone: the same multiset of pixel values
    plain = augment(x, colour_strength=0.0, stain_strength=0.0).numpy()
    np.testing.assert_allclose(np.sort(plain.reshape(2, -1), 1), np.sort(x.numpy().reshape(2, -1), 1), atol=1e-3)


def test_macenko_finds_the_stains_it_was_given_and_transfer_restores_them(he_patch):
    sv = macenko(he_patch, min_pixels=100)
    assert np.dot(sv.h, RGB_FROM_HED[0]) > 0.98 and np.dot(sv.e, RGB_FROM_HED[1]) > 0.98
    pale = restain(he_patch, h_scale=0.6)
    back = transfer(pale, macenko(pale, min_pixels=100), sv)
    tissue = optical_density(he_patch).sum(-1) > 0.3
    assert np.abs(back.astype(int) - he_patch.astype(int))[tissue].mean() < 3.0
    assert np.abs(pale.astype(int) - he_patch.astype(int))[tissue].mean() > 10.0


def test_normalising_each_group_alone_undoes_its_stain_and_ignores_how_much_nuclei_it_holds(he_patch):
    from idcmap.model.stain import REFERENCE, normalise_groups

    # a patient, the same patient paler in haematoxylin, one with four times the nuclei, and glass
    few, many = he_patch[10:], _he_image(nuclei=48, seed=4)[10:]
    assert (optical_density(many) @ HED_FROM_RGB)[..., 0].mean() > 1.3 * (optical_density(few) @ HED_FROM_RGB)[
        ..., 0
    ].mean()
    glass = np.full_like(few, 250)
    images = np.stack([few, restain(few, h_scale=0.6), many, glass])
    out, fitted = normalise_groups(images, np.array(["a", "a-pale", "b", "glass"]))
    assert fitted["glass"] is None and np.array_equal(out[3], glass)  # nothing to fit: left as it was
    assert np.dot(fitted["a"].h, fitted["a-pale"].h) > 0.99 and np.dot(fitted["a"].h, fitted["b"].h) > 0.99
    tissue = optical_density(few).sum(-1) > 0.3
    # most of the paler haematoxylin is undone (Macenko's fit moves a little with the stain)
    diff = np.abs(out[1].astype(int) - out[0].astype(int))[tissue].mean()
    assert diff < 0.5 * np.abs(images[1].astype(int) - images[0].astype(int))[tissue].mean()
    # the reference's stains: a normalised group's own fit comes out as the reference
    again = macenko(out[0], min_pixels=100)
    assert np.dot(again.h, REFERENCE.h) > 0.98 and np.dot(again.e, REFERENCE.e) > 0.98
    assert again.max_h == pytest.approx(REFERENCE.max_h, rel=0.05)
    # a group's normalisation does not depend on the other groups
    alone, _ = normalise_groups(images[:1], np.array(["a"]))
    assert np.array_equal(alone[0], out[0])


@pytest.mark.parametrize("arch", ["idcnet_ctx5", "seed_cnn"])
def test_the_documented_runs_resume_under_their_commands(arch):
    """The cross-validation runs in the repository (`runs/idcnet-ctx5` for the shipped bundle,
    `runs/seed-cnn` for the comparison) resume under the commands models/README.md gives: each
    passes its recipe check, keeps its fold assignment (the bundle's own; for seed_cnn the 3-fold
    `runs/idc-default`'s, so the two compare patient by patient), each fold holds its patients,
    and the bundle's stored out-of-fold scores are exactly its run's."""
    import json
    import re
    import shlex

    from idcmap.jobs.cli import cli
    from idcmap.jobs.cli.model import train_setup
    from idcmap.model.make_bundle import check_recipe

    from .conftest import REPO, shared_path

    shared_path("idc", "patients")  # skips without the real data (the recipe holds its fingerprint)
    readme = (REPO / "models" / "README.md").read_text()
    blocks = re.findall(r"\n    (idcmap train (?:.*\\\n)*.*)", readme)
    command = next(b for b in blocks if f"--arch {arch} " in b)
    args = shlex.split(command.replace("\\\n", " "))[2:]
    params = dict(cli.commands["train"].make_context("train", args).params)
    k = params.pop("folds")
    for key in ("resume", "address", "folds_only"):
        params.pop(key)
    cfg, run_dir = train_setup(**params)
    run_dir = REPO / run_dir
    check_recipe(cfg, k, run_dir)  # raises if it would not resume

    folds = {p: int(f) for p, f in json.loads((run_dir / "folds.json").read_text()).items()}
    if arch == "idcnet_ctx5":
        expected = json.loads((REPO / "models" / "idc-default" / "model.json").read_text())["split"]["folds"]
    else:
        expected = json.loads((REPO / "runs" / "idc-default" / "folds.json").read_text())
    assert folds == expected and set(folds.values()) == set(range(k))
    done = sorted(run_dir.glob("fold-*/oof.parquet"))
    assert len(done) == k
    for path in done:
        fold = int(path.parent.name.split("-")[1])
        oof = pd.read_parquet(path)
        assert set(oof.patient_id) == {p for p, f in folds.items() if f == fold} and (oof.fold == fold).all()
        assert np.isfinite(oof.logit).all()
    if arch == "idcnet_ctx5":
        stored = pd.read_parquet(REPO / "models" / "idc-default" / "oof_predictions.parquet")
        pd.testing.assert_frame_equal(stored, pd.concat(map(pd.read_parquet, done), ignore_index=True))
