"""bench_peers.py's TIAToolbox run, in TIAToolbox's own environment (its pins cannot join idcmap's):

    TIA_PYTHON benchmarks/peers_tiatoolbox.py '{"slides": [...], "onnx": ..., "mpp": 4.0, "patch": 50,
                                               "batch": 32, "workers": 2, "out": DIR}'

PatchPredictor in WSI mode, its default tissue mask, an IOPatchPredictorConfig of ``patch`` px at
``mpp`` µm/px; the shipped idcnet converted by onnx2torch and wrapped as a TIAToolbox ModelABC.
Writes DIR/predictions.csv (slide_id, level-0 x and y, the network's IDC probability) and
DIR/result.json (seconds of the ``run`` call).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import zarr
from peers_torch import idcnet
from tiatoolbox.models.engine.io_config import IOPatchPredictorConfig
from tiatoolbox.models.engine.patch_predictor import PatchPredictor
from tiatoolbox.models.models_abc import ModelABC
from tiatoolbox.wsicore.wsireader import OpenSlideWSIReader, VirtualWSIReader, WSIReader


class Idcnet(ModelABC):
    """The converted network: uint8 NHWC patches (as TIAToolbox reads them) to probabilities."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)

    @staticmethod
    def infer_batch(model, batch_data, *, device="cpu"):
        with torch.inference_mode():
            return model(torch.as_tensor(batch_data).to(torch.uint8)).numpy()


def reader(path: str) -> WSIReader:
    """TIAToolbox's own reader for the slide; OpenSlide's where it would read a plain (not BigTIFF)
    tiled pyramid as one flat image without its µm/px (TIAToolbox 2.1.3 does so)."""
    found = WSIReader.open(path)
    return OpenSlideWSIReader(path) if isinstance(found, VirtualWSIReader) else found


def main(args: dict) -> None:
    out = Path(args["out"])
    predictor = PatchPredictor(
        model=Idcnet(idcnet(args["onnx"])), batch_size=args["batch"], num_workers=args["workers"], verbose=False
    )
    ioconfig = IOPatchPredictorConfig(
        input_resolutions=[{"units": "mpp", "resolution": args["mpp"]}],
        patch_input_shape=(args["patch"], args["patch"]),
        stride_shape=(args["patch"], args["patch"]),
    )
    t0 = time.perf_counter()
    readers = [reader(s) for s in args["slides"]]
    saved = predictor.run(
        readers,
        patch_mode=False,
        ioconfig=ioconfig,
        save_dir=out / "tia",
        output_type="zarr",
        return_probabilities=True,
        device="cpu",
    )
    seconds = time.perf_counter() - t0
    rows = []
    for slide, wsi, path in zip(args["slides"], readers, saved.values()):
        z = zarr.open(str(path), mode="r")
        coords, probs = np.asarray(z["coordinates"]), np.asarray(z["probabilities"])
        scale = args["mpp"] / wsi.info.mpp[0]  # coordinates at the read resolution: to level-0 pixels
        for (x0, y0, *_), p in zip(coords, probs[:, 1]):
            rows.append(f"{Path(slide).stem},{round(x0 * scale)},{round(y0 * scale)},{p:.9g}")
    (out / "predictions.csv").write_text("slide_id,x,y,p\n" + "\n".join(rows) + "\n")
    (out / "result.json").write_text(json.dumps({"run_s": seconds}))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
