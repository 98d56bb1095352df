"""Case suggestion (``maclcore suggest``): the entropy maths against hand computations, the greedy ranking on
embeddings with known answers, and end to end with a model trained on phantoms: an exact copy of a labelled
volume has diversity 0 and ranks below a new volume; an image the model cannot read (inverted contrast) is
more uncertain than one it was trained on."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from maclcore.active.selection import greedy_rank, typical_distance
from maclcore.active.suggest import suggest
from maclcore.active.uncertainty import area_per_slice, ensemble_entropies, normalised_entropy, turn_angles, turned
from maclcore.data.phantom import make_phantom, write_phantom_dataset
from maclcore.io.volume import read_volume, write_volume
from reliability_utils import assert_one_line_error, one_thread, run_cli  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

# 96 steps, ~7 s on one loaded CPU core: a model that has learnt the phantoms (uncertain area ~130 cm^2 per
# slice on them, against ~270 on inverted contrast; 20 epochs at 4 mm: ~36 against ~146).
TRAIN = ["--channels", "8,16,32,64,128", "--spacing", "5", "--epochs", "12", "--steps-per-epoch", "8",
         "--batch-size", "8", "--lr", "1e-2", "--seed", "0", "--device", "cpu", "--progress", "none"]


# -- uncertainty ------------------------------------------------------------------------------------------
def test_entropy_matches_a_hand_computation():
    pixels = [[0.2, 0.3, 0.5], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]]
    probs = torch.tensor(pixels, dtype=torch.float64).T.reshape(1, 3, 1, 4)  # (N, C, H, W)
    by_hand = [-sum(p * math.log(p) for p in pixel if p > 0) / math.log(3) for pixel in pixels]
    assert by_hand[1] == 0 and abs(by_hand[2] - 1) < 1e-12
    assert torch.allclose(normalised_entropy(probs)[0, 0], torch.tensor(by_hand, dtype=torch.float64), atol=1e-9)


def test_ensemble_total_and_disagreement():
    sure_a = torch.tensor([1.0, 0.0]).reshape(1, 2, 1, 1)
    sure_b = torch.tensor([0.0, 1.0]).reshape(1, 2, 1, 1)
    soft = torch.tensor([0.5, 0.5]).reshape(1, 2, 1, 1)
    total, disagreement = ensemble_entropies(torch.stack([sure_a, sure_b]))  # confident, opposite
    assert torch.allclose(total, torch.ones(1, 1, 1)) and torch.allclose(disagreement, torch.ones(1, 1, 1))
    total, disagreement = ensemble_entropies(torch.stack([soft, soft]))  # agree on being unsure
    assert torch.allclose(total, torch.ones(1, 1, 1)) and torch.allclose(disagreement, torch.zeros(1, 1, 1))
    total, disagreement = ensemble_entropies(torch.stack([sure_a, sure_a]))
    assert float(total.abs().max()) < 1e-6 and float(disagreement.abs().max()) < 1e-6


def test_uncertain_area_sums_inside_the_slice_only():
    pixel_map = torch.full((2, 4, 4), 0.5)
    mask = torch.zeros(4, 4)
    mask[1:3, 1:3] = 1  # the slice's own extent; the rest is padding
    assert torch.allclose(area_per_slice(pixel_map, mask, pixel_area=0.25), torch.tensor([0.5, 0.5]))


def test_test_time_rotations_are_exact_and_undone():
    images = torch.randn(2, 1, 8, 8)
    assert turn_angles(1) == [0] and turn_angles(2) == [0, 2] and turn_angles(4) == [0, 1, 2, 3]
    for quarter in turn_angles(4):
        assert torch.equal(turned(turned(images, quarter), -quarter), images)
    with pytest.raises(ValueError):
        turn_angles(3)


# -- greedy ranking ------------------------------------------------------------------------------------------
def test_duplicates_of_labelled_and_of_each_other_are_pushed_down():
    labelled = np.array([[0.0, 0.0]])
    candidates = np.array([[0.0, 0.0],    # 0: exact copy of the labelled volume, the most uncertain
                           [3.0, 0.0],    # 1: distinct, least uncertain
                           [0.0, 3.0],    # 2: distinct, uncertain
                           [0.0, 3.01]])  # 3: near-duplicate of 2, a little more uncertain
    order = greedy_rank(np.array([5.0, 1.0, 2.0, 2.1]), candidates, labelled)
    assert [c.index for c in order] == [3, 1, 2, 0]  # a plain sort by score would put 2 second
    by_index = {c.index: c for c in order}
    assert by_index[0].diversity == 0 and by_index[0].score == 0 and by_index[0].nearest == ("labelled", 0)
    assert by_index[2].nearest == ("chosen", 3) and by_index[2].diversity < 0.01
    assert by_index[3].diversity == 1.0  # far from the labelled volume: capped
    for choice in order:
        assert choice.score == pytest.approx(choice.uncertainty * choice.diversity)


def test_outliers_gain_nothing_beyond_the_cap_and_nothing_labelled_starts_with_the_most_uncertain():
    candidates = np.array([[100.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    order = greedy_rank(np.array([1.0, 2.0, 0.5, 0.5, 0.5]), candidates, np.array([[0.0, 0.0]]))
    # Without the cap the outlier (index 0) would score 1.0 x ~70; with it, 1.0 against 2.0 x 0.71.
    assert order[0].index == 1 and order[1].index == 0 and order[1].diversity == 1.0
    order = greedy_rank(np.array([1.0, 3.0, 2.0, 0.5, 0.5]), candidates)
    assert order[0].index == 1 and order[0].diversity == 1.0 and order[0].nearest is None


def test_distances_are_in_units_of_the_typical_distance():
    embeddings = np.random.default_rng(0).normal(size=(400, 8))
    # The distance between two standard normal points is sqrt(2 x chi-square(8)): median sqrt(2 x 7.344).
    assert typical_distance(embeddings) == pytest.approx(math.sqrt(2 * 7.344), rel=0.05)
    assert typical_distance(np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [3.0, 4.0]])) == pytest.approx(2.5)
    scaled = greedy_rank(np.ones(5), embeddings[:5] * 1000.0)
    plain = greedy_rank(np.ones(5), embeddings[:5])
    assert [c.index for c in scaled] == [c.index for c in plain]
    assert [c.distance for c in scaled[1:]] == pytest.approx([c.distance for c in plain[1:]])


# -- end to end ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    from maclcore.cli.main import main

    root = tmp_path_factory.mktemp("suggest")
    write_phantom_dataset(str(root / "train"), 3, seed=11, prefix="train")
    model = root / "model.pt"
    assert main(["finetune", "--images", str(root / "train" / "imagesTr"), "--labels", str(root / "train" / "labelsTr"),
                 "--out", str(model)] + TRAIN) == 0
    candidates = root / "candidates"
    candidates.mkdir()
    shutil.copy(root / "train" / "imagesTr" / "train_000_0000.nii.gz", candidates / "copy.nii.gz")
    fresh = make_phantom(12000)
    write_volume(fresh.image, fresh.geometry, candidates / "fresh.nii.gz")
    volume = read_volume(root / "train" / "imagesTr" / "train_000_0000.nii.gz")
    write_volume(volume.array.max() - volume.array, volume.geometry, candidates / "inverted.nii.gz")
    return {"model": model, "train": root / "train" / "imagesTr", "candidates": candidates, "root": root}


def test_a_copy_of_a_labelled_volume_ranks_below_a_new_one(trained):
    report = suggest(trained["model"], [trained["candidates"], trained["train"]], [trained["train"]], device="cpu")
    assert sorted(report["excluded_as_labelled"]) == ["train_000", "train_001", "train_002"]
    ranking = {r["case"]: r for r in report["ranking"]}
    assert set(ranking) == {"copy", "fresh", "inverted"}
    assert ranking["copy"]["diversity"] < 1e-6 and ranking["copy"]["nearest"] == "train_000"
    assert ranking["copy"]["rank"] == 3 and ranking["fresh"]["rank"] < ranking["copy"]["rank"]
    assert ranking["fresh"]["diversity"] > 0.2


def test_an_unreadable_image_is_more_uncertain_than_a_training_image(trained):
    report = suggest(trained["model"], [trained["candidates"]], device="cpu")
    ranking = {r["case"]: r for r in report["ranking"]}
    # The model saw train_000 (= copy) in training; inverted contrast is nothing it learnt (measured 2.1x).
    assert ranking["inverted"]["uncertainty"] > 1.5 * ranking["copy"]["uncertainty"]
    assert ranking["inverted"]["rank"] == 1
    assert all(0 <= r["disagreement"] <= r["uncertainty"] for r in report["ranking"])


def test_cli_prints_a_sorted_table_and_writes_json(trained, capfd, tmp_path):
    out = tmp_path / "suggestions.json"
    code, stdout, stderr = run_cli(["suggest", "--model", trained["model"], "--images", trained["candidates"],
                                    "--labelled", trained["train"], "--top", "2", "--json", out,
                                    "--rotations", "2", "--device", "cpu", "--progress", "none"], capfd)
    assert code == 0, stderr
    report = json.loads(out.read_text())
    assert [r["rank"] for r in report["ranking"]] == [1, 2] and report["rotations"] == 2
    assert len(report["model_sha256"]) == 64 and report["labelled"] == ["train_000", "train_001", "train_002"]
    scores = [r["score"] for r in report["ranking"]]
    lines = stdout.strip().splitlines()
    assert lines[0].split()[:6] == ["rank", "case", "uncertainty", "disagreement", "diversity", "score"]
    assert [line.split()[1] for line in lines[2:]] == [r["case"] for r in report["ranking"]]
    assert scores[0] >= scores[1] or report["ranking"][1]["diversity"] < 1  # greedy: a later pick may score more
    code, stdout, stderr = run_cli(["suggest", "--model", trained["model"], "--images", trained["candidates"],
                                    "--top", "0", "--device", "cpu", "--progress", "none"], capfd)
    assert_one_line_error(code, stdout, stderr, [], "--top must be >= 1")
