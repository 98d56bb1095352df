"""What the benchmark scripts share: where results go, the machine a result was measured on, the studies'
configuration files and command line, and their reports' plots and reproduce lines."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np

from maclcore.io.atomic import write_text_atomic

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
ACDC = os.path.join(HERE, "..", "..", "shared", "data", "acdc")  # the studies' data when a config names none


# -- result files of the performance benchmarks ---------------------------------------------------------------
def save_report(report: Dict[str, Any], out: Optional[str], name: str, device_type: str) -> str:
    """Write a benchmark's JSON (atomically) to ``out`` or ``results/<name>_<device>.json``; returns the path."""
    out = out or os.path.join(RESULTS, f"{name}_{device_type}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    write_text_atomic(out, json.dumps(report, indent=1))
    return out


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def device_name(device: Any) -> str:
    """GPU name, or the CPU's model name and the threads torch uses."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def environment(device: Any) -> Dict[str, Any]:
    """What a result file records about where it was measured."""
    import torch

    env = {"device": device_name(device), "torch": str(torch.__version__), "python": platform.python_version(),
           "numpy": np.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()
           if torch.backends.cudnn.is_available() else None, "torch_threads": torch.get_num_threads(),
           "cpu_count": os.cpu_count(), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        env["load_average"] = list(os.getloadavg())
    except OSError:
        pass
    return env


# -- the studies: configuration and command line ------------------------------------------------------------
def load_study_config(path: str, paths: Sequence[str] = ("data",)) -> Dict[str, Any]:
    """A study's JSON configuration; ``data`` defaults to the shared ACDC folder, and the relative paths under
    the keys ``paths`` are taken from the configuration file's folder."""
    with open(path) as handle:
        config = json.load(handle)
    config.setdefault("data", ACDC)
    folder = os.path.dirname(os.path.abspath(path))
    for key in paths:
        if config.get(key) and not os.path.isabs(config[key]):
            config[key] = os.path.normpath(os.path.join(folder, config[key]))
    return config


def study_parser(description: str, work: str) -> argparse.ArgumentParser:
    """The options every study takes: its configuration, a work folder (``work``: its help), device, progress
    and report folder."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("config", help="study configuration (JSON)")
    parser.add_argument("--work", required=True, help=work)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--progress", default="none", choices=["bar", "json", "none"])
    parser.add_argument("--report", help="report folder (default benchmarks/results/<config name>)")
    return parser


def report_folder(args: argparse.Namespace, config: Dict[str, Any]) -> str:
    """``--report``, or benchmarks/results/<config name>."""
    return args.report or os.path.join(RESULTS, config["name"])


def label_links(labels: Iterable[str], folder: str) -> str:
    """``folder`` holding (links to) exactly these label files, for pairing predictions with them."""
    os.makedirs(folder, exist_ok=True)
    for label in labels:
        target = os.path.join(folder, os.path.basename(label))
        if not os.path.lexists(target):
            os.symlink(os.path.abspath(label), target)
    return folder


# -- the studies' reports -----------------------------------------------------------------------------------
def mean_std(values: Sequence[float], digits: int = 3) -> str:
    """'mean ± std' of the values that are not NaN; 'n/a' when none is left."""
    values = [float(v) for v in values if not math.isnan(float(v))]
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}" if values else "n/a"


def pyplot() -> Any:
    """matplotlib's pyplot drawing to files only (the Agg backend); None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(plt: Any, figure: Any, path: str) -> None:
    """Lay out, write (120 dpi) and close a report's figure."""
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def save_json(folder: str, name: str, data: Any) -> None:
    """Write ``data`` as ``folder/name`` (indented JSON, atomically)."""
    write_text_atomic(os.path.join(folder, name), json.dumps(data, indent=1))


def reproduce(argv: Sequence[str]) -> List[str]:
    """A report's 'Reproduce' section up to its versions line: the command that wrote it."""
    return ["## Reproduce", "", "```", " ".join(["python"] + list(argv)), "```", ""]


def versions() -> str:
    """'maclcore V, torch V, Python V, device D': what a report was computed with."""
    import torch

    import maclcore

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    return (f"maclcore {maclcore.__version__}, torch {torch.__version__}, Python {platform.python_version()}, "
            f"device {device}")


def bf16_flags() -> list:
    """The CPU's bf16-related feature flags (Linux), to tell machines with the same model name apart."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next(line.split(":", 1)[1].split() for line in handle if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"))
