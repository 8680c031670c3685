"""What a job scores: files, folders, manifests; ids checked; the cluster config is valid."""

from __future__ import annotations

import pytest
import yaml

from idcmap.jobs.inputs import InputError, SlideTask, collect_tasks

from .conftest import REPO


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_folder_of_patients_and_loose_files(tmp_path):
    touch(tmp_path / "P1" / "a.svs")
    touch(tmp_path / "P1" / "b.ome.tiff")
    touch(tmp_path / "P1" / "notes.txt")
    touch(tmp_path / "P2" / "0" / "P2_idx5_x1_y1_class0.png")  # a Kaggle patient folder
    touch(tmp_path / "loose.tif")
    tasks = collect_tasks([tmp_path])
    assert [(t.patient_id, t.slide_id) for t in tasks] == [("P1", "a"), ("P1", "b"), ("P2", "P2"), ("loose", "loose")]
    assert all(t.source.startswith(str(tmp_path)) for t in tasks)


def test_manifest_with_relative_paths_mpp_and_several_slides(tmp_path):
    (tmp_path / "m.csv").write_text("patient_id,slide_path,mpp\nA,s/one.svs,0.5\nA,s/two.svs,\nB,/abs/three.svs,\n")
    tasks = collect_tasks([tmp_path / "m.csv"])
    assert tasks == [
        SlideTask("A", "one", str(tmp_path / "s" / "one.svs"), 0.5),
        SlideTask("A", "two", str(tmp_path / "s" / "two.svs")),
        SlideTask("B", "three", "/abs/three.svs"),
    ]


@pytest.mark.parametrize(
    "text, message",
    [
        ("patient,path\nA,a.svs\n", "lacks column(s) patient_id, slide_path"),
        ("patient_id,slide_path\nA,a.svs\nA,other/a.svs\n", "duplicate slide id 'a' for patient 'A'"),
        ("patient_id,slide_path\n../../etc,a.svs\n", "patient_id '../../etc' is not a safe id"),
        ("patient_id,slide_path\nA,a.svs,\n.hidden,b.svs\n", "'.hidden' is not a safe id"),
        ("patient_id,slide_path,mpp\nA,a.svs,fast\n", "mpp 'fast' is not a number"),
    ],
)
def test_bad_manifests_are_refused_with_the_line(tmp_path, text, message):
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        collect_tasks([tmp_path / "m.csv"])
    assert str(tmp_path / "m.csv") in str(err.value) or "duplicate" in str(err.value)


def test_non_ascii_names_and_the_same_slide_twice(tmp_path):
    slide = touch(tmp_path / "Müller" / "schnitt-ä.svs")
    tasks = collect_tasks([tmp_path, slide.parent / ".." / "Müller" / "schnitt-ä.svs"])
    assert [(t.patient_id, t.slide_id) for t in tasks] == [("Müller", "schnitt-ä"), ("schnitt-ä", "schnitt-ä")]
    assert len(collect_tasks([slide, slide])) == 1


def test_ray_cluster_yaml_is_a_valid_cluster_launcher_config():
    from ray.autoscaler._private.util import validate_config

    config = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    validate_config(config)  # raises on an invalid config
    assert config["provider"]["type"] == "local" and len(config["provider"]["worker_ips"]) >= 1
    assert any("pip install" in c and "/opt/idcmap" in c for c in config["setup_commands"])
