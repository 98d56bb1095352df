"""Post-processing of predicted label maps: the myocardium's enclosed cavity, the heart as one object, then
each structure's largest island."""

import numpy as np
import pytest

from maclcore.errors import ConfigError
from maclcore.inference.postprocess import clean_prediction, fill_enclosed_cavity, keep_largest_component
from maclcore.labels import CARDIAC, LabelSchema


def _heart_and_a_stray_blob() -> np.ndarray:
    """A small heart (RV 1 beside MYO 2 around an LV cavity 3) and, far away, a larger blob called LV
    cavity, as a model unsure of the LV cavity predicts a bright structure elsewhere."""
    labels = np.zeros((6, 80, 80), np.uint8)
    labels[1:5, 10:30, 10:30] = 2  # myocardium block
    labels[1:5, 15:25, 15:25] = 3  # LV cavity inside it: 400 voxels
    labels[1:5, 10:30, 30:38] = 1  # RV touching the myocardium
    labels[1:5, 55:70, 55:70] = 3  # stray blob: 900 voxels, larger than the true cavity
    return labels


def test_one_object_keeps_the_structure_inside_the_heart_not_the_largest_island():
    labels = _heart_and_a_stray_blob()
    truth = labels.copy()
    truth[1:5, 55:70, 55:70] = 0
    result = keep_largest_component(labels.copy(), 4, one_object=True)
    np.testing.assert_array_equal(result, truth)
    # Per class alone keeps the stray blob and drops the real cavity.
    alone = keep_largest_component(labels.copy(), 4)
    assert (alone[1:5, 55:70, 55:70] == 3).all() and not (alone[1:5, 15:25, 15:25] == 3).any()


def test_one_object_still_drops_a_class_island_inside_the_heart_and_handles_empty_maps():
    labels = _heart_and_a_stray_blob()
    labels[1:5, 55:70, 55:70] = 0
    labels[2, 20, 12] = 1  # an RV voxel inside the myocardium, apart from the RV
    result = keep_largest_component(labels.copy(), 4, one_object=True)
    assert result[2, 20, 12] == 0  # a separate RV island: background (its neighbours are myocardium)
    empty = np.zeros((3, 8, 8), np.uint8)
    assert not keep_largest_component(empty, 4, one_object=True).any()


def test_the_cardiac_schema_is_one_object_and_the_flag_survives_a_model_file():
    assert CARDIAC.one_object
    assert LabelSchema.from_dict(CARDIAC.to_dict()).one_object
    other = LabelSchema(names=("liver", "spleen"), colors=((1, 0, 0), (0, 1, 0)))
    assert not other.one_object and not LabelSchema.from_dict(other.to_dict()).one_object
    # Model files written before the flag existed: the cardiac labels are the heart, others keep islands only.
    assert not LabelSchema.from_dict({"names": ["a"], "colors": [[1, 0, 0]]}).one_object
    old = {"names": ["RV cavity", "LV myocardium", "LV cavity"], "colors": CARDIAC.to_dict()["colors"],
           "single_component": True}
    assert LabelSchema.from_dict(old).one_object
    assert not LabelSchema.from_dict({**old, "one_object": False}).one_object  # what a file says wins


def _ring_around_a_mislabelled_cavity() -> np.ndarray:
    """Four slices of a closed myocardial ring (2) whose cavity the model called RV (1) in slices 0-1 and
    left as background in slice 3 (LV cavity 3 only in slice 2), beside a larger real RV outside the ring."""
    labels = np.zeros((4, 40, 40), np.uint8)
    labels[:, 10:30, 10:30] = 2
    labels[:, 14:26, 14:26] = 1  # the cavity, 144 pixels a slice, called RV: 288 voxels in slices 0-1
    labels[2, 14:26, 14:26] = 3
    labels[3, 14:26, 14:26] = 0
    labels[:, 12:28, 30:38] = 1  # the real RV against the ring: 128 pixels a slice, 512 voxels
    return labels


def test_the_background_the_wall_encloses_becomes_the_cavity_in_every_slice_and_nothing_else_changes():
    labels = _ring_around_a_mislabelled_cavity()
    labels[0, 14:26, 14:26] = 0
    result = fill_enclosed_cavity(labels.copy(), wall=2, cavity=3)
    assert (result[0, 14:26, 14:26] == 3).all() and (result[3, 14:26, 14:26] == 3).all()  # first and last slice
    changed = np.zeros(labels.shape, bool)
    changed[0, 14:26, 14:26] = changed[3, 14:26, 14:26] = True
    np.testing.assert_array_equal(result[~changed], labels[~changed])  # RV inside the ring stays RV (slice 1)
    # An open ring (a basal slice cut through the outflow) encloses nothing: left as predicted.
    opened = labels.copy()
    opened[:, 18:22, 26:30] = 0
    np.testing.assert_array_equal(fill_enclosed_cavity(opened.copy(), 2, 3), opened)


def test_cleaning_drops_the_stray_rv_in_the_ring_then_fills_the_cavity_and_keeps_an_enclosed_real_rv():
    labels = _ring_around_a_mislabelled_cavity()
    result = clean_prediction(labels.copy(), CARDIAC)
    assert (result[:, 14:26, 14:26] == 3).all() and (result[:, 12:28, 30:38] == 1).all()
    # A hypertrophic heart: myocardium predicted around the real RV as well. The RV stays RV.
    walled = labels.copy()
    walled[:, 8:32, 38:40] = 2
    walled[:, 8:12, 30:38] = walled[:, 28:32, 30:38] = 2
    result = clean_prediction(walled.copy(), CARDIAC)
    assert (result[:, 12:28, 30:38] == 1).all() and (result[:, 14:26, 14:26] == 3).all()
    # A schema without a wall keeps the islands rule only: the cavity of slices 0-1 and 3 is left empty.
    plain = LabelSchema(names=CARDIAC.names, colors=CARDIAC.colors, one_object=True)
    np.testing.assert_array_equal(clean_prediction(labels.copy(), plain),
                                  keep_largest_component(labels.copy(), 4, one_object=True))
    assert not (clean_prediction(labels.copy(), plain)[[0, 1, 3], 14:26, 14:26]).any()


def test_the_wall_survives_a_model_file_and_defaults_to_the_hearts_for_old_cardiac_files():
    assert LabelSchema.from_dict(CARDIAC.to_dict()).wall_encloses == (2, 3)
    old = {"names": list(CARDIAC.names), "colors": CARDIAC.to_dict()["colors"]}  # written before the field
    assert LabelSchema.from_dict(old).wall_encloses == (2, 3)
    assert LabelSchema.from_dict({**old, "wall_encloses": None}).wall_encloses is None  # what a file says wins
    assert LabelSchema.from_dict({"names": ["a", "b"], "colors": [[1, 0, 0], [0, 1, 0]]}).wall_encloses is None
    for bad in ([1, 1], [0, 2], [2, 4], [2], "23", [2.0, 3.0]):
        with pytest.raises(ConfigError, match="wall_encloses"):
            LabelSchema.from_dict({**old, "wall_encloses": bad})
