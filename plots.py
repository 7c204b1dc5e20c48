"""Training curves and qualitative grids as PNG: python plots.py {curves,grid} --help."""

import sys

from tools.plots import main

if __name__ == "__main__":
    sys.exit(main())
