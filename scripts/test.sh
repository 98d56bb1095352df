#!/usr/bin/env bash
# Set up (scripts/setup.sh --test) and run every test: MACLCore's unit tests and the extension's tests.
# Extra arguments go to pytest, e.g. scripts/test.sh -k seg_nrrd
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
# Slicer 5.6 and 5.8 run the module on Python 3.9: its files must parse as 3.9.
.venv/bin/python -c 'import ast, pathlib, sys
for path in sorted(pathlib.Path("MACLSegment").rglob("*.py")):
    ast.parse(path.read_text(encoding="utf-8"), str(path), feature_version=(3, 9))
print("test: MACLSegment parses as Python 3.9")'
set +e
.venv/bin/python -m pytest MACLCore/tests Testing/Python benchmarks/tests -q -p no:cacheprovider "$@"
status=$?
set -e
if [ $status -eq 5 ]; then
    echo "test: pytest collected no tests; that is a failure" >&2
    exit 1
fi
exit $status
