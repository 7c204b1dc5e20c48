"""A local web page to try a trained model on your own frames: python app.py --help."""

import sys

from tools.app import main

if __name__ == "__main__":
    sys.exit(main())
