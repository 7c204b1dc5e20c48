"""Export a checkpoint to ONNX, verified with onnxruntime: python export.py --help."""

import sys

from tools.export import main

if __name__ == "__main__":
    sys.exit(main())
