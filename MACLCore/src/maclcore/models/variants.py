"""The pretraining variants the evaluation compares, all run by the same code: one registry, read by the
CLI's ``--variant`` choices, the study and the Slicer module."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

from ..errors import ConfigError


@dataclass(frozen=True)
class Variant:
    """A pretraining method as settings of MACL's network and loss."""

    label: str
    decoder_depth: int
    lambdas: Tuple[float, float, float]
    positives: str = "position"
    symmetric: bool = False


VARIANTS: Dict[str, Variant] = {
    "macl": Variant("MACL (full MLC loss)", 2, (1.0, 0.5, 1.0)),
    "no-decoder": Variant("MACL without decoder", 0, (1.0, 0.5, 1.0)),
    "no-er": Variant("MACL without L_ER", 2, (1.0, 0.5, 0.0)),
    "no-dense": Variant("MACL without L_d", 2, (1.0, 0.0, 1.0)),
    "pcl": Variant("PCL-like (L_g, position positives)", 0, (1.0, 0.0, 0.0), "position", symmetric=True),
    "simclr": Variant("SimCLR-like (L_g, two-view positives)", 0, (1.0, 0.0, 0.0), "views", symmetric=True),
}


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ConfigError("variant", f"is unknown: {name!r} (known: {', '.join(VARIANTS)})") from None
