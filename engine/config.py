"""The typed configuration: one schema for every model, YAML files for the paper's settings.

A run's config is the schema's defaults, merged with configs/config_<model>.yaml, then (with
``--demo``) configs/demo.yaml, then ``key=value`` overrides from the command line. OmegaConf
checks every merge against the schema, so a misspelled key or a wrong type is refused by name.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .inference_modes import MODES, PADDINGS

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
DEMO_CONFIG = CONFIG_DIR / "demo.yaml"


class ConfigError(ValueError):
    """A config file or override that does not fit the schema; the message names the key."""


class Modality(str, Enum):
    both = "both"
    visible = "visible"
    infrared = "infrared"


class MaskResize(str, Enum):
    bilinear = "bilinear"
    nearest = "nearest"


class Amp(str, Enum):
    off = "off"
    bf16 = "bf16"
    fp16 = "fp16"


class DyconvInit(str, Enum):
    """The dynamic convolutions' kernel banks: N(0, 1) as the paper's code, or He (kaiming)."""

    paper = "paper"
    kaiming = "kaiming"


class Fused(str, Enum):
    """models.optimize_for_training: auto = where it pays (CPU, FP32, eager), always, never.
    (Not on/off: YAML reads those as booleans.)"""

    auto = "auto"
    always = "always"
    never = "never"


class NonFinite(str, Enum):
    stop = "stop"
    skip = "skip"


# How test frames meet the model, and how pad/slide fill the border: the names live in
# engine/inference_modes.py, the schema only types them.
InferenceMode = Enum("InferenceMode", {m: m for m in MODES}, type=str)
Padding = Enum("Padding", {p: p for p in PADDINGS}, type=str)


@dataclass
class DatasetConfig:
    """Where the data is and how it is drawn (SPEC sections 4-5)."""

    root: str = "datasets/uav"
    image_size: list[int] = field(default_factory=lambda: [512, 512])
    modality: Modality = Modality.both
    max_samples: int | None = 20000
    val_max_samples: int | None = 1000
    test_max_samples: int | None = None
    seed: int = 42  # draws the subsets, initialises the model and shuffles the batches
    mask_resize: MaskResize = MaskResize.bilinear
    augment: str = "none"  # none, or flip, scale, color joined by '+' (data/augment.py)
    skip_unreadable: bool = False
    batch_size: int = 24
    num_workers: int = 4
    pin_memory: bool = True
    persistent_workers: bool = True
    prefetch_factor: int = 2
    demo: bool = False  # generate demo data at root when it is missing


@dataclass
class ModelConfig:
    """Which network; None leaves the model's own default (see models.build_model)."""

    name: str = "dasnet"
    in_channels: int = 3
    classes: int = 1
    width: int | None = None
    stages: int | None = None
    num_kernels: int | None = None
    encoder_name: str | None = None  # smp baselines: the encoder (default: the paper's)
    dyconv_init: DyconvInit | None = None  # the dynamic models: paper (default) or kaiming
    encoder_weights: str | None = None


@dataclass
class SchedulerConfig:
    """ReduceLROnPlateau on the validation loss."""

    factor: float = 0.5
    patience: int = 15
    cooldown: int = 5


@dataclass
class EarlyStoppingConfig:
    """Stop when the validation loss has not improved by min_delta for patience epochs."""

    patience: int = 30
    min_delta: float = 0.001


@dataclass
class TrainerConfig:
    """The paper's recipe (SPEC section 5) and the switches around it."""

    epochs: int = 50
    lr: float = 1e-4
    weight_decay: float = 0.01
    aux_weight: float = 0.4
    threshold: float = 0.5
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    device: str = "auto"
    amp: Amp = Amp.off
    channels_last: bool = False
    compile: bool = False
    fused: Fused = Fused.auto  # the fast training modules of models/fast/ (BENCHMARKS.md)
    keep_freed_memory: bool = True  # CPU on Linux: glibc reuses freed activations (engine/cpu.py)
    deterministic: bool = False
    resume: bool = False
    resume_from: str | None = None
    overwrite: bool = False
    non_finite: NonFinite = NonFinite.stop
    max_steps_per_epoch: int | None = None


@dataclass
class TestConfig:
    """Evaluation of the test split and the latency measurement (SPEC section 6)."""

    checkpoint: str | None = None  # default: <output.run_dir>/best.pt
    batch_size: int = 8
    optimize: bool = True  # models.optimize_for_inference (exact rewrites)
    latency: bool = True
    latency_size: list[int] = field(default_factory=lambda: [512, 512])
    latency_warmup: int = 10
    latency_runs: int = 50
    # Inference mode and breakdowns (engine/inference_modes.py, engine/breakdown.py)
    mode: InferenceMode = InferenceMode.resize  # resize: the paper's table
    tile: list[int] | None = None  # slide: [height, width]; default dataset.image_size
    stride: list[int] | None = None  # slide: default half the tile
    padding: Padding = Padding.reflect  # pad, slide
    scale: float = 1.0  # pad, slide: frames rescaled first
    thresholds: list[float] = field(default_factory=lambda: [i / 10 for i in range(1, 10)])
    tune_threshold: bool = True  # pick the sweep's best-Dice threshold on val, apply to test
    save_predictions: bool = False  # predicted masks as PNGs beside the results


