"""Dice, IoU, HD95 against known answers; summaries."""

import math

import numpy as np
import pytest

from maclcore.evaluation.metrics import case_metrics, hd95, overlap_per_class, summarise


def test_dice_and_iou_known_values():
    truth = np.zeros((1, 10, 10), int)
    truth[0, :, :5] = 1  # 50 px
    prediction = np.zeros_like(truth)
    prediction[0, :, 2:7] = 1  # 50 px, 30 overlap
    prediction[0, 0, 9] = 2  # class 2 predicted, absent in truth
    result = overlap_per_class(prediction, truth, num_classes=4)
    assert result["dice"][0] == pytest.approx(2 * 30 / 100)
    assert result["iou"][0] == pytest.approx(30 / 70)
    assert result["dice"][1] == 0.0  # false positive only
    assert result["dice"][2] == 1.0 and result["iou"][2] == 1.0  # absent in both


def test_hd95_of_two_shifted_boxes_in_mm():
    a = np.zeros((20, 20, 20), bool)
    a[5:15, 5:15, 5:15] = True
    b = np.roll(a, 3, axis=2)  # shifted by 3 voxels along x
    assert hd95(a, a, (1, 1, 1)) == 0.0
    assert hd95(a, b, (1.0, 1.0, 2.0)) == pytest.approx(6.0)  # 3 voxels of 2 mm
    assert math.isnan(hd95(a, np.zeros_like(a), (1, 1, 1)))


def test_case_metrics_and_summary():
    truth = np.zeros((4, 8, 8), np.uint8)
    truth[1:3, 2:6, 2:6] = 1
    perfect = case_metrics(truth, truth, (10.0, 1.0, 1.0), ["A", "B"])
    assert perfect["A"] == {"dice": 1.0, "iou": 1.0, "hd95": 0.0}
    assert math.isnan(perfect["B"]["hd95"]) and perfect["B"]["dice"] == 1.0
    empty = case_metrics(np.zeros_like(truth), truth, (10.0, 1.0, 1.0), ["A", "B"])
    summary = summarise({"p": perfect, "e": empty})
    assert summary["A"]["dice"]["mean"] == pytest.approx(0.5)
    assert summary["A"]["dice"]["std"] == pytest.approx(0.5)
    assert summary["A"]["hd95"]["n"] == 1 and summary["A"]["hd95"]["undefined"] == 1
    assert summary["mean_foreground"]["dice"]["mean"] == pytest.approx((1.0 + 0.5) / 2)
