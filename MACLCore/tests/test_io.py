"""Volumes, label maps and Slicer segmentations: geometry survives every round trip."""

import locale
import os

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk

from maclcore.errors import InputError
from maclcore.io.naming import split_extension
from maclcore.io.pairing import find_images, pair_cases
from maclcore.io.seg_nrrd import read_seg_nrrd
from maclcore.io.segmentation import read_label_map, write_label_map
from maclcore.io.volume import Geometry, read_geometry, read_volume, write_volume
from maclcore.labels import CARDIAC

# Values that are not round numbers, and an oblique direction, so any loss of precision shows.
OBLIQUE = Geometry(size=(9, 7, 5), spacing=(1.2345678901, 0.9876543210, 9.87654321),
                   origin=(-12.3456789012, 45.678901234, 3.14159265358979),
                   direction=tuple(np.linalg.qr(np.array([[0.9, -0.3, 0.1], [0.35, 0.92, 0.2],
                                                          [-0.05, -0.2, 0.98]]))[0].ravel()))


def labels_on(geometry, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4, size=geometry.shape).astype(np.uint8)


# MHA stores spacing and direction as written (bit-exact); NRRD stores direction x spacing, so reading
# divides again (exact to double rounding); NIfTI stores float32.
@pytest.mark.parametrize("extension,tolerance", [(".mha", 0.0), (".nrrd", 1e-12), (".nii.gz", None)])
def test_volume_round_trip_keeps_geometry(tmp_path, extension, tolerance):
    array = np.random.default_rng(1).normal(size=OBLIQUE.shape).astype(np.float32)
    path = tmp_path / f"vol{extension}"
    write_volume(array, OBLIQUE, path)
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.array, array)
    if tolerance == 0.0:
        assert volume.geometry == OBLIQUE
    elif tolerance is not None:
        assert volume.geometry.size == OBLIQUE.size
        for field in ("spacing", "origin", "direction"):
            np.testing.assert_allclose(getattr(volume.geometry, field), getattr(OBLIQUE, field), rtol=tolerance, atol=tolerance)
    else:
        # NIfTI stores geometry in float32: the first trip rounds it, later trips keep it.
        assert volume.geometry.matches(OBLIQUE, tolerance=1e-5)
        write_volume(volume.array, volume.geometry, tmp_path / "again.nii.gz")
        assert read_volume(tmp_path / "again.nii.gz").geometry.matches(volume.geometry, tolerance=1e-7)
    assert read_geometry(path).matches(volume.geometry, tolerance=1e-9)


@pytest.mark.parametrize("extension", [".seg.nrrd", ".nrrd", ".nii.gz", ".mha"])
def test_label_map_round_trip(tmp_path, extension):
    labels = labels_on(OBLIQUE)
    path = tmp_path / f"labels{extension}"
    write_label_map(labels, OBLIQUE, path, CARDIAC)
    np.testing.assert_array_equal(read_label_map(path, CARDIAC), labels)
    reference = OBLIQUE if extension != ".nii.gz" else read_geometry(path)
    np.testing.assert_array_equal(read_label_map(path, CARDIAC, reference), labels)


def test_seg_nrrd_header_names_colours_and_geometry(tmp_path):
    labels = labels_on(OBLIQUE)
    labels[labels == 2] = 0  # an empty segment is still listed, with an empty extent
    path = tmp_path / "seg.seg.nrrd"
    write_label_map(labels, OBLIQUE, path, CARDIAC)
    data, header = nrrd.read(str(path), index_order="C")
    for index, (name, colour) in enumerate(zip(CARDIAC.names, CARDIAC.colors)):
        assert header[f"Segment{index}_Name"] == name
        assert header[f"Segment{index}_LabelValue"] == str(index + 1)
        assert np.allclose([float(c) for c in header[f"Segment{index}_Color"].split()], colour, atol=1e-6)
    assert header["Segment1_Extent"] == "0 -1 0 -1 0 -1"
    assert header["space"] == "left-posterior-superior"
    # Any NRRD reader sees the same grid.
    image = sitk.ReadImage(str(path))
    assert Geometry.from_sitk(image).matches(OBLIQUE, tolerance=1e-9)


