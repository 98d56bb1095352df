"""One case-name rule for every caller: pairing (training and evaluation), prediction's output names and the
files beside a model all follow :mod:`maclcore.io.naming`. Pairing once stripped any ``_NNNN`` while
prediction stripped only ``_0000``, so a second-channel file got two different names."""

import os

import pytest

from maclcore.errors import InputError, MaclError
from maclcore.inference.predict import output_paths
from maclcore.io.naming import LABEL_EXTENSIONS, case_name, resume_path, safe_case_name
from maclcore.io.pairing import find_images, pair_cases

# (file or folder name, the case it holds)
NAMES = [("p1_0000.nii.gz", "p1"), ("p1_0001.nii.gz", "p1"), ("patient001_frame01.nii.gz", "patient001_frame01"),
         ("a.b.nrrd", "a.b"), ("case.seg.nrrd", "case"), ("scan_12345.nii", "scan_12345"), ("CT_0000.MHA", "CT"),
         ("series.v1", "series.v1")]  # the last one is a DICOM series folder: its whole name, dots included


def make(folder, name):
    """An empty file, or for a name without a volume extension a DICOM folder (which pairing reads as a volume)."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    if name == "series.v1":
        os.makedirs(path)
        open(os.path.join(path, "slice001.dcm"), "wb").close()
    else:
        open(path, "wb").close()
    return path


@pytest.mark.parametrize("name,case", NAMES)
def test_the_rule_itself(tmp_path, name, case):
    assert case_name(make(str(tmp_path), name)) == case


@pytest.mark.parametrize("name,case", NAMES)
def test_an_image_file_has_one_case_name_in_pairing_and_prediction(tmp_path, name, case):
    image = make(str(tmp_path / "in"), name)
    (found,) = find_images([image])
    assert found.name == case
    (target,) = output_paths([image], str(tmp_path / "out"), "nii.gz")
    assert target == os.path.join(str(tmp_path / "out"), case + ".nii.gz")
    # The prediction pairs with the case's label map in evaluation (predictions folder against labels folder).
    os.makedirs(os.path.dirname(target), exist_ok=True)
    open(target, "wb").close()
    label = make(str(tmp_path / "labels"), case + ".seg.nrrd")
    (pair,) = pair_cases(str(tmp_path / "out"), str(tmp_path / "labels"), image_extensions=LABEL_EXTENSIONS)
    assert (pair.name, pair.label) == (case, label)


# A second channel in a folder is refused (below); a .seg.nrrd is a segmentation, never an image in a folder.
@pytest.mark.parametrize("name,case", [(n, c) for n, c in NAMES if n not in ("p1_0001.nii.gz", "case.seg.nrrd")])
def test_a_folder_of_images_pairs_with_labels_under_the_same_name(tmp_path, name, case):
    make(str(tmp_path / "images"), name)
    make(str(tmp_path / "labels"), case + ".nii.gz")
    assert [c.name for c in find_images([str(tmp_path / "images")])] == [case]
    assert [c.name for c in pair_cases(str(tmp_path / "images"), str(tmp_path / "labels"))] == [case]


def test_a_second_channel_in_a_folder_is_refused_not_renamed(tmp_path):
    make(str(tmp_path / "images"), "p1_0001.nii.gz")
    with pytest.raises(InputError, match="second image channel"):
        find_images([str(tmp_path / "images")])


@pytest.mark.parametrize("node", ["patient001 ED", "scan_0001", "a/b", "***", "x_1234_0000", "héllo wörld"])
def test_safe_names_read_back_unchanged_as_image_and_label(tmp_path, node):
    """The names front ends write files under (``NAME_0000.nrrd`` and ``NAME.nrrd``) pair as NAME."""
    name = safe_case_name(node)
    assert case_name(name + "_0000.nrrd") == case_name(name + ".nrrd") == name
    make(str(tmp_path / "images"), name + "_0000.nrrd")
    make(str(tmp_path / "labels"), name + ".nrrd")
    assert [c.name for c in pair_cases(str(tmp_path / "images"), str(tmp_path / "labels"))] == [name]


def test_two_images_of_one_case_cannot_both_be_predicted_into_one_folder(tmp_path):
    images = [make(str(tmp_path), "p1_0000.nii.gz"), make(str(tmp_path), "p1_0001.nii.gz")]
    with pytest.raises(MaclError, match="same case name 'p1'"):
        output_paths(images, str(tmp_path / "out"), "nii.gz")


def test_files_beside_a_long_model_name_stay_within_the_name_limit(tmp_path):
    model = str(tmp_path / ("m" * 250 + ".pt"))
    state = resume_path(model)
    assert os.path.dirname(state) == str(tmp_path) and len(os.path.basename(state)) <= 255
    assert resume_path(model) == state  # found again by the next run


def test_a_long_free_form_name_gives_a_case_name_that_fits_a_file_name():
    long = "Cine SAX " + "é" * 150 + " frame 01 " + "x" * 200  # a Slicer node name of ~500 bytes
    first = safe_case_name(long)
    second = safe_case_name(long, taken={first})
    assert len(first.encode()) <= 120 and len(f"{second}_0000.seg.nrrd".encode()) < 200
    assert first != second and case_name(f"{first}_0000.nii.gz") == first
