"""The performance benchmarks' machinery, tiny and on the CPU: known answers, no timing asserts."""

import json
import os
import sys

import numpy as np
import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

TINY = "4,8,8,16,16"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_bf16_peaks_by_gpu_name():
    from bench_pretrain import bf16_peak_tflops

    assert bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.4  # SXM
    assert bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bf16_peak_tflops("NVIDIA H100 NVL") == 835.0
    assert bf16_peak_tflops("NVIDIA H200") == 989.4
    assert bf16_peak_tflops("NVIDIA A100-SXM4-80GB") == bf16_peak_tflops("NVIDIA A100-PCIE-40GB") == 312.0
    assert bf16_peak_tflops("CPU: Intel(R) Xeon(R), 2 cores") is None
    assert bf16_peak_tflops("Tesla T4") is None


def test_flops_grow_with_the_pixels():
    from bench_pretrain import count_flops

    from maclcore.training.pretrain import pretrain_config

    channels = tuple(int(c) for c in TINY.split(","))
    config = pretrain_config("macl", channels=channels)
    # Sizes are multiples of 64: MACLNet pads a view to 16 x its dominant branch's downsampling (4).
    small, large = (count_flops(config, channels, size, 2, torch.device("cpu")) for size in (64, 128))
    assert small > 0
    assert 3.5 < large / small <= 4.0  # convolutions scale with pixels; the pooled heads do not
    assert count_flops(config, channels, 64, 4, torch.device("cpu")) == pytest.approx(2 * small, rel=0.05)


def test_reference_dataset_gives_two_views_and_identity_without_augmentation():
    from dataclasses import replace

    from bench_pretrain import ReferenceDataset, synthetic_slices

    from maclcore.data.augment import AugmentationConfig
    from maclcore.training.pretrain import pretrain_config

    images = synthetic_slices(3, 32)
    assert images.shape == (3, 1, 32, 32) and 0 <= float(images.min()) and float(images.max()) <= 1
    config = replace(pretrain_config("macl"), augmentation=AugmentationConfig(enabled=False))
    views, position = ReferenceDataset(images, torch.tensor([0.1, 0.5, 0.9]), config)[1]
    assert views.shape == (2, 1, 32, 32) and float(position) == pytest.approx(0.5)
    assert torch.allclose(views[0], images[1], atol=1e-5) and torch.allclose(views[1], images[1], atol=1e-5)
    augmented, _ = ReferenceDataset(images, torch.zeros(3), pretrain_config("macl"))[1]
    assert not torch.allclose(augmented[0], augmented[1])


