"""A model's history: which model it continued from, on which cases, when, and how well it validated.

Every finetuned model carries ``lineage``: a list of generations, oldest first, the last one being the
model itself. A generation is plain data (the checkpoint stays loadable with ``weights_only=True``)::

    {"generation": 2, "output": "/models/model-002.pt", "created": "2024-05-01T10:00:00+00:00",
     "parent": {"path": "/models/model-001.pt", "sha256": "...", "kind": "segmentation"},  # or None
     "cases": ["case000", "case001", "case002"], "added_cases": ["case002"],
     "val_dice": 0.83, "selected_epoch": 20, "epochs": 20}

A child copies its parent's generations before adding its own, so a model file alone tells its whole
history even when earlier files have moved or gone; each generation's ``parent.sha256`` ties it to the
exact file it started from (a file's own hash cannot be inside the file itself).
"""

from __future__ import annotations

import datetime
import os
from typing import Any, Dict, List, Optional, Sequence

from ..errors import PathLike
from .checkpoint import file_sha256, load_checkpoint


def parent_record(path: PathLike, data: Dict[str, Any]) -> Dict[str, Any]:
    """What a child records of the checkpoint it was initialised from, with the parent's own lineage."""
    training = data.get("training", {}) if data.get("kind") == "segmentation" else {}
    return {"path": os.path.abspath(os.fspath(path)), "sha256": file_sha256(path), "kind": str(data.get("kind")),
            "cases": list(training.get("train_cases", [])) + list(training.get("val_cases", [])),
            "lineage": generations(path, data) if data.get("kind") == "segmentation" else []}


def new_generation(output: PathLike, parent: Optional[Dict[str, Any]], cases: Sequence[str],
                   val_dice: Optional[float], selected_epoch: Optional[int], epochs: int) -> List[Dict[str, Any]]:
    """The lineage of a model about to be written: the parent's generations plus this one."""
    earlier = list(parent["lineage"]) if parent else []
    known = set(parent["cases"]) if parent else set()
    entry = {"generation": len(earlier) + 1, "output": os.path.abspath(os.fspath(output)),
             "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "parent": ({k: parent[k] for k in ("path", "sha256", "kind")} if parent else None),
             "cases": list(cases), "added_cases": [c for c in cases if c not in known],
             "val_dice": None if val_dice is None else float(val_dice),
             "selected_epoch": selected_epoch, "epochs": int(epochs)}
    return earlier + [entry]


def read_lineage(path: PathLike) -> List[Dict[str, Any]]:
    """The generations recorded in a segmentation model file, oldest first."""
    return generations(path, load_checkpoint(path, kinds=("segmentation",)))


def generations(path: PathLike, data: Dict[str, Any]) -> List[Dict[str, Any]]:
    """A loaded segmentation checkpoint's generations; a model from before lineage was recorded counts as
    one generation, described by its training record."""
    if data.get("lineage"):
        return list(data["lineage"])
    training = data.get("training", {})
    return [{"generation": 1, "output": os.path.abspath(os.fspath(path)),
             "created": data.get("provenance", {}).get("created"), "parent": None,
             "cases": list(training.get("train_cases", [])) + list(training.get("val_cases", [])),
             "added_cases": [], "val_dice": None, "selected_epoch": training.get("selected_epoch"),
             "epochs": None}]
