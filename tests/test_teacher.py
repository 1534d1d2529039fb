"""Teacher loading, label-space checks and the on-the-fly input adapter."""

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BitImageProcessor, GPT2Config, ResNetConfig, ResNetForImageClassification

from hf_deit import DistilledDeiTConfig
from hf_deit.teacher import (
    Teacher,
    TeacherInputAdapter,
    TeacherPreprocessing,
    check_label_space,
    load_teacher,
    teacher_preprocessing,
)

sys.path.insert(0, str(Path(__file__).parent))

NAMES = ["cat", "dog", "bird"]


def config_with(names):
    return DistilledDeiTConfig(num_labels=len(names), id2label=dict(enumerate(names)))


def tiny_resnet(names, num_channels=3):
    config = ResNetConfig(
        num_channels=num_channels, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
        num_labels=len(names), id2label=dict(enumerate(names)),
    )
    return ResNetForImageClassification(config).eval()


# ---- label space ----

def test_same_names_in_same_order_need_nothing():
    assert check_label_space(config_with(NAMES), config_with(NAMES)) is None


def test_default_names_are_not_compared():
    assert check_label_space(config_with(NAMES), DistilledDeiTConfig(num_labels=3)) is None


def test_permuted_names_give_the_order_that_reorders_teacher_logits():
    teacher_names = ["bird", "cat", "dog"]
    order = check_label_space(config_with(NAMES), config_with(teacher_names))
    teacher_logits = torch.tensor([[10.0, 20.0, 30.0]])  # bird 10, cat 20, dog 30
    assert teacher_logits[:, order].tolist() == [[20.0, 30.0, 10.0]]  # cat, dog, bird


def test_different_class_count_is_an_error():
    with pytest.raises(ValueError, match="teacher predicts 4 classes, the student 3"):
        check_label_space(config_with(NAMES), config_with(NAMES + ["fish"]))


def test_different_names_are_an_error_naming_them():
    with pytest.raises(ValueError, match="only the student has \\['bird'\\], only the teacher has \\['fish'\\]"):
        check_label_space(config_with(NAMES), config_with(["cat", "dog", "fish"]))


# ---- input adapter ----

def test_adapter_is_exact_identity_when_nothing_differs():
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    adapter = TeacherInputAdapter(mean, std, TeacherPreprocessing(mean, std, image_size=(16, 16), num_channels=3))
    x = torch.randn(2, 3, 16, 16)
    assert adapter(x) is x
    assert TeacherInputAdapter().is_identity and TeacherInputAdapter()(x) is x


def test_adapter_renormalises_to_the_teacher_statistics():
    raw = torch.rand(2, 3, 8, 8)
    s_mean, s_std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    t_mean, t_std = torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.5, 0.5, 0.5])
    student_batch = (raw - s_mean[:, None, None]) / s_std[:, None, None]
    teacher = TeacherPreprocessing(t_mean.tolist(), t_std.tolist())
    adapter = TeacherInputAdapter(s_mean.tolist(), s_std.tolist(), teacher)
    expected = (raw - 0.5) / 0.5
    torch.testing.assert_close(adapter(student_batch), expected, rtol=0, atol=1e-5)


def test_adapter_resizes_antialiased_to_the_teacher_size():
    x = torch.randn(2, 3, 32, 32)
    out = TeacherInputAdapter(teacher=TeacherPreprocessing(image_size=(16, 16), interpolation="bilinear"))(x)
    assert out.shape == (2, 3, 16, 16)
    # The adapter is exactly torch's antialiased resize; downsampling a linear ramp keeps its mean.
    torch.testing.assert_close(out, F.interpolate(x, size=(16, 16), mode="bilinear", antialias=True))
    ramp = torch.linspace(0, 1, 32).expand(1, 3, 32, 32)
    resized = TeacherInputAdapter(teacher=TeacherPreprocessing(image_size=(16, 16)))(ramp)
    assert resized.mean().item() == pytest.approx(0.5, abs=1e-3)


def test_adapter_rejects_a_channel_mismatch():
    with pytest.raises(ValueError, match="expects 1-channel images, the student's batch has 3"):
        TeacherInputAdapter(teacher=TeacherPreprocessing(num_channels=1))(torch.zeros(1, 3, 8, 8))


# ---- loading ----

def test_modules_returning_tensors_or_logits_are_accepted():
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3))
    x = torch.randn(2, 3, 4, 4)
    assert load_teacher(linear) is linear
    assert Teacher(linear).logits(x).shape == (2, 3)
    resnet = tiny_resnet(NAMES)
    torch.testing.assert_close(Teacher(resnet).logits(x), resnet(x).logits)
    with pytest.raises(ValueError, match="must return logits"):
        Teacher(nn.Flatten(0)).logits(x)
    # A plain module is given the pixels alone: asked for maps, it says what it lacks (not a TypeError).
    with pytest.raises(ValueError, match="returns no spatial stage outputs"):
        Teacher(linear)(x, stage_maps=True)
    with pytest.raises(ValueError, match="gives neither attention weights nor CNN stage outputs"):
        Teacher(linear)(x, attention_map=True)


