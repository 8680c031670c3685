"""Kaggle IDC patch folders as in-memory arrays, the patient split, class balance, augmentation.

A *data directory* is either one patient folder (PATIENT/{0,1}/*.png) or a folder of patient
folders. Every patch is read with :func:`idcmap.slide_tiling.load_patch`, so partial edge patches are
padded with white exactly as they are at scoring time.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from idcmap.atomic import atomic_path
from idcmap.errors import InputError
from idcmap.slide_tiling import PATCH_SIZE, is_patient_dir, list_patches, load_patch, neighbourhoods

#: share of each data directory's patches (whole patients) held out for validation
VALIDATION_FRACTION = 0.2
SPLIT_SALT = "idcmap-split-v1"
CACHE_FORMAT = "patches-v2"  # with xy


class DataError(InputError):
    """A data directory that cannot be used; the message says which and why."""


@dataclass
class PatchSet:
    """Patches of one or more patients: RGB uint8 images with their labels and provenance."""

    images: np.ndarray  # (N, 50, 50, 3) uint8 RGB; (N, 50, 50, 6) with each patch's neighbourhood
    labels: np.ndarray  # (N,) int8, 1 = IDC
    patient_ids: np.ndarray  # (N,) str
    sources: np.ndarray  # (N,) str, the data directory each patch came from
    xy: np.ndarray  # (N, 2) int64, 0-based left/top pixel of the patch in its patient's slide

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, mask_or_index) -> PatchSet:
        return PatchSet(
            self.images[mask_or_index],
            self.labels[mask_or_index],
            self.patient_ids[mask_or_index],
            self.sources[mask_or_index],
            self.xy[mask_or_index],
        )

    @property
    def grid(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, cols, groups): each patch's place on its patient's 50-px grid, for the context step."""
        return self.xy[:, 1] // PATCH_SIZE, self.xy[:, 0] // PATCH_SIZE, self.patient_ids

    @property
    def patients(self) -> list[str]:
        return sorted(set(self.patient_ids.tolist()))


