"""Train and test models over several seeds, then mean ± std and paired t-tests (tools/seeds.py).

python run_seeds.py --models dasnet thindyunet --seeds 42 2024 8888 [--demo]
"""

import sys

from tools.seeds import main

if __name__ == "__main__":
    sys.exit(main())
