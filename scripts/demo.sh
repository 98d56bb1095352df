#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the built-in demo on synthetic cardiac phantoms:
# MACL pretraining -> finetuning on 2 labelled phantoms (random init vs pretrained) -> prediction ->
# Dice per class -> demo_output/overlay.png. Extra arguments go to `maclcore demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/maclcore demo --out demo_output "$@"
