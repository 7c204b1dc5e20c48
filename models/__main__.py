"""``python -m models`` lists the seven models and their sizes; ``python -m models NAME`` shows one.

The table is the paper's Params column, measured; the summary is torchinfo's layer view.
"""

from __future__ import annotations

import argparse
import sys

from . import MODEL_NAMES, build_model, count_parameters

PAPER_PARAMS = {
    "dasnet": 1_657_672,
    "thindyunet": 1_341_385,
    "fulldyunet": 1_628_581,
    "deepsupdyunet": 1_341_580,
    "unet": 24_436_369,
    "pan": 21_475_816,
    "pspnet": 21_437_985,
}


def parameter_table() -> str:
    """Markdown table: model, measured trainable parameters, the paper's count, match."""
    rows = ["| model | parameters | paper (SPEC 1) | match |", "|---|---:|---:|---|"]
    for name in MODEL_NAMES:
        n = count_parameters(build_model(name))
        ok = "yes" if n == PAPER_PARAMS[name] else "NO"
        rows.append(f"| {name} | {n:,} ({n / 1e6:.2f} M) | {PAPER_PARAMS[name]:,} | {ok} |")
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
