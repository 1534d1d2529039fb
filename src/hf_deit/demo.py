"""A demo page for a trained distilled DeiT: drop an image, see what each head predicts and where its tokens look.

    from hf_deit.demo import serve
    serve("outputs/deit", teacher="outputs/teacher")        # a Gradio page on http://127.0.0.1:7860

The page shows the top-5 classes of the averaged heads (`logits`, what `pipeline()` returns), of the class head and of
the distillation head, the teacher's top-5 when a teacher is given, and the class and distillation tokens' attention
over the image (last layer and rollout, `hf_deit.attention_maps`) drawn over what the model saw.

`DemoModel` loads and predicts without Gradio, an optional extra (`pip install 'hf-deit[demo]'`) that only
`build_app`, `serve` and `write_space` (a Hugging Face Space folder serving the same page) need.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

import hf_deit_inputs
from hf_deit_inputs import InputError
from hf_deit_inputs.checks import check_saved_model, install_hint

from .attention_maps import distilled_deit_maps, relative_heat

TOP_K = 5
# The heads a distilled DeiT returns, with the titles the page gives them.
HEADS = {
    "logits": "Averaged heads (what pipeline() returns)",
    "cls_logits": "Class head",
    "distillation_logits": "Distillation head",
}
TEACHER_TITLE = "Teacher"
DISPLAY_SIZE = 224  # attention overlays are drawn at this shorter side, however small the model's input
# A Space installs these (at the versions running here) and gradio at the README's sdk_version: the package's
# requirements (setup.cfg's install_requires) and the demo extra.
SPACE_REQUIREMENTS = ("torch", "torchvision", "transformers", "datasets", "accelerate", "evaluate", "huggingface-hub",
                      "safetensors", "pillow", "numpy", "matplotlib")  # fmt: skip
# The files of a saved model that serving needs: config and weights, image processor, model code, card.
MODEL_FILE_PATTERNS = ("config.json", "preprocessor_config.json", "*.safetensors", "*.safetensors.index.json",
                       "pytorch_model*.bin", "pytorch_model.bin.index.json", "*.py", "README.md")  # fmt: skip


# What a folder that save_pretrained wrote holds as weights (one file, or an index of shards).
MODEL_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                      "pytorch_model.bin.index.json")  # fmt: skip


def check_demo_inputs(model: str, teacher: str | None = None, space_dir: str | None = None) -> None:
    """Raises `InputError` naming each fix: `model` a saved model with its image processor (a folder, or a Hub id),
    `teacher` a saved classifier (folder, weights file or Hub id), `space_dir` (the Space folder to write) new or
    empty, so that nothing is overwritten. (That `model` is a distilled DeiT is checked once it is loaded.)"""
    folder = os.path.expanduser(model)
    problems = check_saved_model("model", model) if not os.path.isfile(folder) else [
        f"model {model} is a file: the demo loads the folder that save_pretrained wrote (config.json, "
        "model.safetensors, preprocessor_config.json); scripts/convert_checkpoint.py turns a checkpoint file into one."]
    missing = [what for what, names in (("weights (model.safetensors)", MODEL_WEIGHT_FILES),
                                        ("image processor (preprocessor_config.json)", ("preprocessor_config.json",)))
               if not any(os.path.isfile(os.path.join(folder, name)) for name in names)]  # fmt: skip
    if not problems and os.path.isdir(folder) and missing:
        problems.append(f"model {model} has no {' and no '.join(missing)}: pass the folder that scripts/train.py "
                        "wrote, which holds config.json, model.safetensors and preprocessor_config.json.")  # fmt: skip
    if teacher:
        problems += check_saved_model("--teacher", teacher, role="teacher")
    if space_dir and os.path.exists(space_dir) and (not os.path.isdir(space_dir) or os.listdir(space_dir)):
        problems.append(f"--write_space {space_dir} exists and is not an empty folder: pass a new or empty folder "
                        "(nothing there is overwritten).")  # fmt: skip
    if problems:
        raise InputError(problems)


class UnreadableImageError(ValueError):
    """A file that cannot be decoded as an image; the message names it and says what to drop instead."""


def read_image(path: str | os.PathLike, name: str | None = None) -> Image.Image:
    """The image at `path`, decoded as the training data is (`hf_deit.data.decode_image`: fully, turned as its EXIF
    orientation says), in RGB (`hf_deit.data.to_rgb`). `name`: how the message calls the file (default: its file
    name)."""
    from .data import decode_image, to_rgb

    name = name or os.path.basename(str(path))
    try:
        image = decode_image({"path": str(path), "bytes": None})
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ... on bad bytes
        reason = str(error).replace(str(path), name)  # the name the user knows, not where a server keeps the upload
        raise UnreadableImageError(
            f"{name} cannot be read as an image ({type(error).__name__}: {reason}). Drop a PNG, JPEG, WebP, BMP or GIF "
            "file."
        ) from None
    return to_rgb(image)


@dataclass
class DemoPrediction:
    """What the page shows for one image: `heads` maps each head's title (`HEADS`, then `TEACHER_TITLE`) to its top-5
    {class name: probability}, best first; `attention` maps each map's title to the overlay image."""

    heads: dict[str, dict[str, float]]
    attention: dict[str, Image.Image]


