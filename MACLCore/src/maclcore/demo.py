"""The built-in demo: synthetic cardiac phantoms -> MACL pretraining -> finetuning on 2 labelled cases
(from random initialisation and from the pretrained model) -> prediction -> Dice -> overlay picture."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from typing import Any, Dict, Optional, Tuple

from .config import to_dict
from .data.augment import AugmentationConfig
from .data.phantom import write_phantom_dataset
from .errors import ConfigError
from .evaluation.evaluate import evaluate_folders, format_summary
from .evaluation.overlay import save_overlay_png
from .inference.predict import predict_files
from .io.atomic import write_json
from .io.pairing import find_images, pair_cases
from .io.segmentation import read_label_map
from .io.volume import read_volume
from .labels import CARDIAC
from .io.checkpoint import provenance
from .training.finetune import FinetuneConfig, finetune
from .training.loop import LoopConfig
from .training.pretrain import pretrain, pretrain_config
from .runtime.progress import Reporter


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo; the defaults finish within minutes on a 2-core CPU.

    Args:
        labelled: phantoms with labels used for finetuning.
        test: phantoms the models are evaluated on (never used for training or pretraining).
        unlabelled: extra phantoms whose images (only) are used for pretraining, with the labelled ones'.
        spacing: in-plane spacing in mm (coarse, so that the CPU demo is quick).
        channels: U-Net widths.
        rotation: finetuning rotation range in degrees. The phantoms' hearts turn by at most 30 degrees,
            so the demo augments within that range; real data keeps the full-circle default.
    """

    labelled: int = 2
    test: int = 4
    unlabelled: int = 16
    pretrain_epochs: int = 10
    finetune_epochs: int = 200
    spacing: float = 3.6
    channels: Tuple[int, ...] = (16, 32, 64, 128, 256)
    rotation: float = 30.0
    seed: int = 0
    pretrain: bool = True

    def __post_init__(self) -> None:
        # Checked before any phantom is written; the names are the demo's options.
        for name, least in (("pretrain_epochs", 1), ("finetune_epochs", 1), ("unlabelled", 0), ("labelled", 1),
                            ("test", 1)):
            if getattr(self, name) < least:
                raise ConfigError(name, f"must be >= {least}, got {getattr(self, name)}")


def _make_data(folder: str, config: DemoConfig) -> Dict[str, str]:
    sets = {"labelled": config.labelled, "test": config.test, "unlabelled": config.unlabelled}
    for offset, (name, count) in enumerate(sets.items()):
        if count:
            write_phantom_dataset(os.path.join(folder, name), count, seed=config.seed * 10 + offset + 1, prefix=name)
    return {name: os.path.join(folder, name) for name in sets}


def run_demo(output: str, config: DemoConfig = DemoConfig(), device: str = "auto",
             reporter: Optional[Reporter] = None) -> Dict[str, Any]:
    """Run the whole demo into ``output``; returns the report (also written to ``output/report.json``)."""
    reporter = reporter or Reporter()
    started = time.perf_counter()
    data = _make_data(os.path.join(output, "data"), config)
    reporter.message(f"demo: {config.labelled} labelled, {config.test} test and {config.unlabelled} unlabelled "
                     f"phantoms in {data['labelled']}/..")
    loop = LoopConfig(epochs=config.finetune_epochs, batch_size=8, seed=config.seed)
    finetune_config = FinetuneConfig(loop=loop, channels=config.channels, spacing=config.spacing,
                                     augmentation=AugmentationConfig(rotation=config.rotation))
    labelled = pair_cases(os.path.join(data["labelled"], "imagesTr"), os.path.join(data["labelled"], "labelsTr"))
    arms: Dict[str, Optional[str]] = {"random init": None}
    if config.pretrain:
        pretrained = os.path.join(output, "pretrained.pt")
        sources = [os.path.join(data[name], "imagesTr") for name in ("labelled", "unlabelled") if getattr(config, name)]
        pretrain(find_images(sources), pretrained, pretrain_config(
            "macl", loop=LoopConfig(epochs=config.pretrain_epochs, batch_size=16, seed=config.seed),
            channels=config.channels, spacing=config.spacing), device=device, reporter=reporter)
        arms["MACL pretrained"] = pretrained
    test_images = [c.image for c in find_images([os.path.join(data["test"], "imagesTr")])]
    results: Dict[str, Any] = {}
    for arm, init in arms.items():
        slug = "macl" if init else "random"
        model = os.path.join(output, f"model_{slug}.pt")
        finetune(labelled, model, finetune_config, init=init, device=device, reporter=reporter)
        predictions = os.path.join(output, "predictions", slug)
        predict_files(model, test_images, predictions, device=device, reporter=reporter)
        report = evaluate_folders(predictions, os.path.join(data["test"], "labelsTr"), CARDIAC, reporter=reporter)
        results[arm] = {"model": model, "predictions": predictions, "summary": report["summary"],
                        "cases": report["cases"], "table": format_summary(report)}
    best = list(results)[-1]
    overlay = os.path.join(output, "overlay.png")
    case = sorted(os.listdir(results[best]["predictions"]))[0]
    image = read_volume(test_images[0])
    truth = read_label_map(os.path.join(data["test"], "labelsTr", case), CARDIAC, image.geometry)
    prediction = read_label_map(os.path.join(results[best]["predictions"], case), CARDIAC, image.geometry)
    save_overlay_png(overlay, image.array, prediction, CARDIAC, truth)
    report = {"provenance": provenance(), "config": to_dict(config), "device": device, "overlay": overlay,
              "seconds": round(time.perf_counter() - started, 1),
              "mean_dice": {arm: r["summary"]["mean_foreground"]["dice"]["mean"] for arm, r in results.items()},
              "arms": {arm: {k: v for k, v in r.items() if k != "table"} for arm, r in results.items()}}
    write_json(os.path.join(output, "report.json"), report)  # strict JSON
    report["tables"] = {arm: r["table"] for arm, r in results.items()}
    return report


def quick(config: DemoConfig) -> DemoConfig:
    """A much smaller demo, to check the machinery (used by the tests)."""
    return replace(config, labelled=2, test=1, unlabelled=2, pretrain_epochs=1, finetune_epochs=2,
                   channels=(8, 16, 32, 64, 128))
