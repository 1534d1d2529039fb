"""Parameter-efficient fine-tuning with peft: LoRA on the attention and MLP projections, trained by the
DistillationTrainer with a teacher on CPU, the adapter saved, reloaded onto the base model and merged into it."""

import pytest
import torch
from transformers import AutoModelForImageClassification

from hf_deit import DistilledDeiTForImageClassification
from hf_deit.arguments import DistillationConfig
from hf_deit.trainer import DistillationTrainer
from test_trainer import DigitsDataset, load_digits_tensors, tiny_resnet, tiny_student

peft = pytest.importorskip("peft")

LORA_TARGETS = ["qkv", "o_proj", "fc1", "fc2"]
HEADS = ["cls_classifier", "distillation_classifier"]


def test_lora_distillation_round_trip(tmp_path):
    images, labels = load_digits_tensors()
    train = DigitsDataset(images[:256], labels[:256])
    held_out = images[1500:1508]
    base_folder = tmp_path / "base"
    tiny_student().save_pretrained(base_folder)  # stands for a pretrained checkpoint

    student = DistilledDeiTForImageClassification.from_pretrained(base_folder)
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, modules_to_save=HEADS)
    model = peft.get_peft_model(student, lora)
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable and all("lora_" in name or "modules_to_save" in name for name in trainable)
    # Every targeted projection of every block is adapted.
    adapted = {name.split(".lora_A")[0] for name in trainable if ".lora_A." in name}
    assert len(adapted) == len(LORA_TARGETS) * student.config.num_hidden_layers
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}

    args = DistillationConfig(
        output_dir=str(tmp_path / "run"), max_steps=4, per_device_train_batch_size=32, learning_rate=1e-2,
        use_cpu=True, save_strategy="no", eval_strategy="no", report_to=[], logging_steps=1, warmup_steps=0,
        distillation_type="hard",
    )
    trainer = DistillationTrainer(model=model, args=args, train_dataset=train, teacher=tiny_resnet().eval())
    trainer.train()
    changed = {name for name, parameter in model.named_parameters() if not torch.equal(parameter, before[name])}
    assert changed and changed <= trainable  # the base weights did not move
    assert any("lora_B" in name for name in changed)  # LoRA's B starts at zero: it moved, so the adapter matters
    assert any(key.startswith("loss_distillation") for entry in trainer.state.log_history for key in entry)

    adapter_folder = tmp_path / "adapter"
    trainer.save_model(str(adapter_folder))
    assert (adapter_folder / "adapter_model.safetensors").is_file()
    assert not (adapter_folder / "model.safetensors").exists()  # the adapter only
    model.eval()
    with torch.no_grad():
        expected = model(pixel_values=held_out).logits
        base_logits = DistilledDeiTForImageClassification.from_pretrained(base_folder).eval()(held_out).logits
    assert (expected - base_logits).abs().max() > 1e-4

    base = DistilledDeiTForImageClassification.from_pretrained(base_folder)
    reloaded = peft.PeftModel.from_pretrained(base, adapter_folder)
    merged = reloaded.merge_and_unload().eval()
    assert type(merged) is DistilledDeiTForImageClassification
    assert not any("lora" in name for name, _ in merged.named_parameters())
    with torch.no_grad():
        assert (reloaded.eval()(pixel_values=held_out).logits - expected).abs().max() <= 1e-5
        assert (merged(held_out).logits - expected).abs().max() <= 1e-5

    # The merged model is an ordinary hf-deit model again: saved and loaded by the Auto class.
    merged.save_pretrained(tmp_path / "merged")
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        assert (loaded(held_out).logits - expected).abs().max() <= 1e-5
