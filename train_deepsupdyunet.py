"""Train deepsupdyunet with configs/config_deepsupdyunet.yaml (the paper's recipe); see --help."""

from engine import run_script

if __name__ == "__main__":
    raise SystemExit(run_script("deepsupdyunet", train=True))
