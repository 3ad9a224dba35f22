"""A plugin that exits the process while being imported (tests the guarded plugin import)."""

import sys

sys.exit(0)
