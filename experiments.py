"""Paired experiments on the demo data (kernel-bank init, augmentation): tools/experiments.py.

python experiments.py --device cuda --jobs 6
"""

import sys

from tools.experiments import main

if __name__ == "__main__":
    sys.exit(main())
