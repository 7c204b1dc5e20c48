"""The scripts' command line: the config a run will use is shown before anything happens."""

import yaml

from engine import run_script
from engine.config import config_diff, format_diff, load_config


def test_config_diff_names_each_changed_key_with_its_old_value():
    base = load_config("dasnet")
    cfg = load_config("dasnet", overrides=["trainer.epochs=3", "dataset.image_size=[256,256]"])
    assert config_diff(base, cfg) == {
        "trainer.epochs": (50, 3),
        "dataset.image_size": ([512, 512], [256, 256]),
    }
    assert config_diff(base, base) == {}
    line = format_diff(config_diff(base, load_config("dasnet", overrides=["trainer.compile=true"])))
    assert line == "trainer.compile=true (was false)"


def test_print_config_prints_the_resolved_yaml_and_creates_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = run_script("dasnet", True, ["--demo", "--print-config", "trainer.epochs=2"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert code == 0 and list(tmp_path.iterdir()) == []
    assert printed["model"]["name"] == "dasnet" and printed["trainer"]["epochs"] == 2
    assert printed["output"]["run_dir"] == "runs/demo/dasnet"  # interpolation resolved


def test_a_run_logs_its_differences_from_the_models_yaml(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = run_script("unet", False, ["dataset.root=nowhere", "test.batch_size=2"])
    assert code == 2  # no checkpoint: fails after the config is shown
    line = next(x for x in capsys.readouterr().err.splitlines() if " config: " in x)
    assert "test.batch_size=2 (was 8)" in line and "dataset.root=nowhere" in line
    assert "trainer." not in line
