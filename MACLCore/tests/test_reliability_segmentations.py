"""One segmentation reader for every command, and label schemas that cannot hold what a label map cannot.

Slicer's ``.seg.nrrd`` allows more than a label map can mean (segments on several layers that overlap, label
value 0, two segments of one name, values beyond the voxel type); each is refused by name, never silently
read. Names travel in UTF-8 as Slicer writes them; names that would break a header are refused up front.
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import nrrd
import numpy as np
import pytest

from maclcore.errors import ConfigError, InputError
from maclcore.io.seg_nrrd import read_seg_nrrd, read_segments, write_seg_nrrd
from maclcore.io.segmentation import read_label_map, write_label_map
from maclcore.io.volume import Geometry
from maclcore.labels import CARDIAC, MAX_LABELS, LabelSchema, get_schema

from reliability_utils import run_cli

GRID = Geometry(size=(6, 5, 4), spacing=(1.5, 1.5, 8.0), origin=(10.0, -20.0, 5.0),
                direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
LPS = {"space": "left-posterior-superior", "space directions": np.diag([1.5, 1.5, 8.0]),
       "space origin": np.array([10.0, -20.0, 5.0])}


def slicer_file(path: Path, layers: np.ndarray, segments, kinds=None) -> Path:
    """A .seg.nrrd as Slicer writes it: (z, y, x[, layer]) voxels, segments as (name, value, layer) fields."""
    header = dict(LPS)
    if layers.ndim == 4:
        header["kinds"] = ["list", "domain", "domain", "domain"]
        header["space directions"] = [[np.nan] * 3] + [list(r) for r in np.diag([1.5, 1.5, 8.0])]
    for index, (name, value, layer) in enumerate(segments):
        header.update({f"Segment{index}_Name": name, f"Segment{index}_LabelValue": str(value),
                       f"Segment{index}_Layer": str(layer)})
    nrrd.write(str(path), layers, header, index_order="C")
    return path


def two_layers() -> np.ndarray:
    layers = np.zeros((4, 5, 6, 2), np.uint8)
    layers[1, 1:3, 1:3, 0] = 1  # LV cavity on layer 0
    layers[2, 2:4, 2:5, 1] = 1  # RV cavity on layer 1
    return layers


def test_two_layers_without_overlap_are_one_label_map(tmp_path):
    path = slicer_file(tmp_path / "a.seg.nrrd", two_layers(), [("LV cavity", 1, 0), ("RV cavity", 1, 1)])
    labels = read_label_map(path, CARDIAC, GRID)
    assert np.count_nonzero(labels == 3) == 4 and np.count_nonzero(labels == 1) == 6
    assert np.count_nonzero(labels) == 10


@pytest.mark.parametrize("case, segments, layers, message", [
    ("overlap across layers", [("LV cavity", 1, 0), ("RV cavity", 1, 1)], "overlap",
     r"segments 'LV cavity' and 'RV cavity' overlap in 2 voxels"),
    ("label value 0", [("LV cavity", 0, 0)], "one", r"'LV cavity' \(Segment0\) has label value 0; 0 is the background"),
    ("negative value", [("LV cavity", -1, 0)], "one", r"has label value -1"),
    ("two segments of one name", [("LV cavity", 1, 0), ("lv  Cavity", 2, 0)], "one",
     r"two segments named 'lv  Cavity' \(Segment0 and Segment1\)"),
    ("one value twice on a layer", [("LV cavity", 1, 0), ("RV cavity", 1, 0)], "one",
     r"'LV cavity' and 'RV cavity' have the same label value 1 on layer 0"),
    ("value beyond the voxel type", [("LV cavity", 300, 0)], "one", r"label value 300, which its uint8 voxels cannot"),
    ("layer that is not there", [("LV cavity", 1, 2)], "one", r"is on layer 2, but the file has 1 layer\b"),
    ("malformed label value", [("LV cavity", "one", 0)], "one", r"Segment0_LabelValue 'one', not a whole number"),
    ("fractional label value", [("LV cavity", "1.5", 0)], "one", r"Segment0_LabelValue '1.5', not a whole number"),
    ("malformed layer", [("LV cavity", 1, "nan")], "one", r"Segment0_Layer 'nan', not a whole number"),
    ("empty name", [("  ", 1, 0)], "one", r"with an empty name"),
])
def test_ambiguous_or_malformed_segmentations_are_refused_by_name(tmp_path, case, segments, layers, message):
    if layers == "overlap":
        data = two_layers()
        data[2, 2, 2, 0] = data[2, 3, 3, 0] = 1  # two LV voxels where the RV also is
    else:
        data = np.zeros((4, 5, 6), np.uint8)
        data[1, 1:3, 1:3] = 1
    path = slicer_file(tmp_path / "case.seg.nrrd", data, segments)
    with pytest.raises(InputError, match=message) as error:
        read_label_map(path, CARDIAC, GRID)
    assert str(path) in str(error.value)


def test_voxels_that_are_not_integers_are_refused(tmp_path):
    path = tmp_path / "float.seg.nrrd"
    nrrd.write(str(path), np.zeros((4, 5, 6), np.float32), {**LPS, "Segment0_Name": "LV cavity"}, index_order="C")
    with pytest.raises(InputError, match="voxels of type 'float'; a segmentation's voxels are integers"):
        read_seg_nrrd(path, CARDIAC)


def test_a_tiny_segmentation_claiming_10_gb_is_refused_from_its_header(tmp_path):
    path = tmp_path / "huge.seg.nrrd"
    path.write_bytes(b"NRRD0004\ntype: unsigned char\ndimension: 3\nsizes: 4000 1000 2500\nencoding: raw\n"
                     b"space: left-posterior-superior\nspace directions: (1,0,0) (0,1,0) (0,0,1)\n"
                     b"Segment0_Name:=LV cavity\n\n" + b"\0" * 64)
    start = time.perf_counter()
    with pytest.raises(InputError, match="claims 10000000000 voxels|is truncated|claims 10 GB"):
        read_label_map(path, CARDIAC)
    assert time.perf_counter() - start < 1.0


def test_compressed_segmentation_that_ends_early_is_refused(tmp_path):
    path = tmp_path / "cut.seg.nrrd"
    labels = np.random.default_rng(0).integers(0, 4, GRID.shape).astype(np.uint8)
    write_label_map(labels, GRID, path, CARDIAC)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 40])
    with pytest.raises(InputError, match="truncated|corrupt compressed"):
        read_label_map(path, CARDIAC, GRID)


def test_a_segment_of_another_structure_is_refused_naming_it(tmp_path):
    path = slicer_file(tmp_path / "liver.seg.nrrd", np.ones((4, 5, 6), np.uint8), [("Liver", 1, 0)])
    with pytest.raises(InputError, match=r"segment 'Liver' is not in the label schema \(RV cavity, LV myo"):
        read_label_map(path, CARDIAC, GRID)


def test_non_ascii_names_are_written_in_utf8_and_read_back(tmp_path):
    schema = LabelSchema(names=("Ventrikel rechts", "Myokard (ä)", "左心室"),
                         colors=((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)))
    labels = np.zeros(GRID.shape, np.uint8)
    labels[1, 1:3, 1:3], labels[2, 2, 2:4], labels[3, 0, 0] = 1, 2, 3
    path = tmp_path / "unicode.seg.nrrd"
    write_label_map(labels, GRID, path, schema)
    head = path.read_bytes().split(b"\n\n", 1)[0]
    assert "Segment2_Name:=左心室".encode("utf-8") in head  # what Slicer's reader expects
    assert [s.name for s in read_segments(path)] == list(schema.names)
    np.testing.assert_array_equal(read_label_map(path, schema, GRID), labels)
    # Any NRRD reader (pynrrd here) reads the voxels and the grid.
    data, header = nrrd.read(str(path), index_order="C")
    np.testing.assert_array_equal(data, labels)
    assert np.allclose(header["space origin"], GRID.origin)


def test_the_written_file_keeps_an_oblique_grid_exactly(tmp_path):
    angle = 0.3
    direction = (np.cos(angle), -np.sin(angle), 0.0, np.sin(angle), np.cos(angle), 0.0, 0.0, 0.0, 1.0)
    grid = Geometry(size=(6, 5, 4), spacing=(1.1, 1.3, 7.0), origin=(1.0, 2.0, 3.0), direction=direction)
    labels = np.zeros(grid.shape, np.uint8)
    labels[0, 0, 0] = 2
    write_seg_nrrd(labels, grid, tmp_path / "o.seg.nrrd", CARDIAC)
    _, geometry = read_seg_nrrd(tmp_path / "o.seg.nrrd", CARDIAC)
    assert geometry.matches(grid, tolerance=1e-12)


@pytest.mark.parametrize("data, message", [
    ({"names": "ABC", "colors": [[1, 0, 0]] * 3}, r"'names' must be a list of label names, got 'ABC'"),
    ({"names": ["LV", "lv "], "colors": [[1, 0, 0]] * 2}, r"names must be unique, ignoring case and spaces"),
    ({"names": ["Left  ventricle", "left ventricle"], "colors": [[1, 0, 0]] * 2}, r"must be unique"),
    ({"names": ["LV\nSegment9_Name:=x"], "colors": [[1, 0, 0]]}, r"must not contain control characters"),
    ({"names": ["LV", 3], "colors": [[1, 0, 0]] * 2}, r"label name must be text, got 3"),
    ({"names": [""], "colors": [[1, 0, 0]]}, r"must not be empty"),
    ({"names": ["LV"], "colors": [1, 0, 0]}, r"'colors' must be a list of \[r, g, b\] triples"),
    ({"names": [f"L{i}" for i in range(MAX_LABELS + 1)], "colors": [[1, 0, 0]] * (MAX_LABELS + 1)},
     r"has 256 labels; at most 255 are supported \(label maps are 8-bit\)"),
])
def test_schema_files_that_a_label_map_cannot_hold_are_refused(tmp_path, data, message):
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(InputError, match=message) as error:
        get_schema(str(path))
    assert str(path) in str(error.value)


def test_255_labels_fit_and_round_trip(tmp_path):
    schema = LabelSchema(names=tuple(f"L{i}" for i in range(MAX_LABELS)), colors=((0.5, 0.5, 0.5),) * MAX_LABELS)
    labels = (np.arange(np.prod(GRID.shape)) % 256).reshape(GRID.shape).astype(np.uint8)
    for name in ("many.seg.nrrd", "many.nii.gz"):
        write_label_map(labels, GRID, tmp_path / name, schema)
        np.testing.assert_array_equal(read_label_map(tmp_path / name, schema, GRID), labels)
    with pytest.raises(ConfigError):
        LabelSchema(names=schema.names + ("one more",), colors=schema.colors + ((0.5, 0.5, 0.5),))


def test_evaluate_reads_slicer_segmentations_as_finetune_does(tmp_path, capfd):
    """A multi-layer, cropped .seg.nrrd (what Slicer writes) is a reference for evaluate; an overlapping one is
    refused by evaluate with the same message as by the reader that finetune uses."""
    labels, predictions = tmp_path / "labels", tmp_path / "pred"
    labels.mkdir(), predictions.mkdir()
    truth = np.zeros(GRID.shape, np.uint8)
    truth[1, 1:3, 1:3], truth[2, 2:4, 2:5] = 3, 1
    write_label_map(truth, GRID, predictions / "c1.nii.gz", CARDIAC)
    # The reference: cropped to x 1..4, y 1..3, z 1..2 and on two layers.
    layers = two_layers()[1:3, 1:4, 1:5]
    header = {"space": "left-posterior-superior", "kinds": ["list", "domain", "domain", "domain"],
              "space directions": [[np.nan] * 3] + [list(r) for r in np.diag([1.5, 1.5, 8.0])],
              "space origin": np.array(GRID.origin) + np.array([1.5, 1.5, 8.0]),
              "Segment0_Name": "LV cavity", "Segment0_LabelValue": "1", "Segment0_Layer": "0",
              "Segment1_Name": "RV cavity", "Segment1_LabelValue": "1", "Segment1_Layer": "1"}
    nrrd.write(str(labels / "c1.seg.nrrd"), layers, header, index_order="C")
    out = tmp_path / "metrics.json"
    code, _, err = run_cli(["evaluate", "--pred", str(predictions), "--labels", str(labels),
                            "--json", str(out), "--no-hd95"], capfd)
    assert code == 0, err
    summary = json.loads(out.read_text())
    case = summary["cases"]["c1"]
    assert case["RV cavity"]["dice"] == 1.0 and case["LV cavity"]["dice"] == 1.0
    layers[1, 1, 1, 0] = 1  # now LV overlaps RV in one voxel
    nrrd.write(str(labels / "c1.seg.nrrd"), layers, header, index_order="C")
    code, _, err = run_cli(["evaluate", "--pred", str(predictions), "--labels", str(labels),
                            "--json", str(out), "--no-hd95"], capfd)
    assert code != 0 and "c1.seg.nrrd" in err and "overlap in 1 voxel;" in err


def test_gzip_data_of_our_writer_is_standard(tmp_path):
    """The data after the header is one gzip stream of the voxels in NRRD order (x fastest)."""
    labels = np.zeros(GRID.shape, np.uint8)
    labels[3, 4, 5] = 3
    path = tmp_path / "x.seg.nrrd"
    write_label_map(labels, GRID, path, CARDIAC)
    raw = gzip.decompress(path.read_bytes().split(b"\n\n", 1)[1])
    assert raw == labels.tobytes() and raw[-1] == 3
