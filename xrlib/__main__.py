"""``python -m xrlib`` runs the command-line interface."""

import sys

from xrlib.cli import main

sys.exit(main())
