"""Compare a folder of predictions with a folder of reference label maps."""

from __future__ import annotations

import math
import os
from typing import Any, Dict, Optional

from ..errors import InputError, PathLike
from ..io.atomic import write_json
from ..io.guard import refuse_overwriting_inputs
from ..io.pairing import pair_cases
from ..io.naming import LABEL_EXTENSIONS
from ..io.segmentation import label_geometry, read_label_map
from ..labels import CARDIAC, LabelSchema
from ..io.checkpoint import provenance
from ..runtime.progress import Reporter
from .metrics import case_metrics, mean_foreground, summarise


def evaluate_folders(predictions: PathLike, labels: PathLike, schema: LabelSchema = CARDIAC,
                     json_path: Optional[PathLike] = None, with_hd95: bool = True,
                     reporter: Optional[Reporter] = None) -> Dict[str, Any]:
    """Dice, IoU and HD95 per case and class, and their mean and std over cases.

    Predictions pair with reference labels by case name (``CASE.nii.gz`` with ``CASE.nii.gz`` or
    ``CASE.seg.nrrd``); both must lie on the same grid.
    """
    reporter = reporter or Reporter()
    refuse_overwriting_inputs([("json_path", json_path)], [("pred", predictions), ("labels", labels)])  # first
    pairs = pair_cases(predictions, labels, image_extensions=LABEL_EXTENSIONS)
    reporter.stage("evaluate", len(pairs))
    cases: Dict[str, Any] = {}
    for index, pair in enumerate(pairs):
        # The prediction's grid is the image's whole grid; a Slicer reference may be cropped to its segments.
        reference = label_geometry(pair.image)
        prediction = read_label_map(pair.image, schema, reference)
        try:
            truth = read_label_map(pair.label, schema, reference)  # type: ignore[arg-type]
        except InputError as exc:
            raise InputError(exc.path, f"{exc.problem} (compared with {pair.image})") from None
        spacing_zyx = tuple(reversed(reference.spacing))
        cases[pair.name] = case_metrics(prediction, truth, spacing_zyx, schema.names, with_hd95)
        reporter.progress("evaluate", index + 1, len(pairs), case=pair.name,
                          metrics={"dice": mean_foreground(cases[pair.name])})
    report = {"provenance": provenance(), "predictions": os.fspath(predictions), "labels": os.fspath(labels),
              "classes": list(schema.names), "cases": cases, "summary": summarise(cases)}
    if json_path is not None:
        if _has_non_finite(report):
            report["notes"] = NULL_NOTE
        write_json(json_path, report)  # strict JSON: an undefined metric is null, never a NaN token
    reporter.done(output=os.fspath(json_path) if json_path else None,
                  metrics={"mean_dice": report["summary"]["mean_foreground"]["dice"]["mean"]})
    return report


NULL_NOTE = ("null: a metric that is undefined for the case (HD95 when the prediction or the reference of a class is "
             "empty), or a mean or std over cases where it is undefined in every one")


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_non_finite(v) for v in value)
    return False


def format_summary(report: Dict[str, Any]) -> str:
    """A small text table: one row per class, then the mean over foreground classes."""
    summary = report["summary"]
    metrics = [m for m in ("dice", "iou", "hd95") if m in summary["mean_foreground"]]
    header = f"{'class':<16}" + "".join(f"{m + ' (mm)' if m == 'hd95' else m:>20}" for m in metrics)
    lines = [f"{len(report['cases'])} cases (mean ± std over cases)", header]
    undefined = []
    for name in list(report["classes"]) + ["mean_foreground"]:
        cells = []
        for metric in metrics:
            stat = summary[name][metric]
            cells.append(f"{stat['mean']:.4f} ± {stat['std']:.4f}".rjust(20))
            if stat["undefined"]:
                undefined.append(f"{name} {metric}: {stat['undefined']}")
        lines.append(f"{name:<16}" + "".join(cells))
    if undefined:
        lines.append("cases left out where a metric is undefined (empty prediction or truth): " + "; ".join(undefined))
    return "\n".join(lines)
