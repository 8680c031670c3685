"""idcmap beside WSInfer and TIAToolbox: the same rebuilt 40x slides, the same network, one run; and
the same-model table (idcmap against the seed-style loop with the same bundle).

    pip install -e '.[peers]' torch==2.14.1 torchvision==0.29.1   # never in CI
    python -m venv .venv-tia && .venv-tia/bin/pip install tiatoolbox==2.1.3 onnx2torch
    python benchmarks/bench_peers.py --tiatoolbox-python .venv-tia/bin/python [--quick] [--json OUT]

The shipped idcnet (``models/idc-default/model.onnx``) is converted to PyTorch with onnx2torch and
traced to TorchScript; the script checks on real patches that both give ONNX Runtime's
probabilities within 1e-4 and stops otherwise. Then, on the 24 whole patients rebuilt as 40x
slides (0.25 µm/px, ``build-slide --scan-mpp 0.25 --quality 95``; ``--quick``: the 4 smallest),
in turn:

- ``idcmap score`` (embedded Ray, its defaults);
- ``wsinfer run`` with the TorchScript model and a config of 50 px patches at 4.0 µm/px, its
  defaults otherwise (its tissue detection, batch 32, one data-loading worker per core);
- TIAToolbox's ``PatchPredictor`` in WSI mode with an ``IOPatchPredictorConfig`` of 50 px at
  4.0 µm/px, its default tissue mask, batch 32 and one loader worker per core, the PyTorch module
  wrapped as a TIAToolbox ``ModelABC`` (``peers_tiatoolbox.py``, run by ``--tiatoolbox-python``:
  TIAToolbox pins aiohttp below what Ray needs, so it cannot share idcmap's environment).

Each is a fresh process: the whole command's wall time (imports, start-up and outputs included),
its own scoring part (idcmap: job.json's scoring seconds, Ray start-up excluded; WSInfer: its
inference phase, from the last patch file written to the last CSV; TIAToolbox: the ``run``
call), tissue patches found, and the peak of the summed proportional set size of the command
and every process it starts. Agreement: each peer's IDC probability, passed through the bundle's
own calibration (prior offset and temperature: no fitting), against idcmap's ``prob_patch`` on
the patches both scored (matched by level-0 position): Pearson r and mean absolute difference.

The same-model table runs ``idcmap score`` on the patients' Kaggle folders with each shipped
bundle, and the seed's loop (glob the PNGs, ``cv2.imread`` each, Keras ``model.predict``) with the
same bundle's Keras model, each a whole fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from bench_scoring import measure, table

from idcmap.model import load_bundle
from idcmap.model.scoring import calibrated_probability
from idcmap.slide_tiling import build_slide, list_patches

ROOT = Path(__file__).resolve().parents[1]
PATIENTS = ROOT.parent / "shared" / "data" / "idc" / "patients"
BUNDLES = {"idc-default": ROOT / "models" / "idc-default", "seed-cnn": ROOT / "models" / "seed-cnn"}
SCAN_MPP = 0.25  # 40x
#: JPEG quality of the rebuilt slides. At build-slide's default of 90 the 4.0 µm/px level, which
#: idcmap and TIAToolbox read, carries JPEG artefacts of its own that the 40x level WSInfer reads
#: and downsamples does not, and idcnet's scores follow them (Pearson r 0.94 between the two
#: readings on the quick set); at 95 both readings give nearly the same pixels
QUALITY = 95
CHECK_TOLERANCE = 1e-4
PEER_BATCH = 32  # both peers' documented default
CORES = len(os.sched_getaffinity(0))
PIL_BOX = 4  # PIL.Image.Resampling.BOX
SEED_LOOP = Path(__file__).with_name("seed_loop.py")


# --- inputs ----------------------------------------------------------------------------------------
def chosen_patients(quick: bool) -> list[Path]:
    if not PATIENTS.is_dir():
        raise SystemExit(f"{PATIENTS}: not found; this benchmark needs ../shared/data")
    dirs = sorted(PATIENTS.iterdir(), key=lambda d: (len(list_patches(d)), d.name))
    return dirs[:4] if quick else dirs


def slides_40x(work: Path, patients: list[Path]) -> tuple[Path, Path]:
    """Each patient rebuilt once as WORK/40x-qQ/P/P.tiff; (idcmap's input: a folder of these
    patients' folders, WSInfer's: a folder holding only their slides), both made of links."""
    tree, flat = work / f"40x-q{QUALITY}", work / f"40x-q{QUALITY}-flat-{len(patients)}"
    for d in patients:
        tiff = tree / d.name / f"{d.name}.tiff"
        if not tiff.exists():
            tiff.parent.mkdir(parents=True, exist_ok=True)
            build_slide(d, tiff, scan_mpp=SCAN_MPP, quality=QUALITY)
        link = flat / tiff.name
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(tiff)
    idcmap_in = work / f"40x-q{QUALITY}-{len(patients)}"
    for d in patients:
        link = idcmap_in / d.name
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(tree / d.name, target_is_directory=True)
    return idcmap_in, flat


def kaggle_folders(work: Path, patients: list[Path]) -> Path:
    root = work / f"kaggle-{len(patients)}"
    for d in patients:
        if not (root / d.name).exists():
            root.mkdir(parents=True, exist_ok=True)
            (root / d.name).symlink_to(d, target_is_directory=True)
    return root


def real_patches(patients: list[Path], n: int = 2000) -> np.ndarray:
    from idcmap.model.data import load_patches

    return load_patches(patients[:4], limit_per_patient=n // 4).images


# --- the network in PyTorch ------------------------------------------------------------------------
def convert_and_check(bundle: Path, patches: np.ndarray, out: Path) -> dict:
    """TorchScript for WSInfer under ``out``; the largest difference from ONNX Runtime of the
    PyTorch module and of the TorchScript one, on ``patches``. Stops if either exceeds 1e-4."""
    import onnxruntime as ort
    import torch
    from peers_torch import ForWsinfer, idcnet

    net = idcnet(bundle / "model.onnx")
    wrapped = ForWsinfer(net).eval()
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    reference = np.concatenate(
        [
            session.run(None, {session.get_inputs()[0].name: patches[i : i + 256]})[0]
            for i in range(0, len(patches), 256)
        ]
    )
    with torch.inference_mode():
        eager = np.concatenate(
            [net(torch.from_numpy(patches[i : i + 256])).numpy() for i in range(0, len(patches), 256)]
        )
        scripted = torch.jit.trace(wrapped, torch.rand(8, 3, 50, 50))
        out.mkdir(parents=True, exist_ok=True)
        scripted.save(str(out / "idcnet.pt"))
        scripted = torch.jit.load(str(out / "idcnet.pt"))
        nchw = torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255.0  # what ToTensor gives
        traced = np.concatenate(
            [torch.softmax(scripted(nchw[i : i + 37]), 1).numpy() for i in range(0, len(nchw), 37)]
        )  # batches of another size than the trace's
    diffs = {"pytorch": float(np.abs(eager - reference).max()), "torchscript": float(np.abs(traced - reference).max())}
    bad = {k: v for k, v in diffs.items() if not v <= CHECK_TOLERANCE}
    if bad:
        raise SystemExit(f"conversion check failed: {bad} from ONNX Runtime's probabilities (limit {CHECK_TOLERANCE})")
    return {"patches": len(patches), "max_abs_diff": diffs}


def wsinfer_config(bundle: Path, out: Path) -> Path:
    meta = load_bundle(bundle)
    config = {
        "spec_version": "1.0",
        "architecture": meta.architecture,
        "num_classes": 2,
        "class_names": ["no_idc", "idc"],
        "patch_size_pixels": meta.patch_size,
        "spacing_um_px": meta.target_mpp,
        # a box filter: each 4.0 µm/px pixel the mean of the 40x pixels it covers, as in the slide's
        # pyramid that idcmap and TIAToolbox read (torchvision's Resize takes PIL's filter code)
        "transform": [
            {"name": "Resize", "arguments": {"size": meta.patch_size, "interpolation": PIL_BOX}},
            {"name": "ToTensor"},
        ],
    }
    path = out / "wsinfer-config.json"
    path.write_text(json.dumps(config, indent=1))
    return path


def run_idcmap(inputs: Path, work: Path, bundle: Path) -> tuple[dict, pd.DataFrame]:
    job = Path(tempfile.mkdtemp(prefix="idcmap-", dir=work))
    r = measure([sys.executable, "-m", "idcmap", "score", str(inputs), "--out", str(job), "--model", str(bundle)])
    run = json.loads((job / "job.json").read_text())["runs"][-1]
    preds = pd.concat(
        [
            pd.read_parquet(p, columns=["slide_id", "x", "y", "prob_patch"])
            for p in sorted(job.glob("predictions/*/*.parquet"))
        ]
    )
    return {
        "patches": int(run["patches"]),
        "wall_s": r["wall_s"],
        "part_s": run["scoring_seconds"],
        "peak_mib": r["peak_mib"],
    }, preds


def run_wsinfer(flat: Path, work: Path, model: Path, config: Path) -> tuple[dict, pd.DataFrame]:
    out = Path(tempfile.mkdtemp(prefix="wsinfer-", dir=work))
    # its CLI loads the model zoo's registry from HOME/.wsinfer-zoo, downloading it if absent: an
    # empty one in a HOME of its own (no internet needed; the user's home left alone)
    home = work / "wsinfer-home"
    registry = home / ".wsinfer-zoo" / "wsinfer-zoo-registry.json"
    registry.parent.mkdir(parents=True, exist_ok=True)
    registry.write_text(json.dumps({"models": {}}))
    env = dict(os.environ, HOME=str(home), WSINFER_FORCE_CPU="1", HF_HUB_OFFLINE="1")
    wsinfer = Path(sys.executable).with_name("wsinfer")
    cmd = [str(wsinfer), "run", "-i", str(flat), "-o", str(out), "-c", str(config), "-p", str(model)]
    r = measure(cmd, env=env)
    csvs = sorted((out / "model-outputs-csv").glob("*.csv"))
    h5s = sorted((out / "patches").glob("*.h5"))
    part = max(p.stat().st_mtime for p in csvs) - max(p.stat().st_mtime for p in h5s)
    preds = pd.concat([pd.read_csv(p).assign(slide_id=p.stem) for p in csvs])
    preds = preds.rename(columns={"minx": "x", "miny": "y", "prob_idc": "p"})[["slide_id", "x", "y", "p"]]
    return {"patches": len(preds), "wall_s": r["wall_s"], "part_s": part, "peak_mib": r["peak_mib"]}, preds


def run_tiatoolbox(python: str, slides: list[Path], work: Path, bundle: Path) -> tuple[dict, pd.DataFrame]:
    out = Path(tempfile.mkdtemp(prefix="tiatoolbox-", dir=work))
    meta = load_bundle(bundle)
    args = {
        "slides": [str(s.resolve()) for s in slides],
        "onnx": str(bundle / "model.onnx"),
        "mpp": meta.target_mpp,
        "patch": meta.patch_size,
        "batch": PEER_BATCH,
        "workers": CORES,
        "out": str(out),
    }
    r = measure([python, str(Path(__file__).with_name("peers_tiatoolbox.py")), json.dumps(args)])
    preds = pd.read_csv(out / "predictions.csv", dtype={"slide_id": str})
    part = json.loads((out / "result.json").read_text())["run_s"]
    return {"patches": len(preds), "wall_s": r["wall_s"], "part_s": part, "peak_mib": r["peak_mib"]}, preds


# --- the same-model table --------------------------------------------------------------------------
def same_model(work: Path, patients: list[Path], repeats: int) -> dict:
    kaggle = kaggle_folders(work, patients)
    out: dict = {}
    for name, bundle in BUNDLES.items():
        runs: dict[str, list] = {"idcmap": [], "loop": []}
        for _ in range(repeats):
            r, _ = run_idcmap(kaggle, work, bundle)
            runs["idcmap"].append(r)
            loop = measure([sys.executable, str(SEED_LOOP), str(bundle)] + [str(p) for p in patients])
            runs["loop"].append(
                {"patches": int(loop["output"].split()[-1]), "wall_s": loop["wall_s"], "peak_mib": loop["peak_mib"]}
            )
        out[name] = {k: summarise(v) for k, v in runs.items()}
    return out


# --- figures ---------------------------------------------------------------------------------------
def summarise(runs: list[dict]) -> dict:
    """Median of the runs: patches, patches/s for the whole command and its part, peak MiB."""
    med = lambda xs: statistics.median(xs)  # noqa: E731
    s = {
        "patches": runs[0]["patches"],
        "patches_per_s": med([r["patches"] / r["wall_s"] for r in runs]),
        "wall_s": med([r["wall_s"] for r in runs]),
        "peak_mib": med([r["peak_mib"] for r in runs]),
        "runs": len(runs),
    }
    if "part_s" in runs[0]:
        s["part_patches_per_s"] = med([r["patches"] / r["part_s"] for r in runs])
    return s


def agreement(ours: pd.DataFrame, theirs: pd.DataFrame, bundle: Path) -> dict:
    """Peer probabilities through the bundle's calibration against idcmap's prob_patch, on the
    patches both scored."""
    b = load_bundle(bundle)
    theirs = theirs.assign(
        cal=calibrated_probability(np.stack([1 - theirs.p, theirs.p], 1), b.temperature, b.logit_offset)
    )
    both = ours.merge(theirs, on=["slide_id", "x", "y"])
    if len(both) < 2:
        return {"common_patches": len(both), "pearson_r": None, "mean_abs_diff": None}
    return {
        "common_patches": len(both),
        "only_idcmap": len(ours) - len(both),
        "only_peer": len(theirs) - len(both),
        "pearson_r": float(np.corrcoef(both.prob_patch, both.cal)[0, 1]),
        "mean_abs_diff": float(np.abs(both.prob_patch - both.cal).mean()),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 patients, one run of each")
    ap.add_argument("--repeats", type=int, default=1, help="runs of each system, in turn (median reported)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "idcmap-bench-peers")
    ap.add_argument(
        "--tiatoolbox-python",
        default=os.environ.get("TIATOOLBOX_PYTHON"),
        help="the Python of a venv holding tiatoolbox and onnx2torch [env TIATOOLBOX_PYTHON]",
    )
    args = ap.parse_args()
    if not args.tiatoolbox_python:
        raise SystemExit(
            "give --tiatoolbox-python: TIAToolbox pins packages idcmap's environment cannot hold, so it "
            "runs from its own venv (python -m venv .venv-tia && .venv-tia/bin/pip install "
            "tiatoolbox==2.1.3 onnx2torch)"
        )

    repeats = 1 if args.quick else args.repeats
    bundle = BUNDLES["idc-default"]
    args.work.mkdir(parents=True, exist_ok=True)
    patients = chosen_patients(args.quick)
    t = time.perf_counter()
    idcmap_in, flat = slides_40x(args.work, patients)
    print(
        f"{len(patients)} patients as 40x slides under {args.work} ({time.perf_counter() - t:.0f} s)", file=sys.stderr
    )
    check = convert_and_check(bundle, real_patches(patients), args.work / "torch")
    print(
        f"conversion checked on {check['patches']} real patches: max |diff| from ONNX Runtime {check['max_abs_diff']}"
    )
    config = wsinfer_config(bundle, args.work / "torch")
    slides = sorted(flat.glob("*.tiff"))

    runs: dict[str, list] = {"idcmap": [], "wsinfer": [], "tiatoolbox": []}
    preds = {}
    for i in range(repeats):
        for name, go in (
            ("idcmap", lambda: run_idcmap(idcmap_in, args.work, bundle)),
            ("wsinfer", lambda: run_wsinfer(flat, args.work, args.work / "torch" / "idcnet.pt", config)),
            ("tiatoolbox", lambda: run_tiatoolbox(args.tiatoolbox_python, slides, args.work, bundle)),
        ):
            r, preds[name] = go()
            runs[name].append(r)
            print(
                f"run {i + 1}/{repeats} {name}: {r['patches']:,} patches, whole command {r['wall_s']:.1f} s, "
                f"its scoring part {r['part_s']:.1f} s, peak {r['peak_mib']:.0f} MiB",
                file=sys.stderr,
                flush=True,
            )
    systems = {k: summarise(v) for k, v in runs.items()}
    agree = {k: agreement(preds["idcmap"], preds[k], bundle) for k in ("wsinfer", "tiatoolbox")}
    models = same_model(args.work, patients, 1 if args.quick else 3)

    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"\n{len(patients)} patients rebuilt at 40x, {CORES} cores, {when}")
    rows = []
    for name, s in systems.items():
        a = agree.get(name, {})
        common = [f"{a['pearson_r']:.4f}", f"{a['mean_abs_diff']:.4f}", f"{a['common_patches']:,}"] if a else ["-"] * 3
        rate, part = f"{s['patches_per_s']:,.0f}", f"{s['part_patches_per_s']:,.0f}"
        rows.append([name, f"{s['patches']:,}", rate, part, f"{s['peak_mib']:,.0f}"] + common)
    table(
        ["system", "tissue patches", "whole command, patches/s", "scoring part, patches/s", "peak MiB"]
        + ["r with idcmap", "mean abs. diff.", "common patches"],
        rows,
    )
    print("\nSame model (the patients' Kaggle folders; whole fresh processes):")
    rows = []
    for name, m in models.items():
        i, lp = m["idcmap"], m["loop"]
        ratio = f"{i['patches_per_s'] / lp['patches_per_s']:.2f}x"
        peaks = f"{i['peak_mib']:,.0f} / {lp['peak_mib']:,.0f}"
        rows.append(
            [name, f"{i['patches']:,}", f"{i['patches_per_s']:,.0f}", f"{lp['patches_per_s']:,.0f}", ratio, peaks]
        )
    table(["bundle", "patches", "idcmap score, patches/s", "seed-style loop, patches/s", "idcmap / loop"]
          + ["peak MiB idcmap / loop"], rows)  # fmt: skip
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "systems": systems,
                    "agreement": {k: v["pearson_r"] for k, v in agree.items()},
                    "agreement_detail": agree,
                    "conversion_check": check,
                    "same_model": models,
                    "patients": [p.name for p in patients],
                    "cores": CORES,
                    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
