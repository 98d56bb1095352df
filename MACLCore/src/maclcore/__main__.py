"""``python -m maclcore`` runs the command line (handy from Slicer's own Python)."""

import sys

from .cli.main import main

sys.exit(main())
