"""A short Markdown performance table from the benchmarks' JSON results, for the README.

    python benchmarks/perf_table.py                      # every benchmarks/results/*.json it knows
    python benchmarks/perf_table.py results/a.json ...   # chosen files

Understands the files of bench_pretrain.py, bench_end_to_end.py, bench_scaling.py and bench_streaming.py;
other JSON files are skipped.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from typing import Any, Callable, Dict, List, Optional

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _num(value: Optional[float], digits: int = 1, suffix: str = "") -> str:
    return "–" if value is None else f"{value:,.{digits}f}{suffix}"


def _pct(value: Optional[float]) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _short_device(name: str) -> str:
    """'CPU: Intel(R) Xeon(R) Processor, 2 cores, 2 torch threads' -> 'CPU (2 cores)'; GPU names stay."""
    if name.startswith("CPU"):
        cores = next((part.strip() for part in name.split(",") if "cores" in part), "")
        return f"CPU ({cores})" if cores else "CPU"
    return name.replace("NVIDIA ", "")


def _load(report: Dict[str, Any]) -> str:
    """The 1-minute load average when the file was written (a busy machine makes CPU times noisy)."""
    load = report.get("load_average")
    return f"; load average {load[0]:.1f}" if load else ""


def pretrain_table(report: Dict[str, Any]) -> List[str]:
    device = _short_device(report["device"])
    speedups = {(c["size"], c["batch_size"], c["fast_precision"]): c["speedup"] for c in report.get("speedups", [])}
    lines = [f"**Pretraining step** ({device}, torch {report['torch']}, U-Net {report['channels'][0]}-"
             f"{report['channels'][-1]}; median of {report['settings']['steps']} steps{_load(report)})", "",
             "| size | batch | path | precision | ms/step | slices/s | TFLOP/s | of bf16 peak | GPU GiB | speed-up |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        speedup = speedups.get((r["size"], r["batch_size"], r["precision"])) if r["path"] == "fast" else None
        lines.append(f"| {r['size']} | {r['batch_size']} | {r['path']} | {r['precision']} | "
                     f"{_num(1000 * r['median_step_s'])} | {_num(r['slices_per_s'])} | {_num(r['tflops_per_s'], 3)} | "
                     f"{_pct(r.get('fraction_of_bf16_peak'))} | {_num(r.get('peak_gpu_memory_gib'), 2)} | "
                     f"{_num(speedup, 2, 'x') if speedup else '–'} |")
    return lines


def end_to_end_table(report: Dict[str, Any]) -> List[str]:
    device = _short_device(report["device"])
    names = {"finetune_fast": "finetune 2 cases (fast)", "finetune_reference": "finetune 2 cases (reference)",
             "predict_fast": "segment 1 volume, file to .seg.nrrd (fast)",
             "predict_reference": "segment 1 volume (reference: 1 slice/pass, fp32)",
             "predict_command": "`maclcore predict` command (incl. start-up)"}
    settings = report["settings"]
    lines = [f"**End to end** ({device}; {report['data']}; {settings['epochs']} epochs, batch {settings['batch_size']}"
             f"{_load(report)})",
             "", "| stage | seconds | Dice | peak host GiB | peak GPU GiB |", "|---|---|---|---|---|"]
    for key, stage in report["stages"].items():
        lines.append(f"| {names.get(key, key)} | {_num(stage['seconds'], 2)} | {_num(stage.get('dice'), 3)} | "
                     f"{_num(stage.get('peak_host_gib'), 2)} | {_num(stage.get('peak_gpu_gib'), 2)} |")
    return lines


def scaling_table(report: Dict[str, Any]) -> List[str]:
    s = report["settings"]
    lines = [f"**Data-parallel pretraining** ({_short_device(report['device'])}, {s['backend']}, {report['mode']} "
             f"scaling: {report['mode_meaning']}; {s['size']}px, {s['threads_per_process']} thread(s)/process"
             f"{_load(report)})", "",
             "| processes | global batch | ms/step | slices/s | speed-up | efficiency |", "|---|---|---|---|---|---|"]
    for r in report["runs"]:
        lines.append(f"| {r['processes']} | {r['global_batch']} | {_num(1000 * r['median_step_s'])} | "
                     f"{_num(r['slices_per_s'])} | {_num(r['speedup'], 2, 'x')} | {_pct(r['efficiency'])} |")
    return lines


def streaming_table(report: Dict[str, Any]) -> List[str]:
    s = report["settings"]
    lines = [f"**Slices in memory vs streamed from the disk cache** ({_short_device(report['device'])}; "
             f"{report['data']}, {_num(report['slices_gb_in_memory'], 3)} GB as tensors, budget "
             f"{s['max_memory_gb']} GB; same loss: {report['same_loss']}{_load(report)})", "",
             "| slices | prepare s | ms/step | final loss | peak host GiB | peak GPU GiB |", "|---|---|---|---|---|---|"]
    labels = {"memory": "in memory (no cache)", "cache": "cache, loaded into memory", "streamed": "streamed from cache"}
    for name, way in report["ways"].items():
        lines.append(f"| {labels.get(name, name)} | {_num(way['prepare_seconds'], 2)} | "
                     f"{_num(1000 * way['seconds_per_step'])} | {way['final_loss']:.5f} | "
                     f"{_num(way['peak_host_gib'], 2)} | {_num(way.get('peak_gpu_gib'), 2)} |")
    return lines


TABLES: Dict[str, Callable[[Dict[str, Any]], List[str]]] = {
    "pretrain_throughput": pretrain_table, "end_to_end": end_to_end_table, "scaling": scaling_table,
    "streaming": streaming_table}
ORDER = list(TABLES)


def render(paths: List[str]) -> str:
    reports = []
    for path in paths:
        try:
            with open(path) as handle:
                report = json.load(handle)
        except (OSError, ValueError):
            continue
        if isinstance(report, dict) and report.get("benchmark") in TABLES:
            if report["benchmark"] == "pretrain_throughput" and "speedups" not in report:
                continue  # an older file without the reference path
            reports.append(report)
    reports.sort(key=lambda r: (ORDER.index(r["benchmark"]), r.get("device", "")))
    blocks = ["\n".join(TABLES[r["benchmark"]](r)) for r in reports]
    return "\n\n".join(blocks) + ("\n" if blocks else "")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", help="result files (default: benchmarks/results/*.json)")
    args = parser.parse_args(argv)
    text = render(args.files or sorted(glob.glob(os.path.join(RESULTS, "*.json"))))
    if not text:
        print("no benchmark results found", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
