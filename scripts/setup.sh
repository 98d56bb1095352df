#!/usr/bin/env bash
# Set up a virtual environment (.venv) with MACLCore and its dependencies; idempotent.
#   scripts/setup.sh          runtime dependencies
#   scripts/setup.sh --test   plus the test tools and slicer-core (real Slicer MRML for the module's tests)
# PyTorch is chosen to fit the machine: the CUDA build where an NVIDIA GPU is, the CPU build otherwise
# (a few hundred MB instead of several GB).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv
python=${PYTHON:-python3}
with_tests=0
[ "${1:-}" = "--test" ] && with_tests=1

if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating $venv with $($python --version 2>&1)"
    "$python" -m venv "$venv"
fi
pip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@"; }

reachable() {  # a 5-second probe, so an offline machine does not sit through pip's retries
    "$venv/bin/python" - "$1" <<'PY' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=5)
PY
}

has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

install_torch() {
    if has_gpu; then
        echo "setup: NVIDIA GPU found, installing the CUDA build of PyTorch"
        pip install "torch>=2.1"
        return
    fi
    echo "setup: no NVIDIA GPU, installing the CPU build of PyTorch"
    local cpu_index=https://download.pytorch.org/whl/cpu
    if reachable "$cpu_index/"; then
        pip install "torch>=2.1" --index-url "$cpu_index" --extra-index-url https://pypi.org/simple
        return
    fi
    # The PyTorch index is unreachable (offline mirror): use a local wheel from pip's configured
    # find-links if there is one, then fetch its dependencies from the regular index.
    if pip install --no-index --no-deps "torch>=2.1" 2>/dev/null; then
        pip install "torch>=2.1"
        return
    fi
    pip install "torch>=2.1"
}

"$venv/bin/python" -c "import torch" 2>/dev/null || install_torch
extras=""
[ $with_tests = 1 ] && extras="[test,study]"
pip install -e "./MACLCore$extras"
if [ $with_tests = 1 ]; then
    pip install "slicer-core>=5.8"
    # The Slicer module's tests: psutil (Slicer ships it; cancel ends a job's whole process tree with it) and
    # Qt offscreen (PySide6) for the widget behaviour; tests needing either skip where it is absent.
    pip install "psutil>=5.9" "PySide6-Essentials>=6.5"
fi
"$venv/bin/python" -c "import torch, maclcore; print(f'setup: maclcore {maclcore.__version__}, torch {torch.__version__}, cuda={torch.cuda.is_available()}')"
