"""Learning from unlabelled images: the collator's labelled mask and mixing rule, the unlabelled pools, and the
targets a mixed labelled/unlabelled batch gets in DistillationTrainer."""

import numpy as np
import pytest
import torch
from datasets import concatenate_datasets
from PIL import Image
from transformers import ResNetConfig, ResNetForImageClassification

from hf_deit import DistilledDeiTConfig, DistilledDeiTForImageClassification
from hf_deit.data import MixupCutmixCollator, load_embedded_dataset, load_unlabeled_images, split_labeled
from hf_deit.losses import DistillationLoss
from hf_deit.arguments import DistillationConfig
from hf_deit.trainer import DistillationTrainer


def _examples(labels, size=8):
    generator = torch.Generator().manual_seed(1)
    return [{"pixel_values": torch.randn(3, size, size, generator=generator), "labels": label} for label in labels]


def test_unmixed_batch_carries_the_mask_and_keeps_minus_one():
    batch = MixupCutmixCollator(4, mixup_alpha=0.0, cutmix_alpha=0.0)(_examples([2, -1, None, 0]))
    assert batch["labels"].tolist() == [2, -1, -1, 0]
    assert batch["labeled"].tolist() == [True, False, False, True]
    assert "labeled" not in MixupCutmixCollator(4, mixup_alpha=0.0, cutmix_alpha=0.0)(_examples([2, 1]))


def test_mixed_row_is_ground_truth_only_when_both_partners_are_labelled():
    # Row i mixes with row 3 - i. Rows 0/3 pair labelled with labelled; rows 1/2 pair labelled with unlabelled.
    collator = MixupCutmixCollator(4)
    examples = _examples([0, 1, -1, 3])
    pixel_values = torch.stack([example["pixel_values"] for example in examples])
    mixed_images, soft = collator.mix(pixel_values, torch.tensor([0, 1, 0, 3]), 0.7, use_cutmix=False)
    torch.manual_seed(0)
    batch = collator(examples)
    assert batch["labeled"].tolist() == [True, False, False, True]
    assert torch.equal(batch["labels"][1], torch.zeros(4)) and torch.equal(batch["labels"][2], torch.zeros(4))
    lam = batch["labels"][0, 0].item()  # row 0 = lam * class 0 + (1 - lam) * class 3
    assert 0 < lam < 1 and batch["labels"][0].tolist() == pytest.approx([lam, 0, 0, 1 - lam])
    assert torch.allclose(soft[0], torch.tensor([0.7, 0, 0, 0.3]))  # the mixing itself is unchanged
    assert mixed_images.shape == batch["pixel_values"].shape


def test_a_batch_left_unmixed_keeps_an_unlabelled_row_unlabelled_only():
    batch = MixupCutmixCollator(3, prob=1e-9)(_examples([0, -1, 2]))  # lambda 1: no mixing
    assert batch["labeled"].tolist() == [True, False, True]
    assert batch["labels"].tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]


def test_labeled_fraction_and_pools_concatenate_with_the_labelled_split(tmp_path):
    digits = load_embedded_dataset("digits")["train"]
    labeled, unlabeled = split_labeled(digits, 0.1, seed=0)
    assert len(labeled) == pytest.approx(0.1 * len(digits), abs=10) and set(unlabeled["label"]) == {-1}
    # An image folder without classes, and an embedded set used as a pool.
    for index in range(3):
        Image.fromarray(np.full((8, 8), 40 * index, dtype=np.uint8)).save(tmp_path / f"img{index}.png")
    folder_pool = load_unlabeled_images(digits.features["label"], train_dir=str(tmp_path))
    named_pool = load_unlabeled_images(digits.features["label"], dataset_name="mnist", max_samples=20)
    assert len(folder_pool) == 3 and len(named_pool) == 20
    for pool in (folder_pool, named_pool):
        assert set(pool["label"]) == {-1} and pool.features["label"] == digits.features["label"]
    train = concatenate_datasets([labeled, unlabeled, folder_pool, named_pool])
    assert len(train) == len(digits) + 23 and train[len(digits)]["image"].size == (8, 8)
    with pytest.raises(ValueError, match="exactly one"):
        load_unlabeled_images(digits.features["label"])


class _Batch(torch.utils.data.Dataset):
    def __init__(self, examples):
        self.examples = examples

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, index):
        return self.examples[index]


def test_trainer_gives_a_mixed_batch_the_described_targets(tmp_path):
    torch.manual_seed(0)
    student = DistilledDeiTForImageClassification(
        DistilledDeiTConfig(image_size=8, patch_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            num_labels=4, drop_path_rate=0.0)  # fmt: skip
    )
    teacher = ResNetForImageClassification(
        ResNetConfig(embedding_size=8, hidden_sizes=[8], depths=[1], layer_type="basic", num_labels=4)
    ).eval()
    collator = MixupCutmixCollator(4)
    args = DistillationConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, save_strategy="no",
                              eval_strategy="no", distillation_type="hard", pseudo_label_threshold=0.0,
                              feature_map_distillation_weight=0.0)  # fmt: skip
    trainer = DistillationTrainer(model=student, args=args, train_dataset=_Batch(_examples([0, 1, -1, 3])),
                                  data_collator=collator, teacher=teacher)  # fmt: skip
    torch.manual_seed(0)
    batch = collator(_examples([0, 1, -1, 3]))
    student.train()
    loss = trainer.compute_loss(student, dict(batch))

    # The same loss by hand: labelled rows 0 and 3 keep their mixed ground truth; rows 1 and 2 (mixed with the
    # unlabelled image) learn the teacher's argmax on their mixed image, smoothed; the dist head learns the
    # teacher's argmax everywhere.
    with torch.no_grad():
        teacher_logits = teacher(batch["pixel_values"]).logits
    outputs = student(batch["pixel_values"])
    targets = batch["labels"].clone()
    for row in (1, 2):
        targets[row] = torch.zeros(4).index_fill(0, teacher_logits[row].argmax(), 1.0)
    targets = targets * 0.9 + 0.1 / 4  # label smoothing 0.1 (DistillationConfig's default), on every row
    cls = torch.sum(-targets * outputs.cls_logits.log_softmax(-1), -1).mean()
    dist = torch.nn.functional.cross_entropy(outputs.distillation_logits, teacher_logits.argmax(-1))
    assert loss.item() == pytest.approx((0.5 * cls + 0.5 * dist).item(), rel=1e-5)
    assert isinstance(trainer.distillation_loss, DistillationLoss)


def test_trainer_without_a_teacher_refuses_unlabelled_batches(tmp_path):
    student = DistilledDeiTForImageClassification(
        DistilledDeiTConfig(image_size=8, patch_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            num_labels=4)  # fmt: skip
    )
    args = DistillationConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, save_strategy="no",
                              eval_strategy="no", distillation_type="none")
    trainer = DistillationTrainer(model=student, args=args)
    batch = MixupCutmixCollator(4, mixup_alpha=0.0, cutmix_alpha=0.0)(_examples([0, -1]))
    with pytest.raises(ValueError, match="teacher"):
        trainer.compute_loss(student.train(), batch)
