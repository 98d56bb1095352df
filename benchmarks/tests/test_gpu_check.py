"""The GPU check's machinery on the CPU, tiny: caches packed from ACDC-like phantoms, every cell trained from
them alone, and the scoring on the cache's grid equal to `maclcore predict` + `evaluate` where the grids agree."""

import json
import os
import shutil
import sys
from dataclasses import replace

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from maclcore.data.phantom import make_phantom  # noqa: E402
from maclcore.io.volume import write_volume  # noqa: E402


def write_acdc_like_at(folder, patients, spacing=(6.0, 6.0, 10.0)):
    """Phantoms named like ACDC, all at one spacing (so the caches' grid is each volume's own, padded)."""
    for patient in patients:
        for offset, frame in enumerate(("ED", "ES")):
            phantom = make_phantom(100 * patient + offset)
            geometry = replace(phantom.geometry, spacing=spacing)
            case = f"patient{patient:03d}_{frame}"
            write_volume(phantom.image, geometry, os.path.join(folder, "imagesTr", f"{case}_0000.nii.gz"))
            write_volume(phantom.labels, geometry, os.path.join(folder, "labelsTr", f"{case}.nii.gz"))


@pytest.mark.slow
def test_gpu_check_packs_trains_from_the_caches_and_scores_as_evaluate_does(tmp_path):
    import torch

    import gpu_check
    from maclcore.evaluation.evaluate import evaluate_folders
    from maclcore.inference.predict import predict_files
    from maclcore.labels import CARDIAC

    data = tmp_path / "data"
    write_acdc_like_at(str(data), range(1, 8))
    config = {"name": "tiny", "data": str(data), "eval_patients": [7], "seed": 0, "spacing": 6.0,
              "channels": [4, 8, 8, 16, 16], "finetune": {"epochs": 8, "steps_per_epoch": 10, "batch_size": 8}}
    (tmp_path / "tiny.json").write_text(json.dumps(config))
    pack = tmp_path / "gpu_pack"
    # float32 (not the default float16) so that the scoring below sees exactly the slices `predict` makes.
    manifest = gpu_check.pack(str(tmp_path / "tiny.json"), str(pack), unlabelled=2, dtype="float32")
    labelled = manifest["labelled"]
    assert set(labelled["M2"]) <= set(labelled["M4"]) and len(labelled["M4"]) == 4
    assert not set(manifest["unlabelled_patients"]) & (set(labelled["M4"]) | {7})
    shutil.rmtree(pack)  # only the archive travels
    shutil.rmtree(data)  # and neither the images nor their labels
    out = tmp_path / "result.json"
    assert gpu_check.main(["run", "--pack", str(pack), "--work", str(tmp_path / "work"), "--no-speed",
                           "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [(c["m"], c["arm"]) for c in report["cells"]] == [(2, "random"), (2, "self-training"),
                                                             (4, "random"), (4, "self-training")]
    for cell in report["cells"]:
        assert set(cell["cases"]) == {"patient007_ED", "patient007_ES"}
        assert cell["steps"] == 80 and bool(cell["unlabelled_patients"]) == (cell["arm"] == "self-training")
    model = torch.load(tmp_path / "work" / "self-training_M4.pt", weights_only=True)
    assert len(model["training"]["unlabelled_cases"]) == 4 and len(model["training"]["train_cases"]) == 8

    # Where the cache's grid is each scan's own (same spacing, padding only), the score is `evaluate`'s.
    write_acdc_like_at(str(data), [7])
    images, labels = data / "imagesTr", data / "labelsTr"
    predict_files(str(tmp_path / "work" / "random_M2.pt"), sorted(str(p) for p in images.iterdir()),
                  str(tmp_path / "pred"), device="cpu")
    expected = evaluate_folders(str(tmp_path / "pred"), str(labels), CARDIAC)["cases"]
    scored = gpu_check.score_cache(str(tmp_path / "work" / "random_M2.pt"), str(pack / "eval"), torch.device("cpu"),
                                   manifest["eval_shapes"])
    # A model that found the heart (so the comparison is of real segmentations, not of noise).
    assert min(expected[case]["LV myocardium"]["dice"] for case in expected) > 0.5
    for case, classes in scored["cases"].items():
        for name, dice in classes.items():
            assert dice == pytest.approx(expected[case][name]["dice"], abs=1e-6), (case, name)
