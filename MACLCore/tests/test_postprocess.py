"""Post-processing of predicted label maps: the heart as one object, then each structure's largest island."""

import numpy as np

from maclcore.inference.postprocess import keep_largest_component
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
