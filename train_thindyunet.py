"""Train thindyunet with configs/config_thindyunet.yaml (the paper's recipe); see --help."""

from engine import run_script

if __name__ == "__main__":
    raise SystemExit(run_script("thindyunet", train=True))
