"""``python -m models`` lists the eight models and their sizes; ``python -m models NAME`` shows one.

The table is the paper's Params column, measured, beside the exact counts of SPEC section 1 and
the authors' final table; the summary is torchinfo's layer view.
"""

from __future__ import annotations

import argparse
import sys

from . import MODEL_NAMES, build_model, count_parameters
from .published import FINAL_VERSION, PARAMS


def parameter_table() -> str:
    """Markdown table: model, measured trainable parameters, the expected count, match, and the
    Params (M) the authors' final table prints."""
    rows = [
        "| model | parameters | expected (SPEC 1) | match | authors' table |",
        "|---|---:|---:|---|---:|",
    ]
    for name in MODEL_NAMES:
        n = count_parameters(build_model(name))
        ok = "yes" if n == PARAMS[name] else "NO"
        rows.append(
            f"| {name} | {n:,} ({n / 1e6:.2f} M) | {PARAMS[name]:,} | {ok} "
            f"| {FINAL_VERSION[name]['params']} M |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__)
    parser.add_argument("name", nargs="?", choices=MODEL_NAMES, help="show this model's layers")
    parser.add_argument("--size", type=int, default=512, help="input side for the summary")
    parser.add_argument("--depth", type=int, default=3, help="torchinfo nesting depth")
    args = parser.parse_args(argv)
    if args.name is None:
        print(parameter_table())
        return 0
    from torchinfo import summary

    model = build_model(args.name).eval()
    print(
        summary(
            model,
            input_size=(1, 3, args.size, args.size),
            depth=args.depth,
            col_names=("output_size", "num_params"),
            verbose=0,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
