"""Test mobileunet's best checkpoint and print its row of the paper's table; see --help."""

from engine import run_script

if __name__ == "__main__":
    raise SystemExit(run_script("mobileunet", train=False))
