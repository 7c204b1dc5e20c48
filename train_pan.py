"""Train pan with configs/config_pan.yaml (the paper's recipe); see --help."""

from engine import run_script

if __name__ == "__main__":
    raise SystemExit(run_script("pan", train=True))