def patient_dirs(data_dir) -> list[Path]:
    """The patient folders of a data directory (itself, if it is one), sorted by name."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: not a directory (expected Kaggle IDC patient folders)")
    if is_patient_dir(data_dir):
        return [data_dir]
    found = sorted(p for p in data_dir.iterdir() if is_patient_dir(p))
    if not found:
        raise DataError(f"{data_dir}: holds no Kaggle IDC patient folders (PATIENT/0|1/*_classN.png)")
    return found


def _index(data_dirs, patients=None) -> list[tuple[str, str, int, Path, int, int]]:
    """(source, patient, label, path, x, y) for every patch (of ``patients`` only, if given)."""
    rows = []
    for d in data_dirs:
        source = str(Path(d))
        for pdir in patient_dirs(d):
            rows += [
                (source, p.patient_id, p.label, p.path, p.x, p.y)
                for p in list_patches(pdir)
                if patients is None or p.patient_id in patients
            ]
    return rows


def fingerprint(data_dirs) -> str:
    """sha256 over (patient, file name, size) of every patch: identifies the training data."""
    h = hashlib.sha256()
    for _, patient, label, path, _, _ in _index(data_dirs):
        h.update(f"{patient}/{label}/{path.name}/{path.stat().st_size}\n".encode())
    return h.hexdigest()


def load_patches(data_dirs, limit_per_patient: int | None = None, threads: int = 4, patients=None) -> PatchSet:
    """Read every patch of the given data directories (optionally at most N per patient, or only
    the patients in ``patients``)."""
    rows = _index(data_dirs, set(patients) if patients is not None else None)
    if limit_per_patient:
        kept: list = []
        seen: dict[str, int] = {}
        for r in rows:
            if seen.get(r[1], 0) < limit_per_patient:
                kept.append(r)
                seen[r[1]] = seen.get(r[1], 0) + 1
        rows = kept
    if not rows:
        raise DataError(f"no patches found in {', '.join(map(str, data_dirs))}")
    images = np.empty((len(rows), PATCH_SIZE, PATCH_SIZE, 3), np.uint8)

    def read(i):
        images[i] = load_patch(rows[i][3])

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(read, range(len(rows))))
    return PatchSet(
        images,
        np.array([r[2] for r in rows], np.int8),
        np.array([r[1] for r in rows]),
        np.array([r[0] for r in rows]),
        np.array([(r[4], r[5]) for r in rows], np.int64).reshape(-1, 2),
    )


def load_patches_cached(
    data_dirs, cache_dir=None, stain_normalised: bool = False, neighbourhood: int = 0, **kw
) -> PatchSet:
    """:func:`load_patches`, memoised as an .npz under ``cache_dir`` keyed by the data fingerprint.
    ``stain_normalised``: each patient's patches Macenko-normalised to
    :data:`idcmap.model.stain.REFERENCE` (memoised apart). ``neighbourhood``: each image beside
    its neighbourhood of that many grid cells a side (:func:`with_neighbourhoods`, not memoised)."""
    if neighbourhood:
        ps = load_patches_cached(data_dirs, cache_dir, stain_normalised, **kw)
        return with_neighbourhoods(ps, neighbourhood)
    if cache_dir is None:
        ps = load_patches(data_dirs, **kw)
        return normalise_patients(ps) if stain_normalised else ps
    tag = CACHE_FORMAT + ("-macenko-v1" if stain_normalised else "")
    key = hashlib.sha256((tag + fingerprint(data_dirs) + repr(sorted(kw.items()))).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"patches-{key}.npz"
    if path.exists():
        z = np.load(path, allow_pickle=False)
        return PatchSet(z["images"], z["labels"], z["patient_ids"], z["sources"], z["xy"])
    if stain_normalised:
        ps = normalise_patients(load_patches_cached(data_dirs, cache_dir, **kw))
    else:
        ps = load_patches(data_dirs, **kw)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, images=ps.images, labels=ps.labels, patient_ids=ps.patient_ids, sources=ps.sources, xy=ps.xy)
    return ps


def with_neighbourhoods(ps: PatchSet, cells: int = 3) -> PatchSet:
    """``ps`` with each image beside its neighbourhood (:func:`neighbourhoods`)."""
    return PatchSet(neighbourhoods(ps.images, *ps.grid, cells), ps.labels, ps.patient_ids, ps.sources, ps.xy)


def normalise_patients(ps: PatchSet) -> PatchSet:
    """``ps`` with each patient's patches Macenko-normalised on that patient's own patches."""
    from .stain import normalise_groups

    images, _ = normalise_groups(ps.images, ps.patient_ids)
    return PatchSet(images, ps.labels, ps.patient_ids, ps.sources, ps.xy)


def _patient_rank(patient_id: str) -> str:
    return hashlib.sha256(f"{SPLIT_SALT}:{patient_id}".encode()).hexdigest()


def split_patients(ps: PatchSet, fraction: float = VALIDATION_FRACTION) -> dict:
    """Deterministic split by patient, never by patch.

    Rule: within each data directory, order its patients by sha256("idcmap-split-v1:" + id) and
    move them to validation in that order until validation holds at least ``fraction`` of that
    directory's patches. Every directory thus contributes whole patients to both sides.
    """
    val = []
    for source in sorted(set(ps.sources.tolist())):
        in_src = ps.sources == source
        counts = {p: int(n) for p, n in zip(*np.unique(ps.patient_ids[in_src], return_counts=True))}
        total, taken = sum(counts.values()), 0
        for p in sorted(counts, key=_patient_rank):
            if taken >= fraction * total or len(counts) < 2:
                break
            val.append(p)
            taken += counts[p]
    train = sorted(set(ps.patients) - set(val))
    return {
        "rule": f"per data dir, patients by sha256('{SPLIT_SALT}:'+id) until >= {fraction:.0%} "
        "of its patches are in validation",
        "train": train,
        "validation": sorted(val),
    }


def apply_split(ps: PatchSet, split: dict) -> tuple[PatchSet, PatchSet]:
    """(train, validation) patch sets for a split made by :func:`split_patients` (or by
    cross-validation: patients in neither list are left out)."""
    return (ps.subset(np.isin(ps.patient_ids, split["train"])), ps.subset(np.isin(ps.patient_ids, split["validation"])))


def class_weights(labels: np.ndarray, weights: np.ndarray | None = None) -> dict[int, float]:
    """Inverse-frequency weights, normalised so the mean weight per patch is 1 (the frequencies
    counted with per-patch ``weights``, if given, whose mean is then kept)."""
    weights = np.ones(len(labels)) if weights is None else np.asarray(weights, float)
    counts = np.bincount(labels.astype(np.int64), weights, minlength=2).astype(float)
    counts[counts == 0] = 1.0
    w = weights.sum() / (2.0 * counts)
    return {0: float(w[0]), 1: float(w[1])}


def patient_weights(patient_ids: np.ndarray, power: float) -> np.ndarray:
    """Per patch, its patient's patch count to the power -``power``, normalised to mean 1: 0 weighs
    every patch alike, 1 every patient alike (a patient of 1,000 patches no more than one of 30)."""
    _, inverse, counts = np.unique(patient_ids, return_inverse=True, return_counts=True)
    w = counts[inverse].astype(float) ** -power
    return w / w.mean()


def channel_stats(images: np.ndarray, sample: int = 4000, seed: int = 0) -> dict:
    """Per-channel mean and std of pixel values (0..255) on a sample of patches."""
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(images), min(sample, len(images)), replace=False)
    px = images[np.sort(idx)].reshape(-1, images.shape[-1]).astype(np.float64)
    return {"mean": [round(float(v), 3) for v in px.mean(0)], "std": [round(float(v), 3) for v in px.std(0)]}
