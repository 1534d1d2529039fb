"""The demo page (`hf_deit.demo`, `scripts/demo.py`): its predictions, its errors, the Space it writes, and the page
itself in a real headless Chromium."""

import configparser
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hf_deit import DistilledDeiTForImageClassification
from hf_deit.image_processing import deit_image_processor
from hf_deit_inputs import InputError

pytest.importorskip("gradio", reason="the demo extra (pip install -e '.[demo]') is not installed")

from hf_deit.demo import (  # noqa: E402
    HEADS,
    TEACHER_TITLE,
    DemoModel,
    UnreadableImageError,
    build_app,
    read_image,
    write_space,
)

REPO = Path(__file__).resolve().parents[1]
DIGITS = [str(digit) for digit in range(10)]


def digit_image(index: int = 0, size: int = 32) -> Image.Image:
    """One of scikit-learn's 8x8 digits, enlarged, as a user would drop it."""
    from sklearn.datasets import load_digits

    pixels = load_digits().images[index] * (255 / 16)
    return Image.fromarray(pixels.astype(np.uint8)).resize((size, size), Image.Resampling.NEAREST)


def test_prediction_gives_each_heads_top5_the_teachers_and_the_token_attention_over_the_image(model_folders):
    student, teacher = model_folders
    demo = DemoModel.load(str(student), teacher=str(teacher))
    prediction = demo.predict(digit_image())

    assert list(prediction.heads) == [*HEADS.values(), TEACHER_TITLE]
    for top in prediction.heads.values():
        assert len(top) == 5 and set(top) <= set(DIGITS)
        assert list(top.values()) == sorted(top.values(), reverse=True) and 0 < sum(top.values()) <= 1 + 1e-3
    # The averaged head's best class is the model's own answer for the image, as pipeline() would give it.
    model = DistilledDeiTForImageClassification.from_pretrained(student).eval()
    pixel_values = deit_image_processor(32, crop_pct=1.0)(digit_image(), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        outputs = model(pixel_values)
    for head, key in (("logits", "Averaged heads (what pipeline() returns)"), ("cls_logits", "Class head"),
                      ("distillation_logits", "Distillation head")):  # fmt: skip
        assert next(iter(prediction.heads[key])) == DIGITS[int(getattr(outputs, head).argmax())]

    assert list(prediction.attention) == ["cls, last layer", "dist, last layer", "cls, rollout", "dist, rollout"]
    for overlay in prediction.attention.values():
        pixels = np.asarray(overlay).astype(int)
        assert overlay.mode == "RGB" and min(overlay.size) == 224
        assert np.abs(pixels[..., 0] - pixels[..., 2]).max() > 50  # the map is drawn in colour over the grey image


def test_without_a_teacher_the_page_shows_the_three_heads(model_folders):
    student, _ = model_folders
    assert list(DemoModel.load(str(student)).predict(digit_image()).heads) == list(HEADS.values())


def test_without_gradio_the_page_names_the_extra_to_install_and_predictions_still_work(model_folders, monkeypatch):
    student, _ = model_folders
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if the demo extra were not installed
    from demo import check  # the script's, before torch loads

    with pytest.raises(InputError, match=r"The demo page needs gradio: pip install 'hf-deit\[demo\]'"):
        check([str(student)])
    demo = DemoModel.load(str(student))
    assert len(demo.predict(digit_image()).heads) == 3
    with pytest.raises(ImportError, match=r"needs gradio: pip install 'hf-deit\[demo\]'"):
        build_app(demo)


def test_an_image_that_cannot_be_read_is_named_with_what_to_drop_instead(tmp_path):
    (tmp_path / "notes.png").write_bytes(b"not an image at all")
    with pytest.raises(UnreadableImageError, match=r"^notes\.png cannot be read as an image .*Drop a PNG, JPEG"):
        read_image(tmp_path / "notes.png")
    digit_image().save(tmp_path / "cut.png")
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])  # a truncated download
    with pytest.raises(UnreadableImageError, match=r"^photo\.png cannot be read"):
        read_image(tmp_path / "cut.png", name="photo.png")
    Image.new("RGBA", (9, 7), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    assert read_image(tmp_path / "clear.png").mode == "RGB"  # transparency over white, as the training data


def test_a_folder_that_is_not_a_model_says_what_it_lacks(model_folders, tmp_path):
    student, teacher = model_folders
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="without config.json, so not a saved model"):
        DemoModel.load(str(tmp_path / "empty"))
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(student / "config.json", bare)
    with pytest.raises(InputError, match=r"has no weights \(model.safetensors\) and no image processor"):
        DemoModel.load(str(bare))
    with pytest.raises(InputError, match="is a resnet model, not a distilled DeiT"):
        DemoModel.load(str(teacher))
    # The script answers with argparse's exit status for bad input: a name before loading torch, the folder's files
    # where the model is loaded.
    for argv, expected in [([str(student), "--teacher", str(tmp_path / "nowhere")], "nowhere: no such folder"),
                           ([str(bare)], "preprocessor_config.json")]:  # fmt: skip
        result = subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py"), *argv], capture_output=True,
                                text=True, timeout=120)  # fmt: skip
        assert result.returncode == 2 and expected in result.stderr and "Traceback" not in result.stderr


