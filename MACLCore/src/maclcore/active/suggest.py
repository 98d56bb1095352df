"""Suggest the next volumes to annotate: rank unlabelled volumes by uncertainty x diversity.

Every volume (candidates and labelled ones) is read, preprocessed as the model was trained, and passed
through the model once per test-time rotation (:mod:`.analysis`); the candidates are then ranked greedily
(:mod:`.selection`). Labelled volumes are only needed for their embeddings, so their label maps are not
read. A candidate that *is* a labelled volume (same file, or same case name) is left out.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..data.dataset import load_case
from ..errors import ConfigError, InferenceStopped, MaclError, PathLike
from ..inference.predict import SegmentationModel, load_segmentation_model
from ..io.atomic import write_json
from ..io.pairing import Case, find_images
from ..io.checkpoint import file_sha256, provenance
from ..runtime.control import StopRequest
from ..runtime.progress import Reporter
from ..runtime.device import resolve_device
from .analysis import VolumeAnalysis, analyse_volume
from .selection import greedy_rank

UNITS = {"uncertainty": "cm^2 per slice: summed normalised entropy of the rotation-averaged prediction",
         "disagreement": "cm^2 per slice: the part of the uncertainty due to rotated copies disagreeing",
         "distance": "to the nearest labelled or earlier-ranked volume, in units of the typical distance",
         "diversity": "min(1, distance); 1 when there is nothing to compare with",
         "score": "uncertainty x diversity (the greedy ranking criterion)"}


def analyse_cases(model: SegmentationModel, cases: Sequence[Case], turns: int = 4, batch_size: int = 16,
                  reporter: Optional[Reporter] = None, stage: str = "suggest",
                  done: int = 0, total: Optional[int] = None,
                  stop: Optional[StopRequest] = None) -> List[VolumeAnalysis]:
    """Read, preprocess and analyse each case (progress counts on from ``done`` of ``total``); raises
    :class:`InferenceStopped` before a case when ``stop`` is requested."""
    reporter = reporter or Reporter()
    total = total if total is not None else len(cases)
    results = []
    for index, case in enumerate(cases):
        if stop is not None and stop.requested:  # between volumes
            raise InferenceStopped(done + index, total)
        prepared = load_case(case, model.preprocessing)  # no schema: label maps are not needed here
        results.append(analyse_volume(model, prepared, turns, batch_size))
        reporter.progress(stage, done + index + 1, total, case=case.name)
    return results


def split_labelled(candidates: Sequence[Case], labelled: Sequence[Case]) -> Tuple[List[Case], List[str]]:
    """(candidates that are not labelled, names of those left out): same file or same case name."""
    names = {c.name for c in labelled}
    paths = {os.path.realpath(c.image) for c in labelled}
    kept, dropped = [], []
    for case in candidates:
        if case.name in names or os.path.realpath(case.image) in paths:
            dropped.append(case.name)
        else:
            kept.append(case)
    return kept, dropped


def rank_cases(model: SegmentationModel, candidates: Sequence[Case], labelled: Sequence[Case] = (),
               turns: int = 4, batch_size: int = 16, reporter: Optional[Reporter] = None,
               stop: Optional[StopRequest] = None) -> List[Dict[str, Any]]:
    """The candidates in suggested order, each with its scores (see :data:`UNITS`)."""
    reporter = reporter or Reporter()
    total = len(candidates) + len(labelled)
    reporter.stage("suggest", total)
    reference = analyse_cases(model, labelled, turns, batch_size, reporter, done=0, total=total, stop=stop)
    analysed = analyse_cases(model, candidates, turns, batch_size, reporter, done=len(labelled), total=total,
                             stop=stop)
    if not analysed:
        return []
    embeddings = np.stack([a.embedding for a in analysed])
    labelled_embeddings = np.stack([a.embedding for a in reference]) if reference else None
    order = greedy_rank(np.array([a.uncertainty for a in analysed]), embeddings, labelled_embeddings)
    ranking = []
    for rank, choice in enumerate(order, start=1):
        case, analysis = candidates[choice.index], analysed[choice.index]
        nearest = None
        if choice.nearest is not None:
            kind, where = choice.nearest
            nearest = labelled[where].name if kind == "labelled" else candidates[where].name
        ranking.append({"rank": rank, "case": case.name, "image": case.image, "uncertainty": analysis.uncertainty,
                        "disagreement": analysis.disagreement, "diversity": choice.diversity,
                        "distance": None if not np.isfinite(choice.distance) else choice.distance,
                        "nearest": nearest, "score": choice.score, "slices": analysis.slices})
    return ranking


def suggest(model_path: PathLike, images: Sequence[PathLike], labelled: Sequence[PathLike] = (),
            top: Optional[int] = None, json_path: Optional[PathLike] = None, device: str = "auto",
            turns: int = 4, batch_size: int = 16, reporter: Optional[Reporter] = None,
            stop_file: Optional[str] = None) -> Dict[str, Any]:
    """Rank the volumes in ``images`` (files or folders) for annotation, given the ``labelled`` ones.

    Returns (and writes to ``json_path`` when given) a report: model file and its SHA-256, the cases left out
    as already labelled, and the ranking (the first ``top`` entries; all when None). When ``stop_file`` exists
    before a volume is analysed, raises :class:`InferenceStopped` and writes nothing.
    """
    reporter = reporter or Reporter()
    if top is not None and top < 1:
        raise ConfigError("top", f"must be >= 1, got {top}")
    if batch_size < 1:
        raise ConfigError("batch_size", f"must be >= 1, got {batch_size}")
    if turns not in (1, 2, 4):
        raise ConfigError("turns", f"must be 1, 2 or 4, got {turns}")
    candidates = find_images(images)
    reference = find_images(labelled) if labelled else []
    candidates, dropped = split_labelled(candidates, reference)
    if not candidates:
        raise MaclError("no volume left to suggest: every candidate is among the labelled volumes")
    if dropped:
        reporter.message(f"left out {len(dropped)} volume(s) already labelled: {', '.join(dropped[:5])}"
                         + (" ..." if len(dropped) > 5 else ""))
    model = load_segmentation_model(model_path, resolve_device(device))
    ranking = rank_cases(model, candidates, reference, turns, batch_size, reporter, StopRequest(stop_file))
    report = {"model": os.path.abspath(os.fspath(model_path)), "model_sha256": file_sha256(model_path),
              "rotations": turns, "candidates": len(candidates), "labelled": [c.name for c in reference],
              "excluded_as_labelled": dropped, "units": UNITS, "ranking": ranking[:top] if top else ranking,
              "provenance": provenance()}
    if json_path is not None:
        write_json(json_path, report)  # strict JSON: a non-finite score is null, never a NaN token
    reporter.done(output=os.fspath(json_path) if json_path is not None else None,
                  metrics={"candidates": len(candidates), "first": ranking[0]["case"]})
    return report


def format_table(report: Dict[str, Any]) -> str:
    """The ranking as a fixed-width table for a terminal."""
    rows = report["ranking"]
    width = max([len("case")] + [len(r["case"]) for r in rows])
    lines = [f"{'rank':>4}  {'case':<{width}}  {'uncertainty':>11}  {'disagreement':>12}  {'diversity':>9}  "
             f"{'score':>7}  nearest reference",
             f"{'':>4}  {'':<{width}}  {'(cm2/slice)':>11}  {'(cm2/slice)':>12}  {'':>9}  {'':>7}"]
    for r in rows:
        lines.append(f"{r['rank']:>4}  {r['case']:<{width}}  {r['uncertainty']:>11.3f}  {r['disagreement']:>12.3f}  "
                     f"{r['diversity']:>9.3f}  {r['score']:>7.3f}  {r['nearest'] or '-'}")
    return "\n".join(lines)