def test_local_transformers_teacher_and_its_preprocessing(tmp_path):
    teacher = tiny_resnet(["bird", "cat", "dog"])
    teacher.save_pretrained(tmp_path)
    BitImageProcessor(
        size={"shortest_edge": 20}, crop_size={"height": 16, "width": 16}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(tmp_path)
    loaded = load_teacher(str(tmp_path))
    torch.testing.assert_close(loaded.state_dict()["classifier.1.weight"], teacher.state_dict()["classifier.1.weight"])
    assert check_label_space(config_with(NAMES), loaded.config).tolist() == [1, 2, 0]
    expected = teacher_preprocessing(str(tmp_path))
    assert (tuple(expected.image_mean), tuple(expected.image_std)) == ((0.5,) * 3, (0.5,) * 3)
    assert expected.image_size == (16, 16)


def tiny_timm_vit(timm, num_classes=3):
    """A random timm ViT whose `model_args` (width, depth, image size) must be honoured for its weights to load."""
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=num_classes, embed_dim=32,
                             depth=1, num_heads=2, img_size=32, patch_size=8).eval()


def test_timm_save_for_hf_folder_loads_through_the_timm_wrapper(tmp_path):
    """timm's Hub layout as `save_for_hf` writes it: `model_args` holds `num_classes`, which transformers' wrapper
    also passes (TypeError: got multiple values for 'num_classes'); load_teacher drops the duplicate."""
    timm = pytest.importorskip("timm")
    from timm.models import save_for_hf

    model = tiny_timm_vit(timm)
    save_for_hf(model, tmp_path, safe_serialization=True)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_args"]["num_classes"] == 3 and config["model_args"]["embed_dim"] == 32
    from transformers import AutoModelForImageClassification

    with pytest.raises(TypeError, match="multiple values for keyword argument 'num_classes'"):
        AutoModelForImageClassification.from_pretrained(tmp_path)  # transformers alone cannot load it

    loaded = load_teacher(str(tmp_path))
    assert type(loaded).__name__ == "TimmWrapperForImageClassification" and loaded.config.num_labels == 3
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (Teacher(loaded.eval()).logits(x) - model(x)).abs().max() <= 1e-6
    expected = teacher_preprocessing(str(tmp_path))
    assert expected.image_size == (32, 32)
    assert tuple(expected.image_mean) == tuple(model.pretrained_cfg["mean"])


def test_timm_folder_with_label_names(tmp_path):
    timm = pytest.importorskip("timm")
    from timm.models import save_for_hf

    model = timm.create_model("resnet10t", num_classes=3, pretrained=False)
    save_for_hf(model, tmp_path)  # a pytorch_model.bin this time
    config = json.loads((tmp_path / "config.json").read_text())
    config["label_names"] = ["bird", "cat", "dog"]
    (tmp_path / "config.json").write_text(json.dumps(config))

    loaded = load_teacher(str(tmp_path))
    assert check_label_space(config_with(NAMES), loaded.config).tolist() == [1, 2, 0]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(Teacher(loaded.eval()).logits(x), model.eval()(x))


def test_timm_teacher_by_hub_id(tmp_path, monkeypatch):
    """A timm model by Hub id (a random-weight copy served by the loopback Hub, as `timm/...` repos are laid out)."""
    timm = pytest.importorskip("timm")
    from timm.models import save_for_hf

    from hub_server import loopback_hub, use_in_this_process

    model = tiny_timm_vit(timm)
    save_for_hf(model, tmp_path / "repo", safe_serialization=True)
    with loopback_hub(tmp_path / "hub") as hub:
        hub.publish("timm/vit_tiny_test.random", tmp_path / "repo")
        use_in_this_process(hub, monkeypatch, tmp_path / "cache")
        loaded = load_teacher("timm/vit_tiny_test.random")
        expected = teacher_preprocessing("timm/vit_tiny_test.random")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (Teacher(loaded.eval()).logits(x) - model(x)).abs().max() <= 1e-6
    assert expected.image_size == (32, 32)


def test_transformers_teacher_by_hub_id(tmp_path, monkeypatch):
    from hub_server import loopback_hub, use_in_this_process

    teacher = tiny_resnet(NAMES)
    teacher.save_pretrained(tmp_path / "repo")
    with loopback_hub(tmp_path / "hub") as hub:
        hub.publish("someone/resnet-tiny", tmp_path / "repo")
        use_in_this_process(hub, monkeypatch, tmp_path / "cache")
        loaded = load_teacher("someone/resnet-tiny")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x).logits, teacher(x).logits)
    assert loaded.config.id2label == dict(enumerate(NAMES))


