"""Command line of the data package: ``python -m data check ROOT [options]``.

The demo generator has its own: ``python -m data.synthetic --out DIR``.
"""

import sys

from . import check

COMMANDS = {"check": check.main}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m data {{{','.join(COMMANDS)}}} ...\n\n{__doc__}", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
