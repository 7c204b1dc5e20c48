"""The web page (tools/app.py, issue 17), end to end: served on a free local port, called
through gradio_client like any Gradio app, and driven in a real headless Chromium."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image

from engine.losses import main_logits
from tools import app, load_for_inference, predict

from .test_tools import make_checkpoint

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# .ci/run installs Chromium and sets this: there the browser test must run, never skip.
REQUIRE_BROWSER = os.environ.get("UAVSEG_REQUIRE_BROWSER") == "1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_root):
    """The app on a free port, listing one small untrained checkpoint under its runs folder."""
    runs = tmp_path_factory.mktemp("runs")
    ckpt = make_checkpoint(runs / "thin" / "best.pt")
    frames = predict.demo_inputs(tiny_root)  # visible, visible, infrared, infrared
    args = app.parser().parse_args(
        ["--runs", str(runs), "--port", str(free_port()), "--device", "cpu"]
    )
    with app.serving(args, block=False) as page:
        yield SimpleNamespace(
            url=page.local_url, ckpt=ckpt, frame=frames[0].path, infrared=frames[2].path
        )


@pytest.fixture(scope="module")
def client(served, tmp_path_factory):
    return Client(
        served.url,
        verbose=False,
        download_files=tmp_path_factory.mktemp("downloads"),
        analytics_enabled=False,
    )


def test_the_picker_lists_each_checkpoint_with_its_model_best_epoch_and_val_miou(tmp_path):
    run = tmp_path / "runs" / "thin"
    make_checkpoint(run / "best.pt")  # saved at epoch 1
    (run / "metrics.csv").write_text("epoch,val_loss,miou\n1,0.9,0.4200\n2,0.8,0.5000\n")
    (tmp_path / "runs" / "notes.pt").write_text("not a checkpoint")  # skipped, not fatal
    assert app.picker_choices(tmp_path / "runs") == [
        (f"{run / 'best.pt'}: thindyunet, best epoch 1, val mIoU 0.420", str(run / "best.pt"))
    ]
    assert app.missing_hint(tmp_path / "runs", demo=True) == ""


def test_demo_without_demo_checkpoints_names_the_command_that_makes_them(tmp_path):
    hint = app.missing_hint(tmp_path / "runs" / "demo", demo=True)
    assert "python train_dasnet.py --demo" in hint and "runs/demo" in hint


def median_threshold(ckpt: Path, frame: Path) -> float:
    """A threshold that splits this untrained model's mask for ``frame`` about in half,
    so that comparing masks means something (an empty or full mask would always agree)."""
    model, saved = load_for_inference(ckpt)
    size = saved["config"]["dataset"]["image_size"]  # make_checkpoint's 128x128
    image = predict.to_input(predict.read_image(frame), tuple(size))[None]
    with torch.inference_mode():
        probs = torch.sigmoid(main_logits(model(image)).float())
    return float(probs.median())


def segment(client: Client, choice, path, files, threshold=0.5, mode="resize") -> tuple:
    return client.predict(
        choice, path, [handle_file(f) for f in files], mode, threshold, api_name="/segment"
    )


@pytest.mark.parametrize("mode", app.modes())
def test_the_page_gives_the_mask_predict_py_writes(served, client, tmp_path, mode):
    threshold = median_threshold(served.ckpt, served.frame)
    out = tmp_path / "cli"
    argv = ["--checkpoint", str(served.ckpt), "--threshold", repr(threshold), "--out", str(out)]
    argv += ["--mode", mode] if mode != "resize" else []  # predict.py before it had modes
    assert predict.main([*argv, str(served.frame)]) == 0
    cli_mask = np.asarray(Image.open(out / f"{served.frame.stem}_mask.png"))
    assert 0.05 < (cli_mask > 0).mean() < 0.95  # a mask with something in it on both sides

    # The picker lists the checkpoint by its path; the path field stays empty.
    overlay, overlays, masks, table, downloads, video, message = segment(
        client, str(served.ckpt), "", [served.frame], threshold, mode
    )
    assert "1 of 1 files segmented" in message, message
    assert video is None
    downloads = downloads if isinstance(downloads, list) else [downloads]
    (mask_png,) = [p for p in downloads if p.endswith("_mask.png")]
    page_mask = np.asarray(Image.open(mask_png))
    assert page_mask.shape == cli_mask.shape
    assert np.array_equal(page_mask, cli_mask)
    with Image.open(overlay) as shown, Image.open(served.frame) as frame:
        assert shown.size == frame.size
    assert [Path(o["image"]).name for o in overlays] == [Path(overlay).name]
    assert masks[0]["caption"] == f"{served.frame.name}: {(page_mask > 0).sum()} UAV pixels"
    ((name, frames, size, pixels, fraction, latency, device),) = table["data"]
    assert (name, frames, device) == (served.frame.name, 1, "cpu")
    assert size == f"{cli_mask.shape[0]}x{cli_mask.shape[1]}"
    assert pixels == int((cli_mask > 0).sum())
    assert fraction == pytest.approx((cli_mask > 0).mean(), abs=1e-6)
    assert latency > 0


def test_bad_uploads_and_checkpoints_give_a_message_and_the_server_keeps_serving(
    served, client, tmp_path
):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a frame")
    fake = tmp_path / "fake.png"
    fake.write_text("not a png either")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 64)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)

    *_, message = segment(client, None, str(served.ckpt), [notes, fake, broken, served.frame])
    assert "1 of 4 files segmented" in message, message
    for name in ("notes.txt", "fake.png", "broken.mp4"):
        assert f"**{name}:**" in message
    for path in (tmp_path / "missing.pt", foreign):  # the wording is the loader's
        overlay, *_, message = segment(client, None, str(path), [served.frame])
        assert overlay is None and message.startswith("**error:**") and str(path) in message
    *_, message = segment(client, str(served.ckpt), "", [served.frame])
    assert "1 of 1 files segmented" in message


def test_a_video_gives_the_overlay_video_and_its_masks(served, client, tmp_path):
    import imageio.v2 as imageio

    frame = predict.read_image(served.frame)
    clip = tmp_path / "clip.mp4"
    imageio.mimwrite(clip, [frame, frame[:, ::-1]], fps=5, macro_block_size=1)
    *_, table, downloads, video, message = segment(client, str(served.ckpt), "", [clip])
    assert "1 of 1 files segmented" in message, message
    assert Path(video["video"] if isinstance(video, dict) else video).suffix == ".mp4"
    assert sorted(Path(p).suffix for p in downloads) == [".mp4", ".zip"]
    ((name, frames, size, *_),) = table["data"]
    assert (name, frames, size) == ("clip.mp4", 2, f"{frame.shape[0]}x{frame.shape[1]}")


def chromium(profile: Path):
    """Selenium's Chrome driver on Debian's chromium and chromium-driver (nothing downloaded)."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        reason = f"needs {CHROMIUM} and {CHROMEDRIVER}: apt-get install chromium chromium-driver"
        if REQUIRE_BROWSER:
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1300",
        f"--user-data-dir={profile}",  # new and empty: nothing shared with a user's browser
    ):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))