class DemoModel:
    """A distilled DeiT with its image processor (and, optionally, its teacher), ready to answer the page."""

    def __init__(self, model, processor, teacher=None, name: str = "model"):
        self.model, self.processor, self.teacher, self.name = model.eval(), processor, teacher, name

    @classmethod
    def load(cls, model: str, teacher: str | None = None, trust_remote_code: bool = False) -> "DemoModel":
        """`model`: a folder that save_pretrained wrote (with preprocessor_config.json) or a Hub id; `teacher`: any
        classifier `hf_deit.teacher.Teacher.load` takes. Bad inputs raise `hf_deit_inputs.InputError` naming the fix."""
        check_demo_inputs(model, teacher)
        loaded = AutoModelForImageClassification.from_pretrained(
            model, trust_remote_code=trust_remote_code, attn_implementation="eager"  # eager: attention weights
        )
        if getattr(loaded.config, "model_type", None) != "distilled_deit":
            raise InputError(f"model {model} is a {loaded.config.model_type} model, not a distilled DeiT: the demo "
                             "shows a distilled DeiT's class and distillation heads. (Another classifier can be its "
                             "--teacher.)")  # fmt: skip
        processor = AutoImageProcessor.from_pretrained(model, trust_remote_code=trust_remote_code)
        if teacher is not None:
            from .teacher import Teacher

            teacher = Teacher.load(teacher, loaded.config, student_mean=processor.image_mean,
                                   student_std=processor.image_std, trust_remote_code=trust_remote_code)  # fmt: skip
        return cls(loaded, processor, teacher, name=os.path.basename(os.path.normpath(model)))

    def predict(self, image: Image.Image) -> DemoPrediction:
        """Top-5 per head and the attention overlays for one image."""
        from .data import to_rgb

        pixel_values = self.processor(to_rgb(image), return_tensors="pt")["pixel_values"]
        pixel_values = pixel_values.to(self.model.device, self.model.dtype)
        outputs, maps = distilled_deit_maps(self.model, pixel_values)
        heads = {title: self._top_k(getattr(outputs, key)[0]) for key, title in HEADS.items()}
        if self.teacher is not None:
            heads[TEACHER_TITLE] = self._top_k(self.teacher(pixel_values).logits[0])
        view = self._model_view(pixel_values[0])
        return DemoPrediction(heads, {title: attention_overlay(view, attention[0]) for title, attention in maps.items()})

    def _top_k(self, logits: torch.Tensor) -> dict[str, float]:
        probabilities, indices = logits.float().softmax(-1).topk(min(TOP_K, logits.shape[-1]))
        id2label = self.model.config.id2label
        return {str(id2label.get(index, index)): round(value, 4)
                for value, index in zip(probabilities.tolist(), indices.tolist())}  # fmt: skip

    def _model_view(self, pixel_values: torch.Tensor) -> np.ndarray:
        """What the model saw (its crop, normalisation undone), enlarged to `DISPLAY_SIZE`: (height, width, 3) in
        [0, 1]."""
        mean = torch.tensor(self.processor.image_mean)[:, None, None]
        std = torch.tensor(self.processor.image_std)[:, None, None]
        view = (pixel_values.float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
        image = Image.fromarray((view * 255).round().astype(np.uint8))
        scale = DISPLAY_SIZE / min(image.size)
        if scale > 1:
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
        return np.asarray(image, dtype=np.float32) / 255


def attention_overlay(view: np.ndarray, attention: torch.Tensor) -> Image.Image:
    """`view` (height, width, 3) in [0, 1] in grey, with one `(rows, columns)` map in jet colours half over it, as the
    attention figures draw it (scripts/visualize_attention.py); a constant map leaves the grey image alone."""
    from matplotlib import colormaps

    grey = np.repeat(view.mean(axis=-1, keepdims=True), 3, axis=-1)
    heat = relative_heat(attention.cpu(), view.shape[:2])
    shown = grey if heat is None else 0.5 * grey + 0.5 * colormaps["jet"](heat.numpy())[..., :3]
    return Image.fromarray((shown * 255).round().astype(np.uint8))


# ---- the page ----


def _gradio():
    try:
        import gradio
    except ImportError:
        raise ImportError(f"The demo page needs gradio: {install_hint('demo')}.") from None
    return gradio


def build_app(demo: DemoModel):
    """The page as a `gradio.Blocks`: an image drop zone, a top-5 label per head, and a gallery of the attention
    overlays. An image that cannot be read is answered on the page (`gradio.Error`)."""
    gr = _gradio()
    config = demo.model.config
    image_size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
    with gr.Blocks(title=f"{demo.name}: distilled DeiT") as app:
        gr.Markdown(
            f"# {demo.name}\nA distilled DeiT ({config.num_labels} classes, {image_size} px input). Drop an image: the "
            "top-5 classes of each head, and where the class (`cls`) and distillation (`dist`) tokens look."
        )
        titles = [*HEADS.values(), *([TEACHER_TITLE] if demo.teacher is not None else [])]
        labels = []
        with gr.Row():
            image = gr.Image(type="filepath", label="Image", sources=["upload", "clipboard"], height=400,
                             elem_id="image")  # fmt: skip
            with gr.Column():
                for pair in range(0, len(titles), 2):  # the heads two by two
                    with gr.Row():
                        # elem_id: head-averaged, head-class, head-distillation, head-teacher
                        labels += [gr.Label(num_top_classes=TOP_K, label=title, elem_id="head-" + title.split()[0].lower())
                                   for title in titles[pair:pair + 2]]  # fmt: skip
        gallery = gr.Gallery(label="Attention over the image the model saw", columns=4, height="auto",
                             elem_id="attention")  # fmt: skip

        def answer(payload):
            # Called with the upload as Gradio sent it (preprocess=False below): Gradio's own decoding would fail on
            # a broken file before this function, with a message that names neither the file nor the fix.
            try:
                picture = read_image(payload["path"], name=payload.get("orig_name"))
            except UnreadableImageError as error:
                raise gr.Error(str(error)) from None
            prediction = demo.predict(picture)
            overlays = [(overlay, title) for title, overlay in prediction.attention.items()]
            return [overlays] + [prediction.heads[title] for title in titles]

        image.upload(answer, inputs=image, outputs=[gallery, *labels], preprocess=False)
        image.clear(lambda: [None] * (1 + len(labels)), outputs=[gallery, *labels])
    return app


def serve(model: str, teacher: str | None = None, host: str | None = None, port: int | None = None,
          trust_remote_code: bool = False, **launch_options):  # fmt: skip
    """Load `model` (and `teacher`), build the page and launch it on `host`:`port` (default: Gradio's, which a Space
    sets through GRADIO_SERVER_NAME/GRADIO_SERVER_PORT). Blocks until stopped unless `prevent_thread_lock=True`."""
    app = build_app(DemoModel.load(model, teacher, trust_remote_code=trust_remote_code))
    app.launch(server_name=host, server_port=port, **launch_options)
    return app


# ---- a Hugging Face Space ----


def write_space(folder: str | os.PathLike, model: str, teacher: str | None = None, title: str | None = None) -> Path:
    """A Space folder serving `model` (and `teacher`) with this page, unchanged: app.py calls `serve`, from a copy of
    the hf_deit and hf_deit_inputs packages beside it; requirements.txt pins what runs here; README.md has the
    Space's front matter (gradio at the installed version). A local model or teacher is copied in (`model/`,
    `teacher/`: config, weights, image processor, code, card); a Hub id is named. `folder` must be new or empty; it is
    written beside itself first and renamed at the end, so a failure leaves nothing half-written."""
    gr = _gradio()
    check_demo_inputs(model, teacher, str(folder))
    from huggingface_hub import SpaceCard, SpaceCardData

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        for package in (sys.modules[__package__], hf_deit_inputs):
            shutil.copytree(Path(package.__file__).parent, staging / package.__name__,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))  # fmt: skip
        model_ref = _place_model(model, staging / "model")
        teacher_ref = _place_model(teacher, staging / "teacher") if teacher else None
        (staging / "app.py").write_text(_app_source(model_ref, teacher_ref))
        # Local version labels (torch's "+cpu") name builds that PyPI does not serve.
        versions = {name: importlib.metadata.version(name).split("+")[0] for name in SPACE_REQUIREMENTS}
        (staging / "requirements.txt").write_text("".join(f"{name}=={version}\n" for name, version in versions.items()))
        hub_ids = [ref for ref in (model_ref, teacher_ref) if ref and not ref.startswith("./")]
        data = SpaceCardData(
            title=title or f"{os.path.basename(os.path.normpath(model))} (distilled DeiT)",
            sdk="gradio", sdk_version=gr.__version__, python_version="{}.{}".format(*sys.version_info[:2]),
            app_file="app.py", license="apache-2.0", models=hub_ids or None, tags=["image-classification", "deit"],
        )  # fmt: skip
        SpaceCard(f"---\n{data.to_yaml()}\n---\n\n{_space_readme(model, teacher)}").save(staging / "README.md")
        if folder.exists():
            folder.rmdir()  # empty (checked above)
        staging.rename(folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _place_model(name: str, destination: Path) -> str:
    """How app.py names a model: "./<destination name>[/file]" once its files are copied there, else its Hub id."""
    source = Path(os.path.expanduser(name))
    if source.is_file():  # a teacher's weights file
        destination.mkdir()
        shutil.copy2(source, destination / source.name)
        return f"./{destination.name}/{source.name}"
    if not source.is_dir():
        return name
    destination.mkdir()
    for path in sorted(source.iterdir()):
        if path.is_file() and any(path.match(pattern) for pattern in MODEL_FILE_PATTERNS):
            shutil.copy2(path, destination / path.name)
    return f"./{destination.name}"


_APP_SOURCE = '''"""hf-deit's demo page (hf_deit.demo, copied beside this file), as scripts/demo.py serves it."""

import os

from hf_deit.demo import serve

HERE = os.path.dirname(os.path.abspath(__file__))
serve({arguments})
'''


def _app_source(model: str, teacher: str | None) -> str:
    def located(ref):  # files copied into the Space are found beside app.py, wherever it is started from
        return f"os.path.join(HERE, {ref[2:]!r})" if ref.startswith("./") else repr(ref)

    return _APP_SOURCE.format(arguments=located(model) + (f", teacher={located(teacher)}" if teacher else ""))


def _space_readme(model: str, teacher: str | None) -> str:
    teacher_name = os.path.basename(os.path.normpath(teacher)) if teacher else None
    teacher_line = f" The teacher, `{teacher_name}`, gives its top-5 too." if teacher else ""
    return f"""# {os.path.basename(os.path.normpath(model))}: a distilled DeiT

Drop an image: the page shows the top-5 classes of the averaged heads (what `pipeline()` returns), of the class head
and of the distillation head, and where the class and distillation tokens look (last-layer attention and attention
rollout, over the image the model saw).{teacher_line}

Written by hf-deit's `scripts/demo.py --write_space`; `app.py` runs the package's `hf_deit.demo` (copied here) as
the local page does. Try it locally with `pip install -r requirements.txt gradio` and `python app.py`; put it on the
Hub with `hf upload <user>/<space> . . --repo-type space`.
"""