@pytest.mark.parametrize("file_name", ["resnet10t-0123abcd.pth", "resnet10t.safetensors", "weights.pth"])
def test_timm_model_name_with_local_weights(tmp_path, file_name):
    """A timm weights file, its architecture named by the file (as the DeiT authors ship regnety_160-a5fe301d.pth)
    or by `timm_model_name`; wrapped so that its class count and timm's preprocessing are known."""
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", num_classes=4, pretrained=False).eval()
    path = tmp_path / file_name
    if path.suffix == ".safetensors":
        save_file(model.state_dict(), path)
    else:
        torch.save({"model": model.state_dict()}, path)  # nested, as training checkpoints keep it

    if file_name == "weights.pth":
        with pytest.raises(ValueError, match="not a timm model name.*timm_model_name"):
            load_teacher(str(path))
        loaded = load_teacher(str(path), timm_model_name="resnet10t")
    else:
        loaded = load_teacher(str(path))
    assert type(loaded).__name__ == "TimmWrapperForImageClassification" and loaded.config.num_labels == 4
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(Teacher(loaded).logits(x), model(x))
    expected = teacher_preprocessing(str(path), module=loaded)
    assert expected.image_size == tuple(model.pretrained_cfg["input_size"][1:])
    assert tuple(expected.image_mean) == tuple(model.pretrained_cfg["mean"])


def test_timm_weights_of_another_architecture_are_named(tmp_path):
    timm = pytest.importorskip("timm")
    torch.save(tiny_timm_vit(timm).state_dict(), tmp_path / "resnet10t.pth")
    with pytest.raises(ValueError, match="no fc.weight, the classifier of timm's 'resnet10t'"):
        load_teacher(str(tmp_path / "resnet10t.pth"))


def test_a_model_that_is_not_an_image_classifier_is_refused(tmp_path):
    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not an image classifier"):
        load_teacher(str(tmp_path))


def test_the_teacher_stays_frozen_whatever_its_parent_does():
    teacher = Teacher(tiny_resnet(NAMES).train())
    assert not teacher.model.training and not any(p.requires_grad for p in teacher.parameters())
    parent = nn.ModuleDict({"teacher": teacher}).train()
    assert parent.training and not teacher.training and not teacher.model.training
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(teacher.logits(x), teacher.model(x).logits)  # eval-mode batch norm: deterministic


@pytest.mark.slow  # compiles with inductor
def test_the_compiled_teacher_runs_with_its_weights_frozen_into_the_graph():
    from torch._inductor.utils import run_and_get_code

    teacher = Teacher(tiny_resnet(NAMES))
    x = torch.randn(2, 3, 16, 16)
    expected = teacher.logits(x)
    teacher.compile()
    logits, (code, *_) = run_and_get_code(teacher.logits, x)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    # Weights as constants (batch norm folded into the convolutions, weights packed), not graph inputs.
    assert "_frozen_param" in code


def test_the_teacher_reorders_its_classes_into_the_students_by_name(tmp_path):
    model = tiny_resnet(["dog", "bird", "cat"]).eval()
    model.save_pretrained(tmp_path)
    teacher = Teacher.load(str(tmp_path), config_with(NAMES))
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        own = model(x).logits
    torch.testing.assert_close(teacher.logits(x), own[:, [["dog", "bird", "cat"].index(name) for name in NAMES]])


def test_imagenet_wordnet_folders_match_a_timm_imagenet_teacher_by_description():
    """An ImageNet folder names its classes n01440764 ...; a timm ImageNet teacher 'tench, Tinca tinca' ...: the same
    1000 classes, matched through timm's ImageNet class list (and re-ordered when the folders are listed otherwise)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    wordnet_ids = list(info.label_names())
    descriptions = [info.label_descriptions(as_dict=True)[wordnet_id] for wordnet_id in wordnet_ids]
    teacher = config_with(descriptions)  # what transformers' TimmWrapperConfig names an ImageNet model's classes
    assert len(set(descriptions)) < 1000  # two 'crane's, two 'maillot's: matching by description alone is ambiguous
    assert check_label_space(config_with(wordnet_ids), teacher) is None  # sorted folders: ImageNet's own order
    swapped = [wordnet_ids[1], wordnet_ids[0], *wordnet_ids[2:]]
    assert check_label_space(config_with(swapped), teacher)[:3].tolist() == [1, 0, 2]
    # Ten of them (an ImageNet subset): a clear word on why this teacher cannot teach them as it is.
    with pytest.raises(ValueError, match="ImageNet WordNet ids: a subset of ImageNet's 1000 classes"):
        check_label_space(config_with(wordnet_ids[:10]), teacher)
    # Other names are still compared as they are.
    with pytest.raises(ValueError, match="class names are not the student's"):
        check_label_space(config_with(["n99999999", *wordnet_ids[1:]]), teacher)
    with pytest.raises(ValueError, match="class names are not the student's"):
        check_label_space(config_with(wordnet_ids), config_with([f"class {i}" for i in range(1000)]))
