"""The Parquet results of a scoring job: one schema per table, defined here and nowhere else.

    predictions/<patient_id>/<slide_id>.parquet     one row per tissue patch
    summaries.parquet                               one row per slide and per patient

(paths in the job folder: :class:`~idcmap.jobs.jobdir.layout.JobDir`).

A predictions file carries, in its key-value metadata, everything needed to rebuild the maps and
the report without the slide: the bundle hash, the job spec, the slide's geometry and a JPEG
thumbnail.

The patient folders are plain ids, not hive-style ``patient_id=P``: patient_id is a column of every
file, and a hive folder of the same name makes pandas and pyarrow refuse the dataset
("incompatible types: string vs dictionary"). So ``pd.read_parquet("JOB_DIR/predictions")``,
``pyarrow.dataset``, DuckDB and Ray Data read the folder as it is; every file's patient_id column
is constant, so its statistics still let engines skip other patients' files.
"""

from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from idcmap.jobs.jobdir.layout import JobDir, atomic_path, write_bytes_atomic

PREDICTIONS = pa.schema(
    [
        pa.field("job_id", pa.string(), nullable=False),
        pa.field("patient_id", pa.string(), nullable=False),
        pa.field("slide_id", pa.string(), nullable=False),
        pa.field("x", pa.int64(), nullable=False),  # level-0 pixel, left
        pa.field("y", pa.int64(), nullable=False),  # level-0 pixel, top
        pa.field("col", pa.int32(), nullable=False),  # grid column at the target resolution
        pa.field("row", pa.int32(), nullable=False),
        pa.field("level0_patch_size", pa.float32(), nullable=False),
        pa.field("tissue_fraction", pa.float32(), nullable=False),
        pa.field("prob_idc", pa.float32(), nullable=False),  # final: with its neighbours, a pale slide lifted
        pa.field("prob_patch", pa.float32(), nullable=False),  # the patch alone (same calibration)
        pa.field("model_version", pa.string(), nullable=False),
    ]
)

SUMMARIES = pa.schema(
    [
        pa.field("level", pa.string(), nullable=False),  # "slide" or "patient"
        pa.field("patient_id", pa.string(), nullable=False),
        pa.field("slide_id", pa.string()),  # null on patient rows
        pa.field("slides", pa.int32()),
        pa.field("patches", pa.int64()),  # grid patches
        pa.field("tissue_patches", pa.int64()),
        pa.field("idc_patches", pa.int64()),
        pa.field("idc_fraction", pa.float64()),  # idc / tissue patches
        pa.field("idc_area_mm2", pa.float64()),
        pa.field("mean_prob", pa.float64()),
        pa.field("max_prob", pa.float64()),
        pa.field("p95_prob", pa.float64()),
        pa.field("call", pa.string()),  # "IDC", "no IDC"; null when failed
        pa.field("status", pa.string(), nullable=False),  # "done" or "failed"
        pa.field("error", pa.string()),
    ]
)

META_KEY = b"idcmap"  # the JSON document of SlideMeta in each predictions file


@dataclass
class SlideMeta:
    """What a predictions file knows about its slide and its job."""

    job_id: str
    patient_id: str
    slide_id: str
    source: str  # slide path as given
    bundle_sha256: str
    model_version: str
    threshold: float
    job_spec: dict
    width0: int
    height0: int
    mpp: tuple[float, float]  # level-0 µm/px
    target_mpp: float
    patch_size: int
    stride: int
    cols: int
    rows: int
    level: int
    thumbnail_downsample: float  # level-0 px per thumbnail px
    thumbnail_jpeg: str = ""  # base64

    def thumbnail_bytes(self) -> bytes:
        return base64.b64decode(self.thumbnail_jpeg) if self.thumbnail_jpeg else b""


def write_parquet_atomic(table: pa.Table, path: Path, metadata: dict[bytes, bytes] | None = None) -> None:
    """Write a Parquet file atomically (zstd, fsynced before the rename)."""
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    with atomic_path(path, fsync=True) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def write_predictions(job: JobDir, table: pa.Table, meta: SlideMeta) -> Path:
    path = job.predictions(meta.patient_id, meta.slide_id)
    write_parquet_atomic(table.cast(PREDICTIONS), path, {META_KEY: json.dumps(asdict(meta)).encode()})
    return path


def parquet_problem(path: Path, needs: bytes | None = None) -> str | None:
    """Why a Parquet file cannot be used (cut by an interrupted copy, damaged on a failing mount),
    in one line; None when its footer (and the ``needs`` metadata key) reads back."""
    try:
        metadata = pq.read_metadata(path).metadata or {}
    except (OSError, pa.ArrowException) as e:
        return f"{path}: unreadable Parquet ({' '.join(str(e).split())})"
    if needs is not None and needs not in metadata:
        return f"{path}: no {needs.decode()} metadata in the file"
    return None


def predictions_problem(path: Path) -> str | None:
    """:func:`parquet_problem` for a predictions file, whose idcmap slide metadata must read back."""
    return parquet_problem(path, META_KEY)


def read_slide_meta(path) -> SlideMeta:
    raw = pq.read_schema(path).metadata[META_KEY]
    data = json.loads(raw)
    data["mpp"] = tuple(data["mpp"])
    return SlideMeta(**data)


# --- failed slides: one small JSON per slide, removed when the slide later succeeds -------------
def write_failure(job: JobDir, patient_id: str, slide_id: str, source: str, error: str) -> None:
    write_bytes_atomic(
        job.failure(patient_id, slide_id),
        json.dumps({"patient_id": patient_id, "slide_id": slide_id, "source": source, "error": error}).encode(),
    )


def read_failures(job: JobDir) -> list[dict]:
    return [json.loads(p.read_text()) for p in job.failure_files()]
