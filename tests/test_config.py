"""Configs: the paper's recipe in every config_<model>.yaml, and a schema that refuses mistakes."""

import pytest

from engine.config import ConfigError, load_config, model_overrides, parse_overrides
from engine.setup import check_image_size
from models import MODEL_NAMES, build_model, count_parameters

from .test_models import PAPER_PARAMS  # SPEC section 1


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_each_config_states_the_papers_recipe(name):
    cfg = load_config(name)
    d, t = cfg.dataset, cfg.trainer
    assert cfg.model.name == name
    assert list(d.image_size) == [512, 512] and d.modality.value == "both"
    assert (d.max_samples, d.val_max_samples, d.test_max_samples, d.seed) == (20000, 1000, None, 42)
    assert d.batch_size == 24 and d.mask_resize.value == "bilinear" and d.augment == "none"
    assert (t.epochs, t.lr, t.weight_decay, t.aux_weight, t.threshold) == (50, 1e-4, 0.01, 0.4, 0.5)
    assert (t.scheduler.factor, t.scheduler.patience, t.scheduler.cooldown) == (0.5, 15, 5)
    assert (t.early_stopping.patience, t.early_stopping.min_delta) == (30, 0.001)
    assert t.device == "auto" and cfg.output.run_dir == f"runs/{name}"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_each_config_builds_the_papers_model_to_the_parameter(name):
    cfg = load_config(name)
    kwargs = model_overrides(cfg)
    if "encoder_weights" in kwargs:
        assert kwargs["encoder_weights"] == "imagenet"  # the paper's baselines
        kwargs["encoder_weights"] = None  # no download in tests
    assert count_parameters(build_model(name, **kwargs)) == PAPER_PARAMS[name]


def test_smp_baselines_take_their_encoder_from_the_command_line():
    cfg = load_config("unet", overrides=["model.encoder_name=resnet18"])
    assert model_overrides(cfg)["encoder_name"] == "resnet18"
    assert load_config("mobileunet").model.encoder_name == "mobilenet_v2"
    with pytest.raises(ConfigError, match="'model.encoder_name'.*'resnet35' is not an smp"):
        load_config("pan", overrides=["model.encoder_name=resnet35"])
    with pytest.raises(ConfigError, match="'model.encoder_name' does not apply to model 'dasnet'"):
        load_config("dasnet", overrides=["model.encoder_name=resnet18"])


def test_demo_overlay_is_small_offline_and_writes_elsewhere():
    cfg = load_config("unet", demo=True)
    assert list(cfg.dataset.image_size) == [128, 128] and cfg.dataset.demo
    assert cfg.model.encoder_weights is None
    assert cfg.output.run_dir == "runs/demo/unet" and cfg.output.results_dir == "results/demo"


def test_overrides_are_parsed_as_yaml_values():
    cfg = load_config(
        "dasnet",
        overrides=[
            "trainer.epochs=3",
            "dataset.image_size=[256,384]",
            "dataset.modality=infrared",
            "trainer.lr=0.5e-3",
        ],
    )
    assert cfg.trainer.epochs == 3 and list(cfg.dataset.image_size) == [256, 384]
    assert cfg.dataset.modality.value == "infrared" and cfg.trainer.lr == 5e-4
    assert parse_overrides(["a.b=null"]).a.b is None


def test_a_misspelled_key_is_refused_by_name_with_the_valid_keys():
    with pytest.raises(ConfigError, match=r"'trainer\.epoch'.*did you mean 'epochs'.*valid keys"):
        load_config("dasnet", overrides=["trainer.epoch=3"])


def test_a_misspelled_key_in_a_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model:\n  name: dasnet\ndataset:\n  batch_sise: 8\n")
    with pytest.raises(ConfigError, match=r"mine\.yaml.*'dataset\.batch_sise'"):
        load_config("dasnet", path)


@pytest.mark.parametrize(
    "override, key",
    [
        ("trainer.epochs=many", "trainer.epochs"),
        ("dataset.modality=rgb", "dataset.modality"),
        ("trainer.amp=fp8", "trainer.amp"),
    ],
)
def test_a_wrong_type_or_choice_is_refused_by_name(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("dasnet", overrides=[override])


@pytest.mark.parametrize(
    "override, key",
    [
        ("trainer.threshold=1.5", "trainer.threshold"),
        ("trainer.threshold=0", "trainer.threshold"),
        ("dataset.batch_size=0", "dataset.batch_size"),
        ("model.name=segformer", "model.name"),
        ("model.width=32", "model.width"),  # a dynamic-model key on a baseline
    ],
)
def test_out_of_range_values_are_refused_by_name(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("unet" if "width" in override else "dasnet", overrides=[override])


def test_a_config_for_another_model_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="for model 'unet'"):
        load_config("dasnet", "configs/config_unet.yaml")


def test_dynamic_models_need_image_sides_multiple_of_128():
    cfg = load_config("dasnet", overrides=["dataset.image_size=[200,256]"])
    with pytest.raises(ConfigError, match=r"dataset\.image_size.*\[200, 256\].*multiples of 128"):
        check_image_size(cfg, build_model("dasnet"))
    unet = load_config("unet", overrides=["dataset.image_size=[192,192]"])
    check_image_size(unet, build_model("unet", encoder_weights=None))


def test_dyconv_init_defaults_to_the_paper_and_reaches_the_model():
    assert model_overrides(load_config("dasnet"))["dyconv_init"] == "paper"
    cfg = load_config("dasnet", overrides=["model.dyconv_init=kaiming"])
    assert model_overrides(cfg)["dyconv_init"] == "kaiming"
    model = build_model("dasnet", **model_overrides(cfg))
    assert model.encoder[1][0].weight.std().item() < 0.1  # sqrt(2 / 576) = 0.059, not 1
    with pytest.raises(ConfigError, match="dyconv_init"):
        load_config("dasnet", overrides=["model.dyconv_init=xavier"])
    with pytest.raises(ConfigError, match="model.dyconv_init"):
        model_overrides(load_config("unet", overrides=["model.dyconv_init=kaiming"]))


def test_trainer_fused_is_auto_by_default_and_checked():
    assert all(load_config(n).trainer.fused.value == "auto" for n in MODEL_NAMES)
    assert load_config("dasnet", overrides=["trainer.fused=never"]).trainer.fused.value == "never"
    for bad in ("maybe", "off"):  # YAML reads off as false
        with pytest.raises(ConfigError, match="fused"):
            load_config("dasnet", overrides=[f"trainer.fused={bad}"])