def setup_cfg_requirements() -> set[str]:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    lines = [*parser["options"]["install_requires"].split("\n"), *parser["options.extras_require"]["demo"].split("\n")]
    names = {re.split(r"[<>=!~ \[]", line.strip())[0].lower() for line in lines if line.strip()}
    return names - {"gradio"}  # a Space installs gradio itself, at its README's sdk_version


def test_write_space_writes_the_app_its_requirements_card_and_model_files(model_folders, tmp_path, capsys):
    import demo as demo_script  # scripts/demo.py
    import gradio
    from huggingface_hub import SpaceCard

    import hf_deit.demo

    student, teacher = model_folders
    space = tmp_path / "space"
    demo_script.main([str(student), "--teacher", str(teacher), "--write_space", str(space)])
    assert f"Wrote the Space to {space}" in capsys.readouterr().out

    card = SpaceCard.load(space / "README.md").data
    assert (card.sdk, card.sdk_version, card.app_file) == ("gradio", gradio.__version__, "app.py")
    assert card.title == "student (distilled DeiT)"
    requirements = (space / "requirements.txt").read_text().split()
    assert {line.split("==")[0] for line in requirements} == setup_cfg_requirements()
    assert f"torch=={torch.__version__.split('+')[0]}" in requirements
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "modeling_distilled_deit.py"} <= {
        path.name for path in (space / "model").iterdir()
    }
    assert (space / "teacher" / "model.safetensors").is_file()
    # The same code as here, unchanged, beside app.py.
    assert (space / "hf_deit" / "demo.py").read_text() == Path(hf_deit.demo.__file__).read_text()
    assert (space / "hf_deit_inputs" / "checks.py").is_file()
    app = (space / "app.py").read_text()
    assert "from hf_deit.demo import serve" in app and "os.path.join(HERE, 'model')" in app and "teacher=" in app

    # Nothing is overwritten: a folder that holds anything is refused as it is.
    with pytest.raises(InputError, match="exists and is not an empty folder"):
        write_space(space, str(student))
    assert (space / "app.py").read_text() == app
    assert [path.name for path in tmp_path.iterdir()] == ["space"]  # and no half-written folder was left


def test_a_space_for_a_model_on_the_hub_names_it(model_folders, tmp_path, monkeypatch):
    from huggingface_hub import SpaceCard

    monkeypatch.delenv("HF_HUB_OFFLINE")  # nothing is downloaded: the Space names the model, and loads it when it runs
    space = write_space(tmp_path / "space", "someone/deit-tiny-distilled-digits")
    assert "serve('someone/deit-tiny-distilled-digits')" in (space / "app.py").read_text()
    assert SpaceCard.load(space / "README.md").data.models == ["someone/deit-tiny-distilled-digits"]
    assert not (space / "model").exists()


# ---- served: the Space's app.py over HTTP, and the page in a headless browser ----


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(tmp_path: Path, **extra) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("GRADIO_", "ACCELERATE_"))}
    # Local only: no usage statistics sent, uploads kept under the test's folder.
    env.update(GRADIO_ANALYTICS_ENABLED="False", GRADIO_TEMP_DIR=str(tmp_path / "uploads"), HF_HUB_OFFLINE="1",
               PYTHONUNBUFFERED="1", **extra)  # fmt: skip
    return env


