"""Start a segmentation U-Net from a pretrained encoder/decoder, or from an earlier segmentation model."""

from __future__ import annotations

from typing import Any, Dict, List

import torch

from ..config import from_dict
from ..errors import ConfigError, InputError, PathLike
from ..models.unet import UNet, UNetConfig, transferable_prefixes
from ..io.checkpoint import load_checkpoint
from ..inference.predict import check_network_shapes


def read_init(path: PathLike) -> Dict[str, Any]:
    """Load a checkpoint usable as ``--init``: a pretrained model or a segmentation model."""
    data = load_checkpoint(path, kinds=("pretrain", "segmentation"))
    check_network_shapes(path, data)  # before any network of the file's widths is built
    try:
        from_dict(UNetConfig, data["model"])
        dict(data["state_dict"])
        float(data["preprocessing"]["spacing"])
        if data["kind"] == "pretrain":
            int(data["pretraining"]["decoder_depth"])
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise InputError(path, f"is an incomplete or inconsistent model file ({type(exc).__name__}: {exc})") from None
    return data


def init_channels(data: Dict[str, Any]) -> tuple:
    """U-Net widths of an init checkpoint (the new model must match them)."""
    return tuple(int(c) for c in data["model"]["channels"])


def _group(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:3]) if parts[0] == "decoder" else parts[0]


def load_initial_weights(model: UNet, data: Dict[str, Any], path: PathLike) -> Dict[str, Any]:
    """Copy the transferable weights of ``data`` into ``model``; report what was loaded and what stays random.

    From a pretrained checkpoint: the encoder and the decoder blocks it pretrained. From a segmentation
    model: everything, except the head when the number of classes differs.
    """
    source: Dict[str, torch.Tensor] = data["state_dict"]
    if data["kind"] == "pretrain":
        prefixes = transferable_prefixes(int(data["pretraining"]["decoder_depth"]))
    else:
        prefixes = ("encoder.", "decoder.")
        if from_dict(UNetConfig, data["model"]).num_classes == model.config.num_classes:
            prefixes += ("head.",)
    target = model.state_dict()
    loaded: List[str] = []
    for name, tensor in source.items():
        if not name.startswith(prefixes):
            continue
        if name not in target:
            raise InputError(path, f"has a weight {name!r} that this U-Net does not have")
        if tuple(target[name].shape) != tuple(tensor.shape):
            raise InputError(path, f"weight {name} has shape {tuple(tensor.shape)}, this U-Net needs "
                                   f"{tuple(target[name].shape)} (use the same {{channels}})")
        target[name] = tensor
        loaded.append(name)
    if not loaded:
        raise InputError(path, "has no weights that fit this U-Net")
    model.load_state_dict(target)
    loaded_groups = sorted({_group(n) for n in loaded})
    random_groups = sorted({_group(n) for n in target if n not in set(loaded)})
    return {"checkpoint": str(path), "kind": data["kind"], "loaded_tensors": len(loaded),
            "loaded": loaded_groups, "random": random_groups}
