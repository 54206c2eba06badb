"""``python -m optdepth`` (also what ``torchrun -m optdepth`` runs)."""

import sys

from optdepth.cli import main

sys.exit(main())