def test_seg_nrrd_from_slicer_with_cropped_extent_layers_and_ras(tmp_path):
    """What Slicer writes: segments on two layers of a cropped extent, in RAS space, names in any case."""
    reference = Geometry(size=(10, 8, 4), spacing=(1.5, 1.5, 8.0), origin=(10.0, -20.0, 5.0),
                         direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    layers = np.zeros((3, 4, 5, 2), np.uint8)  # (z, y, x, layer) in C order of a (layer, x, y, z) file
    layers[1, 1, 2, 0] = 1  # "lv cavity" on layer 0, label value 1
    layers[2, 3, 4, 1] = 7  # "RV Cavity" on layer 1, label value 7
    offset = np.array([3, 2, 1])  # the crop starts at index (x=3, y=2, z=1)
    origin_lps = np.asarray(reference.origin) + offset * np.asarray(reference.spacing)
    header = {"space": "right-anterior-superior", "kinds": ["list", "domain", "domain", "domain"],
              "space directions": [[np.nan] * 3, [-1.5, 0, 0], [0, -1.5, 0], [0, 0, 8.0]],
              "space origin": origin_lps * np.array([-1, -1, 1]),
              "Segment0_Name": "lv cavity", "Segment0_LabelValue": "1", "Segment0_Layer": "0",
              "Segment1_Name": "RV Cavity", "Segment1_LabelValue": "7", "Segment1_Layer": "1"}
    path = tmp_path / "slicer.seg.nrrd"
    nrrd.write(str(path), layers, header, index_order="C")
    labels = read_label_map(path, CARDIAC, reference)
    assert labels.shape == reference.shape
    expected = np.zeros(reference.shape, np.uint8)
    expected[1 + 1, 2 + 1, 3 + 2] = 3
    expected[1 + 2, 2 + 3, 3 + 4] = 1
    np.testing.assert_array_equal(labels, expected)


def test_seg_nrrd_with_unknown_segment_is_refused(tmp_path):
    path = tmp_path / "liver.seg.nrrd"
    header = {"space": "left-posterior-superior", "space directions": np.eye(3), "space origin": np.zeros(3),
              "Segment0_Name": "Liver", "Segment0_LabelValue": "1", "Segment0_Layer": "0"}
    nrrd.write(str(path), np.ones((2, 2, 2), np.uint8), header, index_order="C")
    with pytest.raises(InputError, match="'Liver' is not in the label schema"):
        read_seg_nrrd(path, CARDIAC)


def test_label_map_grid_mismatch_and_out_of_schema_values(tmp_path):
    write_volume(labels_on(OBLIQUE), OBLIQUE, tmp_path / "ok.nrrd")
    shifted = Geometry(OBLIQUE.size, OBLIQUE.spacing, (0.0, 0.0, 0.0), OBLIQUE.direction)
    with pytest.raises(InputError, match="different grid"):
        read_label_map(tmp_path / "ok.nrrd", CARDIAC, shifted)
    bad = labels_on(OBLIQUE)
    bad[0, 0, 0] = 9
    write_volume(bad, OBLIQUE, tmp_path / "bad.nrrd")
    with pytest.raises(InputError, match=r"label values \[9\] outside the label schema"):
        read_label_map(tmp_path / "bad.nrrd", CARDIAC)


def write_dicom_series(folder, array, spacing, origin):
    """A minimal CT-like DICOM series, one file per slice, with the geometry tags a reader needs.

    GDCM's writer switches the process's locale to "C" (text files then read as ASCII in later tests), so the
    locale is put back afterwards.
    """
    previous = locale.setlocale(locale.LC_ALL)
    try:
        _write_dicom_slices(folder, array, spacing, origin)
    finally:
        locale.setlocale(locale.LC_ALL, previous)


def _write_dicom_slices(folder, array, spacing, origin):
    os.makedirs(folder)
    for k in range(array.shape[0]):
        image = sitk.GetImageFromArray(array[k:k + 1].astype(np.int16))
        position = (origin[0], origin[1], origin[2] + k * spacing[2])
        tags = {"0008|0060": "MR", "0020|000d": "1.2.3", "0020|000e": "1.2.3.4", "0020|0013": str(k + 1),
                "0020|0032": "\\".join(f"{v:.6f}" for v in position), "0020|0037": "1\\0\\0\\0\\1\\0",
                "0028|0030": f"{spacing[1]:.6f}\\{spacing[0]:.6f}", "0018|0050": f"{spacing[2]:.6f}"}
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        image.SetSpacing((spacing[0], spacing[1], spacing[2]))
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(os.path.join(folder, f"slice{k:03d}.dcm"))
        writer.Execute(image)


def test_dicom_series_folder_reads_as_one_volume(tmp_path):
    array = (np.arange(4 * 6 * 5).reshape(4, 6, 5) % 97).astype(np.int16)
    write_dicom_series(str(tmp_path / "series"), array, spacing=(0.8, 0.8, 6.0), origin=(-10.0, 20.0, 30.0))
    volume = read_volume(tmp_path / "series")
    np.testing.assert_array_equal(volume.array, array)
    assert np.allclose(volume.geometry.spacing, (0.8, 0.8, 6.0))
    assert np.allclose(volume.geometry.origin, (-10.0, 20.0, 30.0))
    cases = find_images([str(tmp_path)])
    assert [c.name for c in cases] == ["series"]


def test_dicom_series_with_a_missing_or_repeated_slice_is_refused(tmp_path):
    """GDCM sorts slices by position and ITK takes the spacing of the first two: a gap or a repeat would put
    every later slice millimetres off. Both are refused, naming the slices."""
    array = (np.arange(6 * 6 * 5).reshape(6, 6, 5) % 97).astype(np.int16)
    write_dicom_series(str(tmp_path / "gap"), array, spacing=(0.8, 0.8, 6.0), origin=(-10.0, 20.0, 30.0))
    os.remove(tmp_path / "gap" / "slice003.dcm")
    with pytest.raises(InputError, match=r"uneven slice spacing: 12 mm between slice002.dcm and slice004.dcm, "
                                         r"6 mm elsewhere \(a missing slice\?\)"):
        read_volume(tmp_path / "gap")
    write_dicom_series(str(tmp_path / "repeat"), array, spacing=(0.8, 0.8, 6.0), origin=(-10.0, 20.0, 30.0))
    image = sitk.ReadImage(str(tmp_path / "repeat" / "slice002.dcm"))
    image.SetMetaData("0020|0013", "99")  # another instance, at the position of slice 2
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetFileName(str(tmp_path / "repeat" / "slice099.dcm"))
    previous = locale.setlocale(locale.LC_ALL)
    try:
        writer.Execute(image)
    finally:
        locale.setlocale(locale.LC_ALL, previous)
    with pytest.raises(InputError, match=r"slices slice0(02|99).dcm and slice0(02|99).dcm lie at the same position"):
        read_volume(tmp_path / "repeat")


def test_pairing_by_nnunet_names_and_equal_names(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    geometry = Geometry((4, 4, 2), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    for name in ("a_0000.nii.gz", "b.nrrd"):
        write_volume(np.zeros(geometry.shape, np.float32), geometry, tmp_path / "images" / name)
    write_volume(np.zeros(geometry.shape, np.uint8), geometry, tmp_path / "labels" / "a.nii.gz")
    write_label_map(np.zeros(geometry.shape, np.uint8), geometry, tmp_path / "labels" / "b.seg.nrrd", CARDIAC)
    cases = pair_cases(tmp_path / "images", tmp_path / "labels")
    assert [(c.name, os.path.basename(c.image), os.path.basename(c.label)) for c in cases] == [
        ("a", "a_0000.nii.gz", "a.nii.gz"), ("b", "b.nrrd", "b.seg.nrrd")]
    assert split_extension("x.seg.nrrd") == ("x", ".seg.nrrd")
    assert split_extension("x_0000.nii.gz") == ("x_0000", ".nii.gz")


def test_pairing_reports_missing_labels_and_duplicates(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    geometry = Geometry((4, 4, 2), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    write_volume(np.zeros(geometry.shape, np.float32), geometry, tmp_path / "images" / "a_0000.nii.gz")
    with pytest.raises(InputError, match="no label map for 1 image"):
        pair_cases(tmp_path / "images", tmp_path / "labels")
    write_volume(np.zeros(geometry.shape, np.float32), geometry, tmp_path / "images" / "a.nrrd")
    with pytest.raises(InputError, match="same case name 'a'"):
        pair_cases(tmp_path / "images", tmp_path / "labels")
