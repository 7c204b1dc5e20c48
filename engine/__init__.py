"""The shared engine behind the 14 train_/test_ scripts: config, training, evaluation, metrics."""

from .cli import run_script
from .config import ConfigError, load_config
from .evaluate import test
from .train import train

__all__ = ["ConfigError", "load_config", "run_script", "test", "train"]
