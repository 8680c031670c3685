"""What a job scores: slide files, folders (one patient per sub-folder) and manifest CSVs.

- a slide file: its own patient; patient and slide id are the file name without extension;
- a Kaggle patient folder (PATIENT/{0,1}/*.png): one virtual slide of that patient;
- a folder of DICOM instances (one series: levels, label, overview): one slide;
- another folder: every sub-folder is a patient (its slide files and DICOM series folders, or
  itself if it is a Kaggle patient folder or holds DICOM instances); slide files directly inside
  are each their own patient;
- a manifest CSV with columns ``patient_id,slide_path[,mpp][,slide_id]``; relative slide paths are
  relative to the manifest's folder; several slides per patient are allowed.

Ids become folder and file names in the job's output, so they are checked: letters, digits, ``.``,
``_`` and ``-`` only, not starting with a dot (so ``../../etc`` can never write outside the job).
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

from idcmap.errors import InputError
from idcmap.slide_tiling import is_patient_dir, links_back
from idcmap.slide_tiling.dicom_reader import is_dicom

SLIDE_SUFFIXES = {
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".mrxs",
    ".scn",
    ".vms",
    ".vmu",
    ".bif",
    ".svslide",
    ".dcm",
    ".png",
    ".jpg",
    ".jpeg",
}
_SAFE_ID = re.compile(r"^[\w-][\w.-]{0,127}$")  # \w: any letter or digit, non-ASCII too


@dataclass(frozen=True)
class SlideTask:
    patient_id: str
    slide_id: str
    source: str
    mpp: float | None = None  # from the manifest: overrides the file's
    hidden: tuple[str, ...] = ()  # pseudonymized: real path and ids, never to be written

    @property
    def key(self) -> str:
        return f"{self.patient_id}/{self.slide_id}"

    @property
    def name(self) -> str:
        """How outputs and messages name the slide: its path, or its pseudonymous key."""
        return self.key if self.hidden else self.source

    def redact(self, text: str) -> str:
        """``text`` with the hidden path and ids replaced by the pseudonymous key."""
        for secret in self.hidden:
            text = text.replace(secret, self.key)
        return text


def check_id(value: str, what: str, where) -> str:
    value = value.strip()
    if not _SAFE_ID.match(value):
        raise InputError(
            f"{where}: {what} {value!r} is not a safe id (letters, digits, '.', '_', '-'; not starting with '.')"
        )
    return value


def slide_id_of(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem if path.is_file() or path.suffix else name


def _read_manifest(path: Path) -> list[SlideTask]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in ("patient_id", "slide_path") if c not in columns]
        if missing:
            raise InputError(
                f"{path}: manifest lacks column(s) {', '.join(missing)} "
                f"(has: {', '.join(columns) or 'nothing'}); need patient_id,slide_path[,mpp]"
            )
        tasks = []
        for line, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            where = f"{path}:{line}"
            if not row["slide_path"]:
                raise InputError(f"{where}: empty slide_path")
            slide = Path(row["slide_path"])
            slide = Path(os.path.abspath(path.parent / slide))
            mpp = None
            if row.get("mpp"):
                try:
                    mpp = float(row["mpp"])
                except ValueError:
                    raise InputError(f"{where}: mpp {row['mpp']!r} is not a number") from None
            tasks.append(
                SlideTask(
                    check_id(row["patient_id"], "patient_id", where),
                    check_id(row.get("slide_id") or slide_id_of(slide), "slide id", where),
                    str(slide),
                    mpp,
                )
            )
    return tasks


def _holds_dicom(folder: Path) -> bool:
    return any(f.is_file() and is_dicom(f) for f in folder.iterdir())


def _slide_files(patient: str, folder: Path) -> list[SlideTask]:
    """A patient folder's slides: its slide files (DICOM instances directly in it: one slide, the
    folder's) and each sub-folder of DICOM instances (one slide, named after the sub-folder)."""
    tasks = [SlideTask(patient, check_id(folder.name, "slide id", folder), str(folder))] if _holds_dicom(folder) else []
    for f in sorted(folder.iterdir()):
        if f.name.startswith("."):
            continue
        if f.is_dir() and links_back(f) is None and _holds_dicom(f):
            tasks.append(SlideTask(patient, check_id(f.name, "slide id", f), str(f)))
        elif f.is_file() and f.suffix.lower() in SLIDE_SUFFIXES and not is_dicom(f):
            tasks.append(SlideTask(patient, check_id(slide_id_of(f), "slide id", f), str(f)))
    return tasks


def _folder_tasks(folder: Path) -> list[SlideTask]:
    if is_patient_dir(folder):
        return [
            SlideTask(
                check_id(folder.name, "patient id", folder), check_id(folder.name, "slide id", folder), str(folder)
            )
        ]
    tasks = []
    if _holds_dicom(folder):  # a DICOM series folder given as INPUT: its own patient
        name = check_id(folder.name, "patient id", folder)
        tasks.append(SlideTask(name, name, str(folder)))
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            patient = check_id(entry.name, "patient id", entry)
            if links_back(entry) is not None or is_patient_dir(entry):  # a loop fails as its own slide
                tasks.append(SlideTask(patient, patient, str(entry)))
                continue
            tasks += _slide_files(patient, entry)
        elif entry.suffix.lower() in SLIDE_SUFFIXES and not (entry.is_file() and is_dicom(entry)):
            sid = check_id(slide_id_of(entry), "slide id", entry)
            tasks.append(SlideTask(sid, sid, str(entry)))
    return tasks


def collect_tasks(inputs) -> list[SlideTask]:
    """Expand the command line's INPUTs into slide tasks; refuse duplicate (patient, slide) ids.

    A task's ``mpp`` is the manifest's, for that slide (it overrides the file's); ``--mpp`` is only a
    fallback for slides whose file does not say, applied when the slide is opened."""
    tasks: list[SlideTask] = []
    for item in inputs:
        path = Path(os.path.abspath(item))  # workers may run elsewhere: never relative to our cwd
        if path.suffix.lower() == ".csv":
            if not path.is_file():
                raise InputError(f"{path}: manifest not found")
            tasks += _read_manifest(path)
        elif path.is_dir():
            tasks += _folder_tasks(path)
        else:  # a slide file; if it is missing, the job records that as the slide's failure
            sid = check_id(slide_id_of(path), "slide id", path)
            tasks.append(SlideTask(sid, sid, str(path)))
    seen: dict[tuple[str, str], SlideTask] = {}
    for t in tasks:
        other = seen.setdefault((t.patient_id, t.slide_id), t)
        if other is not t:
            if Path(other.source).resolve() == Path(t.source).resolve():
                continue
            raise InputError(
                f"duplicate slide id {t.slide_id!r} for patient {t.patient_id!r}: "
                f"{other.source} and {t.source}; give one a slide_id column in the manifest"
            )
    return list(seen.values())
