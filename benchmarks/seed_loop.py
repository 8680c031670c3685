"""The seed's scoring loop with a bundle's Keras network: glob each patient folder's patch PNGs,
``cv2.imread`` each, pad the dataset's edge patches with white as the pipeline does, normalise,
``model.predict``. ``bench_scoring.py`` times it in its own process; ``bench_peers.py`` runs it
as a whole fresh process:

    python benchmarks/seed_loop.py BUNDLE PATIENT_DIR...   # prints the number of patches
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np


def load(bundle) -> tuple:
    """(Keras model, channel mean, channel std) of a bundle."""
    import keras

    from idcmap.model import load_bundle

    meta = load_bundle(bundle)
    model = keras.saving.load_model(Path(bundle) / "model.keras", safe_mode=True)
    mean, std = (np.asarray(meta.normalisation[k], np.float32) for k in ("mean", "std"))
    return model, mean, std


def predict(model, mean, std, patient_dirs) -> int:
    """Score every patch PNG of the patient folders; the number of patches."""
    files = [f for d in patient_dirs for f in sorted(Path(d).glob("*/*.png"))]
    images = []
    for f in files:
        img = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)
        if img.shape[:2] != (50, 50):
            img = cv2.copyMakeBorder(
                img, 0, 50 - img.shape[0], 0, 50 - img.shape[1], cv2.BORDER_CONSTANT, value=(255, 255, 255)
            )
        images.append(img)
    model.predict((np.stack(images).astype(np.float32) - mean) / std, verbose=0)
    return len(files)


if __name__ == "__main__":
    print(predict(*load(sys.argv[1]), sys.argv[2:]))
