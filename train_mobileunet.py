"""Train mobileunet with configs/config_mobileunet.yaml (the paper's recipe); see --help."""

from engine import run_script

if __name__ == "__main__":
    raise SystemExit(run_script("mobileunet", train=True))