def shown_images(driver, elem_id: str) -> list[tuple[int, int]]:
    """(width, height) of the loaded images in a component of the page."""
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])]"
        ".filter(i => i.complete && i.naturalWidth > 0)"
        ".map(i => [i.naturalWidth, i.naturalHeight]);",
        f"#{elem_id} img",
    )


def test_a_browser_uploads_frames_and_sees_their_overlays(served, tmp_path, monkeypatch):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never download a driver
    driver = chromium(tmp_path / "profile")
    try:
        driver.get(served.url)
        wait = WebDriverWait(driver, 120)
        upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#upload input[type=file]"))
        upload.send_keys(str(served.frame.resolve()))  # the upload runs the model
        sizes = wait.until(lambda d: shown_images(d, "overlay"))
        wait.until(lambda d: "cpu" in d.find_element(By.ID, "table").text)
        driver.save_screenshot(str(tmp_path / "page.png"))
        with Image.open(served.frame) as frame:
            assert sizes[0] == list(frame.size)
        assert "1 of 1 files segmented" in driver.find_element(By.ID, "message").text

        # Two frames of different sizes: a click on the second thumbnail shows its overlay.
        driver.get(served.url)
        upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#upload input[type=file]"))
        upload.send_keys(f"{served.frame.resolve()}\n{served.infrared.resolve()}")
        wait.until(lambda d: len(shown_images(d, "overlays")) == 2)
        driver.find_elements(By.CSS_SELECTOR, "#overlays img")[1].click()
        with Image.open(served.infrared) as infrared:
            wait.until(lambda d: shown_images(d, "overlay") == [list(infrared.size)])
        assert "2 of 2 files segmented" in driver.find_element(By.ID, "message").text
    finally:
        driver.quit()
