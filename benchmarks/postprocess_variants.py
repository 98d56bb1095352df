"""Which post-processing of a model's predictions scores best: none, each label's largest island, the
heart's (largest component of all foreground first, then each label's largest island), or predict's
(the heart's, then the background the myocardium's ring encloses made LV cavity).

Each model segments the evaluation images once without post-processing; the variants are applied to the
same label maps with MACLCore's own functions (:mod:`maclcore.inference.postprocess`) and
scored against the labels (Dice per class, mean, share of volumes with RV Dice < 0.1).

    python benchmarks/postprocess_variants.py --images EVAL/imagesTr --labels EVAL/labelsTr \\
        --models a.pt b.pt --output benchmarks/results/postprocess_cpu.json
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
import time
from typing import Dict, List, Sequence

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import bf16_flags, cpu_model  # noqa: E402

from maclcore.evaluation.metrics import overlap_per_class  # noqa: E402
from maclcore.inference.postprocess import clean_prediction, keep_largest_component  # noqa: E402
from maclcore.labels import LabelSchema  # noqa: E402

VARIANTS = ("none", "largest island per label", "heart, then largest island per label",
            "heart, largest island per label, then enclosed cavity")


def variants(prediction: np.ndarray, schema: LabelSchema) -> Dict[str, np.ndarray]:
    """The label map under each post-processing of :data:`VARIANTS` (the last is ``predict``'s)."""
    return {VARIANTS[0]: prediction,
            VARIANTS[1]: keep_largest_component(prediction.copy(), schema.num_classes),
            VARIANTS[2]: keep_largest_component(prediction.copy(), schema.num_classes, one_object=True),
            VARIANTS[3]: clean_prediction(prediction.copy(), schema)}


def score(dice: List[np.ndarray], names: Sequence[str]) -> Dict[str, object]:
    """Mean Dice per class and overall over volumes ((classes,) arrays), and the RV-miss share (class 0)."""
    table = np.stack(dice)
    return {"dice": {n: float(d) for n, d in zip(names, table.mean(0))}, "mean_dice": float(table.mean()),
            "rv_below_0.1": float((table[:, 0] < 0.1).mean())}


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True)
    parser.add_argument("--labels", required=True)
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    from maclcore.inference.predict import load_segmentation_model, predict_files
    from maclcore.io.atomic import write_json
    from maclcore.io.segmentation import read_label_map

    runs = []
    for model in args.models:
        schema = load_segmentation_model(model).schema
        with tempfile.TemporaryDirectory() as folder:
            written = predict_files(model, sorted(glob.glob(os.path.join(args.images, "*"))), folder,
                                    postprocess=False)
            dice: Dict[str, List[np.ndarray]] = {v: [] for v in VARIANTS}
            for path in written:
                truth = read_label_map(os.path.join(args.labels, os.path.basename(path)), schema)
                raw = read_label_map(path, schema)
                for name, labels in variants(raw, schema).items():
                    dice[name].append(overlap_per_class(labels, truth, schema.num_classes)["dice"])
        entry = {"model": model, **{v: score(d, schema.names) for v, d in dice.items()}}
        print(model, {v: round(entry[v]["mean_dice"], 3) for v in VARIANTS}, flush=True)
        runs.append(entry)
    write_json(args.output, {"benchmark": "postprocess", "cpu": cpu_model(), "cpu_flags": bf16_flags(),
                             "date": time.strftime("%Y-%m-%d %H:%M"), "images": args.images, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
