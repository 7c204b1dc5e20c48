"""Segment images, folders and videos with a checkpoint: python predict.py --help."""

import sys

from tools.predict import main

if __name__ == "__main__":
    sys.exit(main())
