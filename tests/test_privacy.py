"""--pseudonymize: no real patient id, slide name or path in anything the job writes or prints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from idcmap.jobs.cli import cli
from idcmap.jobs.pseudonym import KEY_ENV, key_id, patient_pseudonym, slide_pseudonym

from .conftest import REPO

KEY = b"0123456789abcdef-test-key"
SECRETS = ("MRN-4711", "MRN-0815", "Jane_Doe", "John_Roe")  # cannot occur by chance in hashes or base64


def _score(*args, env_key: bytes | None = KEY):
    env = {k: v for k, v in os.environ.items() if k != KEY_ENV}
    if env_key is not None:
        env[KEY_ENV] = env_key.decode()
    return subprocess.run(
        [sys.executable, "-m", "idcmap", "score", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture()
def manifest(tmp_path):
    slides = tmp_path / "Jane_Doe"
    slides.mkdir()
    shutil.copy(REPO / "examples" / "slides" / "patient-8916.tiff", slides / "Jane_Doe-HE.tiff")
    (slides / "John_Roe-HE.svs").write_text("not a slide, a text file named .svs\n")
    path = tmp_path / "manifest.csv"
    path.write_text(
        f"patient_id,slide_path\nMRN-4711,{slides / 'Jane_Doe-HE.tiff'}\nMRN-0815,{slides / 'John_Roe-HE.svs'}\n"
    )
    return path


def test_pseudonymized_job_writes_and_prints_no_identity(tmp_path, manifest, bundle):
    job = tmp_path / "job"
    proc = _score(manifest, "--out", job, "--pseudonymize")
    assert proc.returncode == 1, proc.stderr  # the text file fails, the real slide is scored
    printed = proc.stdout + proc.stderr

    p1, p2 = patient_pseudonym(KEY, "MRN-4711"), patient_pseudonym(KEY, "MRN-0815")
    s1, s2 = slide_pseudonym(KEY, "MRN-4711", "Jane_Doe-HE"), slide_pseudonym(KEY, "MRN-0815", "John_Roe-HE")
    assert f"FAILED {p2}/{s2}: {p2}/{s2}:" in printed  # the failure, named by its pseudonym
    table = pq.read_table(job / "predictions" / p1 / f"{s1}.parquet")
    assert set(table["patient_id"].to_pylist()) == {p1} and set(table["slide_id"].to_pylist()) == {s1}
    assert table.num_rows == 171
    assert json.loads((job / "job.json").read_text())["privacy"] == {
        "pseudonymized": True,
        "method": "HMAC-SHA256",
        "key_id": key_id(KEY),
    }

    files = [f for f in job.rglob("*")]
    assert len([f for f in files if f.is_file()]) > 10 and (job / "report" / "index.html").is_file()
    for f in files:
        rel = str(f.relative_to(job))
        assert not any(s in rel for s in SECRETS), rel
        if f.is_file():
            data = f.read_bytes()
            assert not any(s.encode() in data for s in SECRETS), f"{rel} holds a real id"
            assert f.stat().st_mode & 0o007 == 0, f"{rel} is readable by others"
    assert not any(s in printed for s in SECRETS), printed

    # the same job cannot be continued without pseudonyms, or with another key
    plain = _score(manifest, "--out", job)
    assert plain.returncode == 1 and f"was scored with --pseudonymize (key {key_id(KEY)})" in plain.stderr
    other = _score(manifest, "--out", job, "--pseudonymize", env_key=b"another key of enough length")
    assert other.returncode == 1 and "was scored with --pseudonymize" in other.stderr
    assert not (job / "predictions" / "MRN-4711").exists()


def test_the_key_never_comes_from_the_command_line(tmp_path, manifest):
    run = lambda *a: CliRunner().invoke(cli, ["score", str(manifest), "--out", str(tmp_path / "j"), *a])  # noqa: E731
    os.environ.pop(KEY_ENV, None)
    no_key = run("--pseudonymize")
    assert no_key.exit_code == 1 and f"--key-file FILE or the {KEY_ENV} environment variable" in no_key.output
    assert "No such option" in run("--pseudonymize", "--key", "secret").output
    short = tmp_path / "short.key"
    short.write_text("abc\n")
    too_short = run("--pseudonymize", "--key-file", str(short))
    assert too_short.exit_code == 1 and "the pseudonym key is 3 bytes; use at least 16" in too_short.output
    assert "only used with --pseudonymize" in run("--key-file", str(short)).output
    assert not (tmp_path / "j").exists()


def test_pseudonyms_are_keyed_stable_and_safe_ids():
    from idcmap.jobs.inputs import check_id

    a = patient_pseudonym(KEY, "MRN-4711")
    assert a == patient_pseudonym(KEY, "MRN-4711") != patient_pseudonym(b"x" * 16, "MRN-4711")
    assert a != patient_pseudonym(KEY, "MRN-4712") and check_id(a, "id", "test") == a
    # a slide pseudonym depends on its patient: equal file names of two patients stay apart
    assert slide_pseudonym(KEY, "A", "HE") != slide_pseudonym(KEY, "B", "HE")
