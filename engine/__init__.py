"""The shared engine behind the 14 train_/test_ scripts: config, training, evaluation, metrics.

Its modules keep their own names: ``engine.train`` is the training module (``train`` inside it
the function), ``engine.evaluate`` the test script's; both build on ``engine.setup``.
"""

from .cli import run_script
from .config import ConfigError, load_config

__all__ = ["ConfigError", "load_config", "run_script"]