@contextlib.contextmanager
def serving(command: list[str], port: int, env: dict, log: Path, cwd: Path | None = None):
    """Run `command` (a demo server on `port`) until its page answers; stop it when the block ends."""
    with open(log, "w") as output:
        server = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, cwd=cwd)
        try:
            deadline = time.monotonic() + 240
            while True:
                if server.poll() is not None:
                    pytest.fail(f"the demo server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        pytest.fail(f"the demo server did not answer in 240 s:\n{log.read_text()[-3000:]}")
                    time.sleep(0.5)
            yield f"http://127.0.0.1:{port}/"
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


@pytest.mark.slow
def test_the_space_app_serves_the_same_predictions_over_gradios_api(model_folders, tmp_path):
    from gradio_client import Client, handle_file

    student, teacher = model_folders
    space = write_space(tmp_path / "space", str(student), teacher=str(teacher))
    digit_image().save(tmp_path / "digit.png")
    expected = DemoModel.load(str(student), teacher=str(teacher)).predict(digit_image())

    port = free_port()
    env = server_env(tmp_path, GRADIO_SERVER_PORT=str(port))
    env.pop("PYTHONPATH", None)  # as on a Space: the packages come from the folder itself
    with serving([sys.executable, "app.py"], port, env, tmp_path / "space.log", cwd=space) as url:  # as a Space runs it
        result = Client(url, verbose=False).predict(handle_file(str(tmp_path / "digit.png")), api_name="/answer")
    gallery, *labels = result
    assert len(gallery) == 4 and all(Path(item["image"]).is_file() for item in gallery)
    assert [label["label"] for label in labels] == [next(iter(top)) for top in expected.heads.values()]
    assert "hf_deit" in {path.name for path in space.iterdir()}


def chromium_path() -> str | None:
    """The system's Chromium (Debian's `chromium`, Ubuntu's `chromium-browser`, Google Chrome), else playwright's own
    if it was downloaded (`python -m playwright install chromium`)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    with contextlib.suppress(Exception):
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            bundled = playwright.chromium.executable_path
            return bundled if os.path.isfile(bundled) else None
    return None


@pytest.fixture(scope="module")
def trained_models(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny teacher and a tiny student distilled from it, trained by the scripts on the embedded digits."""
    import train
    import train_teacher

    root = tmp_path_factory.mktemp("trained")
    data = ["--dataset_name", "digits", "--image_size", "16", "--max_train_samples", "256", "--max_eval_samples", "64",
            "--per_device_train_batch_size", "32", "--eval_strategy", "no", "--save_strategy", "no", "--disable_tqdm",
            "true", "--max_steps", "8"]  # fmt: skip
    train_teacher.main(["--output_dir", str(root / "teacher"), "--config_overrides",
                        "hidden_sizes=[16,32],depths=[1,1],embedding_size=16", *data])  # fmt: skip
    train.main(["--output_dir", str(root / "student"), "--config_overrides",
                "image_size=16,patch_size=4,hidden_size=32,num_hidden_layers=2,num_attention_heads=2",
                "--teacher_name_or_path", str(root / "teacher"), "--distillation_type", "hard", *data])  # fmt: skip
    return root / "student", root / "teacher"


@pytest.mark.slow
def test_the_page_in_a_headless_browser_shows_the_top_label_and_the_attention_maps(trained_models, tmp_path):
    # `make test` sets HF_DEIT_REQUIRE_BROWSER=1 where it can install Chromium itself (root and apt-get, as in CI):
    # there a missing browser fails the run instead of letting the only test of the page in a browser vanish.
    missing = pytest.fail if os.environ.get("HF_DEIT_REQUIRE_BROWSER") == "1" else pytest.skip
    try:
        from playwright import sync_api as playwright_api
    except ImportError:
        missing("playwright is not installed: pip install -r requirements-dev.txt")
    browser_path = chromium_path()
    if browser_path is None:
        missing("no Chromium on this machine: `make browser` installs it where root and apt-get are available (or "
                "apt-get install chromium; python -m playwright install chromium where its download server can be "
                "reached)")  # fmt: skip
    student, teacher = trained_models
    digit_image(3).save(tmp_path / "three.png")
    (tmp_path / "notes.png").write_bytes(b"not an image at all")
    expected = DemoModel.load(str(student), teacher=str(teacher)).predict(digit_image(3))

    port = free_port()
    command = [sys.executable, str(REPO / "scripts" / "demo.py"), str(student), "--teacher", str(teacher), "--port",
               str(port)]  # fmt: skip
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    with serving(command, port, server_env(tmp_path), tmp_path / "demo.log") as url, \
            playwright_api.sync_playwright() as playwright:  # fmt: skip
        browser = playwright.chromium.launch(executable_path=browser_path, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 960})
            page.goto(url)
            page.locator("#image input[type=file]").set_input_files(str(tmp_path / "three.png"))
            page.wait_for_function(
                "document.querySelectorAll('#attention img').length === 4 && "
                "[...document.querySelectorAll('#attention img')].every(img => img.complete && img.naturalWidth > 0)",
                timeout=120_000,
            )
            shown = {
                title: page.locator(f"#head-{title.split()[0].lower()} [data-testid=label-output-value]").inner_text()
                for title in expected.heads
            }
            assert shown == {title: next(iter(top)) for title, top in expected.heads.items()}
            sizes = page.eval_on_selector_all("#attention img", "images => images.map(img => img.naturalWidth)")
            assert sizes == [224] * 4
            page.screenshot(path=str(artifacts / "demo_page.png"), full_page=True)

            # A file that is not an image: the page says so.
            page.locator("#image input[type=file]").set_input_files(str(tmp_path / "notes.png"))
            page.get_by_text("notes.png cannot be read as an image").first.wait_for(timeout=60_000)
            page.screenshot(path=str(artifacts / "demo_page_unreadable_image.png"), full_page=True)
        finally:
            browser.close()
    with Image.open(artifacts / "demo_page.png") as screenshot:
        assert screenshot.width == 1280 and screenshot.height >= 600
    print(f"screenshots: {artifacts}")
