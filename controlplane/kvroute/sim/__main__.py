"""`python -m kvroute.sim` is `kvroute sim`."""

import sys

from .cli import main

sys.exit(main(sys.argv[1:]))