@dataclass
class OutputConfig:
    """Where a run writes: checkpoints and logs in run_dir, the results file in results_dir."""

    run_dir: str = "runs/${model.name}"
    results_dir: str = "results"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    test: TestConfig = field(default_factory=TestConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


def _valid_keys(node: Any) -> list[str]:
    return list(node.keys()) if isinstance(node, DictConfig) else []


def _explain(exc: OmegaConfBaseException, source: str, schema: DictConfig) -> str:
    """Turn an OmegaConf error into one line naming the key, the value and the valid choices."""
    key = getattr(exc, "full_key", None) or ""
    parent_path, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(schema, parent_path) if parent_path else schema
    msg = str(exc).splitlines()[0]
    if "Key" in type(exc).__name__ or "not in struct" in msg or "ConfigKeyError" in repr(exc):
        valid = _valid_keys(parent)
        close = difflib.get_close_matches(leaf, valid, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        where = f" in '{parent_path}'" if parent_path else ""
        return f"{source}: unknown config key '{key}'{hint}; valid keys{where}: {', '.join(valid)}"
    return f"{source}: bad value for config key '{key}': {msg}"


def _merge(base: DictConfig, other: Any, source: str, schema: DictConfig) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except OmegaConfBaseException as exc:
        raise ConfigError(_explain(exc, source, schema)) from None


def parse_overrides(overrides: list[str]) -> DictConfig:
    """``["trainer.epochs=3", "dataset.image_size=[128,128]"]`` as a config (YAML values)."""
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}' is not of the form key=value")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot parse overrides {overrides}: {exc}") from None


def config_path(model: str) -> Path:
    """configs/config_<model>.yaml."""
    return CONFIG_DIR / f"config_{model}.yaml"


def load_yaml(path: str | Path) -> DictConfig:
    """Read a YAML config file; a missing or malformed file is a ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found")
    try:
        loaded = OmegaConf.load(path)
    except Exception as exc:  # yaml.YAMLError and friends
        raise ConfigError(f"config file '{path}' is not valid YAML: {exc}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys")
    return loaded


def load_config(
    model: str | None = None,
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    demo: bool = False,
) -> DictConfig:
    """Build a run's config: schema <- model YAML (or ``path``) <- demo overlay <- overrides."""
    schema = OmegaConf.structured(Config)
    cfg = schema
    if path is None and model is not None:
        path = config_path(model)
    if path is not None:
        cfg = _merge(cfg, load_yaml(path), str(path), schema)
    if demo:
        cfg = _merge(cfg, load_yaml(DEMO_CONFIG), str(DEMO_CONFIG), schema)
    cfg = _merge(cfg, parse_overrides(list(overrides)), "command line", schema)
    validate(cfg)
    if model is not None and cfg.model.name != model:
        raise ConfigError(
            f"config key 'model.name' = '{cfg.model.name}' (from '{path}'): this config is for "
            f"model '{cfg.model.name}', but this script runs '{model}'"
        )
    return cfg


def validate(cfg: DictConfig) -> None:
    """Checks the schema's types cannot express: ranges and the model name."""
    from models import MODEL_NAMES

    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise ConfigError(f"config key '{key}' = {OmegaConf.select(cfg, key)!r}: {what}")

    need(cfg.model.name in MODEL_NAMES, "model.name", f"valid models: {', '.join(MODEL_NAMES)}")
    t, d = cfg.trainer, cfg.dataset
    need(0.0 < t.threshold < 1.0, "trainer.threshold", "must lie strictly between 0 and 1")
    need(t.epochs >= 1, "trainer.epochs", "must be >= 1")
    need(t.lr > 0, "trainer.lr", "must be > 0")
    need(t.weight_decay >= 0, "trainer.weight_decay", "must be >= 0")
    need(
        t.max_steps_per_epoch is None or t.max_steps_per_epoch >= 1,
        "trainer.max_steps_per_epoch",
        "must be >= 1 or null (every batch)",
    )
    need(t.scheduler.patience >= 0, "trainer.scheduler.patience", "must be >= 0")
    need(t.scheduler.cooldown >= 0, "trainer.scheduler.cooldown", "must be >= 0")
    need(t.early_stopping.min_delta >= 0, "trainer.early_stopping.min_delta", "must be >= 0")
    need(t.aux_weight >= 0, "trainer.aux_weight", "must be >= 0")
    need(0 < t.scheduler.factor < 1, "trainer.scheduler.factor", "must lie between 0 and 1")
    need(t.early_stopping.patience >= 1, "trainer.early_stopping.patience", "must be >= 1")
    need(
        len(d.image_size) == 2 and min(d.image_size) >= 1,
        "dataset.image_size",
        "must be [height, width] with positive sides",
    )
    need(_augment_ok(d.augment), "dataset.augment", "none, or flip, scale, color joined by '+'")
    need(d.batch_size >= 1, "dataset.batch_size", "must be >= 1")
    need(d.num_workers >= 0, "dataset.num_workers", "must be >= 0")
    need(d.prefetch_factor >= 1, "dataset.prefetch_factor", "must be >= 1")
    m = cfg.model
    need(m.in_channels >= 1, "model.in_channels", "must be >= 1")
    need(m.classes >= 1, "model.classes", "must be >= 1")
    need(m.stages is None or m.stages >= 1, "model.stages", "must be >= 1 or null (default)")
    need(m.num_kernels is None or m.num_kernels >= 1, "model.num_kernels", "must be >= 1 or null")
    need(
        m.width is None or (m.width >= 8 and m.width % 8 == 0),
        "model.width",
        "must be a multiple of 8 (GroupNorm groups) or null",
    )
    for key in ("dataset.max_samples", "dataset.val_max_samples", "dataset.test_max_samples"):
        value = OmegaConf.select(cfg, key)
        need(value is None or value >= 1, key, "must be a positive count or null (all)")
    need(cfg.test.batch_size >= 1, "test.batch_size", "must be >= 1")
    need(cfg.test.latency_runs >= 1, "test.latency_runs", "must be >= 1")
    need(cfg.test.latency_warmup >= 0, "test.latency_warmup", "must be >= 0")
    need(
        len(cfg.test.latency_size) == 2 and min(cfg.test.latency_size) >= 1,
        "test.latency_size",
        "must be [height, width] with positive sides",
    )
    need(
        re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", t.device) is not None,
        "trainer.device",
        "valid: auto, cpu, cuda, cuda:N, mps",
    )
    validate_test_mode(cfg)
    model_overrides(cfg)
    if cfg.model.encoder_name is not None:
        from models.baselines import check_encoder

        try:
            check_encoder(cfg.model.encoder_name)
        except ValueError as exc:
            raise ConfigError(f"config key 'model.encoder_name': {exc}") from None


def validate_test_mode(cfg: DictConfig) -> None:
    """The test.mode keys that need no model; the size multiple is checked when the model is
    built (engine.evaluate.test)."""
    t = cfg.test

    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise ConfigError(f"config key '{key}' = {OmegaConf.select(cfg, key)!r}: {what}")

    for key in ("test.tile", "test.stride"):
        value = OmegaConf.select(cfg, key)
        if value is not None:
            need(len(value) == 2 and min(value) >= 1, key, "must be [height, width], positive")
            need(
                t.mode.value == "slide", key, f"applies only to test.mode=slide, not {t.mode.value}"
            )
    need(
        not (t.mode.value == "pad" and t.padding.value == "none"),
        "test.padding",
        "test.mode=pad needs padding reflect or zeros",
    )
    need(t.scale > 0, "test.scale", "must be > 0")
    need(t.scale == 1.0 or t.mode.value != "resize", "test.scale", "applies to pad and slide")
    need(
        len(t.thresholds) >= 1 and all(0 < x < 1 for x in t.thresholds),
        "test.thresholds",
        "must be one or more values strictly between 0 and 1",
    )


def _augment_ok(spec: str) -> bool:
    from data.augment import parse_augment

    try:
        parse_augment(spec)
    except ValueError:
        return False
    return True


def model_overrides(cfg: DictConfig) -> dict[str, Any]:
    """The keyword arguments for models.build_model: the model keys that are set."""
    from models import BASELINES, valid_overrides

    allowed = valid_overrides(cfg.model.name)
    items = OmegaConf.to_container(cfg.model)
    kwargs = {k: v for k, v in items.items() if k != "name" and v is not None}
    if "dyconv_init" in kwargs:
        kwargs["dyconv_init"] = kwargs["dyconv_init"].value
    if cfg.model.name in BASELINES:
        kwargs["encoder_weights"] = cfg.model.encoder_weights
    for key in kwargs:
        if key not in allowed:
            raise ConfigError(
                f"config key 'model.{key}' does not apply to model '{cfg.model.name}'; "
                f"its keys: {', '.join(allowed)}"
            )
    return kwargs


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML (saved beside every run)."""
    return OmegaConf.to_yaml(cfg, resolve=True)


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` for every leaf of a resolved container (lists are leaves)."""
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def config_diff(base: DictConfig, cfg: DictConfig) -> dict[str, tuple[Any, Any]]:
    """The resolved leaves where ``cfg`` differs from ``base``: ``{key: (base value, value)}``."""
    a, b = (_flat(OmegaConf.to_container(c, resolve=True, enum_to_str=True)) for c in (base, cfg))
    return {k: (a.get(k), v) for k, v in b.items() if a.get(k) != v}


def format_diff(diff: dict[str, tuple[Any, Any]]) -> str:
    """One compact line: ``key=value (was base)`` for each difference, in key order."""

    def show(value: Any) -> str:
        if value is None or isinstance(value, bool):
            return {None: "null", True: "true", False: "false"}[value]
        return str(value)

    return ", ".join(f"{k}={show(v)} (was {show(old)})" for k, (old, v) in sorted(diff.items()))
