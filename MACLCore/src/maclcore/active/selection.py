"""Greedy choice of the volumes to annotate next: uncertain, and unlike what is labelled or already chosen.

Score of a candidate c at each greedy step:

    score(c) = uncertainty(c) x diversity(c),   diversity(c) = min(1, distance(c, nearest reference))

where the references are the labelled volumes plus those chosen in earlier steps. Distances are Euclidean
between embeddings, in units of the typical distance between two volumes of this set (the median over all
pairs of labelled and candidate volumes), so that "1" means "as different as two cases usually are".
Diversity is capped at 1: it is there to remove
redundancy (an exact copy of a labelled volume scores 0, a near-duplicate little), not to chase outliers,
which are already rewarded by their uncertainty. With no reference at all (nothing labelled, first pick)
the diversity is 1 and the most uncertain volume comes first. Ties (e.g. all scores 0) go to the more
uncertain volume, then to the earlier one.

Greedy selection instead of one sort by score is what keeps two near-identical uncertain volumes (the
ED and ES frames of one patient, say) from both reaching the top: once one is chosen, the other's
diversity collapses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np

DIVERSITY_CAP = 1.0
TINY = 1e-12


@dataclass(frozen=True)
class Choice:
    """One greedy step: candidate ``index`` with the scores it was chosen with.

    ``nearest`` is the closest reference: ``("labelled", j)``, ``("chosen", i)`` (a candidate index), or None.
    """

    index: int
    uncertainty: float
    diversity: float
    distance: float
    score: float
    nearest: Optional[tuple]


def typical_distance(embeddings: np.ndarray) -> float:
    """The median distance between two members of the set (the mean when most are duplicates); 0 for < 2.

    A median, so that one outlier (a corrupted volume) does not make every other pair look alike.
    """
    if len(embeddings) < 2:
        return 0.0
    squares = (embeddings ** 2).sum(1)
    gram = embeddings @ embeddings.T
    pairs = np.triu_indices(len(embeddings), 1)
    distances = np.sqrt(np.clip(squares[:, None] + squares[None, :] - 2 * gram, 0, None)[pairs])
    median = float(np.median(distances))
    return median if median > TINY else float(distances.mean())


def greedy_rank(uncertainty: np.ndarray, candidates: np.ndarray, labelled: Optional[np.ndarray] = None,
                cap: float = DIVERSITY_CAP) -> List[Choice]:
    """Rank every candidate (rows of ``candidates``, with ``uncertainty``) by greedy uncertainty x diversity.

    Args:
        uncertainty: (N,) non-negative uncertainty per candidate.
        candidates: (N, D) embeddings of the candidates.
        labelled: (M, D) embeddings of the labelled volumes (M may be 0).
        cap: the diversity cap.
    """
    uncertainty = np.asarray(uncertainty, dtype=np.float64)
    candidates = np.asarray(candidates, dtype=np.float64)
    labelled = np.zeros((0, candidates.shape[1])) if labelled is None else np.asarray(labelled, dtype=np.float64)
    if uncertainty.shape != (len(candidates),):
        raise ValueError(f"uncertainty has shape {uncertainty.shape}, expected ({len(candidates)},)")
    scale = typical_distance(np.concatenate([candidates, labelled]))
    nearest_distance = np.full(len(candidates), np.inf)
    nearest: List[Optional[tuple]] = [None] * len(candidates)
    for j, reference in enumerate(labelled):
        _update_nearest(candidates, reference, scale, nearest_distance, nearest, ("labelled", j))
    remaining, order = list(range(len(candidates))), []
    while remaining:
        distance = nearest_distance[remaining]
        diversity = np.where(np.isinf(distance), cap, np.minimum(cap, distance))
        score = uncertainty[remaining] * diversity
        best = max(range(len(remaining)), key=lambda i: (score[i], uncertainty[remaining[i]], -remaining[i]))
        index = remaining.pop(best)
        order.append(Choice(index=index, uncertainty=float(uncertainty[index]), diversity=float(diversity[best]),
                            distance=float(distance[best]), score=float(score[best]), nearest=nearest[index]))
        _update_nearest(candidates, candidates[index], scale, nearest_distance, nearest, ("chosen", index))
    return order


def _update_nearest(candidates: np.ndarray, reference: np.ndarray, scale: float, nearest_distance: np.ndarray,
                    nearest: List[Optional[tuple]], tag: tuple) -> None:
    raw = np.sqrt(((candidates - reference) ** 2).sum(1))
    distance = raw / scale if scale > TINY else np.zeros_like(raw)
    closer = distance < nearest_distance
    nearest_distance[closer] = distance[closer]
    for i in np.flatnonzero(closer):
        nearest[i] = tag