def test_pretrain_benchmark_times_both_paths(tmp_path):
    import bench_pretrain

    out = tmp_path / "p.json"
    assert bench_pretrain.main(["--device", "cpu", "--sizes", "32", "--batch-sizes", "2", "--channels", TINY,
                                "--steps", "2", "--warmup", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == "pretrain_throughput" and report["bf16_dense_peak_tflops"] is None
    fast, reference = report["results"]
    assert (fast["path"], reference["path"]) == ("fast", "reference")
    assert fast["flops_per_step"] == reference["flops_per_step"] > 0
    assert fast["fraction_of_bf16_peak"] is None and fast["precision"] == "fp32" and reference["workers"] == 0
    assert np.isfinite(fast["loss"]) and np.isfinite(reference["loss"])
    (speedup,) = report["speedups"]
    assert speedup["speedup"] == pytest.approx(reference["median_step_s"] / fast["median_step_s"])
    assert report["torch"] == str(torch.__version__) and report["settings"]["steps"] == 2


def test_scaling_efficiency_and_two_process_run(tmp_path):
    import bench_scaling

    assert bench_scaling.efficiency({1: 100.0, 2: 180.0, 4: 200.0}) == {1: 1.0, 2: 0.9, 4: 0.5}
    out = tmp_path / "s.json"
    assert bench_scaling.main(["--device", "cpu", "--procs", "2", "--size", "32", "--batch-size", "2",
                               "--channels", TINY, "--steps", "2", "--warmup", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    one, two = report["runs"]
    assert (one["processes"], two["processes"]) == (1, 2) and report["settings"]["backend"] == "gloo"
    assert (one["global_batch"], two["global_batch"]) == (2, 4)  # weak scaling: same batch per process
    assert one["efficiency"] == 1.0
    assert two["efficiency"] == pytest.approx(two["slices_per_s"] / (2 * one["slices_per_s"]))


def test_host_peak_memory_is_per_stage():
    from bench_end_to_end import host_peak_gib, reset_host_peak, staged

    if not reset_host_peak():
        pytest.skip("peak RSS cannot be reset here")

    def allocate():
        block = np.ones(64 * 2 ** 20 // 8)  # 64 MiB, touched
        return float(block[-1])

    _, big = staged(torch.device("cpu"), allocate)
    _, small = staged(torch.device("cpu"), lambda: None)
    assert big["host_peak_is_per_stage"] and big["peak_host_gib"] - small["peak_host_gib"] > 0.05
    assert host_peak_gib() > 0


def test_perf_table_renders_known_results(tmp_path):
    import perf_table

    scaling = {"benchmark": "scaling", "device": "NVIDIA H100 80GB HBM3", "mode": "weak",
               "mode_meaning": "same batch per process (global batch grows)",
               "settings": {"size": 256, "threads_per_process": 1, "backend": "nccl"},
               "runs": [{"processes": 1, "global_batch": 16, "median_step_s": 0.1, "slices_per_s": 160.0,
                         "speedup": 1.0, "efficiency": 1.0},
                        {"processes": 2, "global_batch": 32, "median_step_s": 0.11, "slices_per_s": 290.9,
                         "speedup": 1.818, "efficiency": 0.909}]}
    (tmp_path / "scaling.json").write_text(json.dumps(scaling))
    (tmp_path / "other.json").write_text(json.dumps({"something": "else"}))
    text = perf_table.render([str(tmp_path / "scaling.json"), str(tmp_path / "other.json")])
    assert "H100 80GB HBM3, nccl, weak scaling" in text
    assert "| 2 | 32 | 110.0 | 290.9 | 1.82x | 90.9% |" in text
    assert perf_table.render([str(tmp_path / "other.json")]) == ""


def test_acdc_defaults_table_pools_draws_of_one_machine():
    import acdc_defaults

    def run(arm, m, rv, mean, cpu="EPYC", flags=("avx512_bf16",), **extra):
        return {"arm": arm, "m": m, "dice": {"RV": rv, "LV": mean}, "mean_dice": mean, "finetune_minutes": 10.0,
                "steps": 100, "cpu": cpu, "cpu_flags": list(flags), **extra}

    runs = [run("default", 2, 0.6, 0.7, mean_hd95_mm=10.0, **{"rv_below_0.1": 0.0}),
            run("default", 2, 0.8, 0.9, mean_hd95_mm=20.0, **{"rv_below_0.1": 0.5}),
            run("macl", 2, 0.9, 0.95, inference={"tta": {"mean_dice": 0.97}}),
            run("macl", 2, 0.9, 0.95),
            run("default", 2, 0.0, 0.1, flags=("avx2",))]  # another machine: not pooled
    text = acdc_defaults.table(runs, ("EPYC", ("avx512_bf16",)))
    lines = text.splitlines()
    assert lines[0].startswith("| M | arm | draws | RV | LV | mean Dice | with `--tta` |")
    assert lines[2] == "| 2 | default | 2 | 0.700 ± 0.100 | 0.800 ± 0.100 | **0.800 ± 0.100** | – | 15.0 ± 5.0 | 25% | 10.0 ± 0.0 | 100 ± 0 |"
    assert lines[3] == "| 2 | macl | 2 | 0.900 ± 0.000 | 0.950 ± 0.000 | **0.950 ± 0.000** | 0.970 (1) | – | – | 10.0 ± 0.0 | 100 ± 0 |"
    assert len(lines) == 4
    assert acdc_defaults.machine(runs[4]) == ("EPYC", ("avx2",))
    assert acdc_defaults.machine({"arm": "old"}) == (None, ())


def test_acdc_unlabelled_arm_never_sees_evaluation_or_training_patients():
    """The pseudo-labels of the unlabelled arm never come from an evaluation patient, nor from a patient the
    same draw trains on at any M it allows."""
    import acdc_defaults
    import study
    from study import draws

    pool = [p for p in range(1, 101) if p not in set(acdc_defaults.EVAL) and p % 2]  # 45 patients, no EVAL
    for draw in range(3):
        others = study.unlabelled_patients(pool, draw, 30, 8)
        assert len(set(others)) == 30 and not set(others) & set(acdc_defaults.EVAL)
        for m in (1, 2, 4, 8, 15):
            assert not set(others) & set(draws(pool, [m], draw + 1, 0)[m][draw])
    with pytest.raises(SystemExit, match="fewer than M = 16"):
        study.unlabelled_patients(pool, 0, 30, 16)


def test_postprocess_variants_score_the_heart_rule_on_a_stray_blob():
    import postprocess_variants as pv

    truth = np.zeros((4, 40, 40), np.uint8)
    truth[1:3, 5:15, 5:15] = 2
    truth[1:3, 8:12, 8:12] = 3
    truth[1:3, 5:15, 15:20] = 1
    prediction = truth.copy()
    prediction[1:3, 28:34, 28:34] = 3  # a stray "LV cavity": 72 voxels, more than the true one (32), less than the heart
    prediction[2, 8:12, 8:12] = 1  # the cavity of one slice called RV
    from maclcore.labels import CARDIAC

    maps = pv.variants(prediction, CARDIAC)
    assert list(maps) == list(pv.VARIANTS)
    dice = {name: overlap(maps[name], truth) for name in pv.VARIANTS}
    assert dice[pv.VARIANTS[3]] == [1.0, 1.0, 1.0]  # predict's: the ring's cavity, then the heart: the truth
    assert dice[pv.VARIANTS[2]][2] < 1.0  # the heart alone leaves that slice without LV cavity
    assert dice[pv.VARIANTS[1]][2] == 0.0  # largest island alone keeps the stray blob
    assert 0 < dice[pv.VARIANTS[0]][2] < 1  # none keeps both
    result = pv.score([np.array([0.05, 1.0, 1.0]), np.array([0.5, 0.5, 1.0])], ["RV", "MYO", "LV"])
    assert result["dice"] == {"RV": 0.275, "MYO": 0.75, "LV": 1.0}
    assert result["mean_dice"] == pytest.approx(0.675) and result["rv_below_0.1"] == 0.5


def overlap(prediction, truth):
    from maclcore.evaluation.metrics import overlap_per_class

    return [float(d) for d in overlap_per_class(prediction, truth, 4)["dice"]]


def test_pseudo_label_scores_per_class_over_kept_pixels():
    """The pseudo-label benchmark's Dice: per volume, then averaged; ignored pixels count in neither map."""
    from pseudo_label_quality import dice_per_class

    truth = np.zeros((2, 4, 4), np.uint8)
    truth[:, :2, :2] = 1  # 4 pixels of class 1 in each slice; class 2 absent
    pred = truth.copy()
    pred[0, 0, 0] = 0  # volume 0: 3 of 4 found -> Dice 6/7
    pred[1, 3, 3] = 2  # volume 1: class 1 perfect; a false class 2 pixel -> Dice 0
    volumes = np.array([0, 1])
    assert dice_per_class(pred, truth, volumes, 3) == pytest.approx([(6 / 7 + 1) / 2, (1 + 0) / 2])
    keep = np.ones_like(truth, bool)
    keep[0, 0, 0] = keep[1, 3, 3] = False  # the two mistakes ignored: perfect
    assert dice_per_class(pred, truth, volumes, 3, keep) == pytest.approx([1.0, 1.0])
