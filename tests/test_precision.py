"""The default training precision: bf16 autocast only where it is faster (hf_deit.precision), an explicit choice always
wins. This machine has no AMX; the AMX case is checked by presenting its CPU flag (the only thing that differs)."""

import pytest
from transformers import HfArgumentParser

import hf_deit.precision as precision
from hf_deit import DistilledDeiTConfig, DistilledDeiTForImageClassification
from hf_deit.arguments import DistillationConfig
from hf_deit.run import size_precision
from hf_deit.trainer import DistillationTrainer


def parse(tmp_path, *flags) -> DistillationConfig:
    (args,) = HfArgumentParser(DistillationConfig).parse_args_into_dataclasses(
        args=["--output_dir", str(tmp_path), "--use_cpu", "true", "--report_to", "none", "--eval_strategy", "no",
              "--distillation_type", "none", *flags]
    )
    return args


@pytest.fixture
def amx_cpu(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "amx_tile", "amx_bf16"})


def test_this_machine_reads_its_cpu_flags():
    flags = precision.cpu_flags()
    with open("/proc/cpuinfo") as cpuinfo:
        assert ("amx_bf16" in cpuinfo.read()) == ("amx_bf16" in flags)
    assert precision.bf16_is_faster("cpu") == bool(flags & {"amx_bf16", "avx512_bf16"})  # native bf16 kernels


def test_bf16_only_for_wide_enough_models_on_native_bf16_cpus(amx_cpu):
    assert precision.bf16_is_faster("cpu", hidden_size=192)  # DeiT-Tiny
    assert not precision.bf16_is_faster("cpu", hidden_size=128)  # the width-128 digits student: slower in bf16
    assert precision.bf16_is_faster("cpu")  # a CNN


def test_no_bf16_without_native_kernels(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "fma"})
    assert not precision.bf16_is_faster("cpu", hidden_size=768)
    assert not precision.bf16_is_faster("cpu")


def test_unset_bf16_is_settled_by_the_trainer_before_its_accelerator(amx_cpu, tmp_path):
    args = parse(tmp_path)
    assert args.bf16 is None and args.mixed_precision == "no"
    config = DistilledDeiTConfig(image_size=32, patch_size=8, hidden_size=192, num_hidden_layers=1, num_attention_heads=3,
                                 num_labels=10)  # fmt: skip
    trainer = DistillationTrainer(model=DistilledDeiTForImageClassification(config), args=args)
    assert trainer.args.bf16 is True and trainer.accelerator.mixed_precision == "bf16"

    narrow = DistilledDeiTConfig(image_size=32, patch_size=8, hidden_size=128, num_hidden_layers=1, num_attention_heads=2,
                                 num_labels=10)  # fmt: skip
    trainer = DistillationTrainer(model=DistilledDeiTForImageClassification(narrow), args=parse(tmp_path))
    assert trainer.args.bf16 is False and trainer.accelerator.mixed_precision == "no"


def test_an_explicit_choice_wins(amx_cpu, tmp_path, monkeypatch):
    assert size_precision(parse(tmp_path, "--bf16", "false"), hidden_size=384) is False
    assert size_precision(parse(tmp_path, "--bf16", "true"), hidden_size=64) is True
    monkeypatch.setattr(precision, "cpu_flags", lambda: set())
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # accelerate launch --mixed_precision bf16
    args = parse(tmp_path)
    assert size_precision(args, hidden_size=64) is True and args.mixed_precision == "bf16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert size_precision(parse(tmp_path), hidden_size=768) is False


def test_this_machine_trains_the_digits_student_in_float32(tmp_path):
    # Whatever the CPU, a 128-wide student (narrower than DeiT-Tiny) is never switched to bf16 on CPU.
    args = parse(tmp_path)
    assert size_precision(args, hidden_size=128) is False and args.mixed_precision == "no"


def test_the_log_says_the_precision_used_even_when_accelerate_launch_said_no(amx_cpu, tmp_path, monkeypatch, caplog):
    """`accelerate launch` without --mixed_precision warns that it set 'no' and exports it; the default choice is still
    ours, and the log line of the sizing (hf_deit.run.size_run) says which way it went."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    config = DistilledDeiTConfig(image_size=32, patch_size=8, hidden_size=192, num_hidden_layers=1, num_attention_heads=3,
                                 num_labels=10)  # fmt: skip
    with caplog.at_level("INFO", logger="hf_deit.run"):
        trainer = DistillationTrainer(model=DistilledDeiTForImageClassification(config), args=parse(tmp_path))
    assert trainer.accelerator.mixed_precision == "bf16"
    assert "Precision: bf16 autocast (chosen as faster on this hardware" in caplog.text and "--bf16 false" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="hf_deit.run"):
        DistillationTrainer(model=DistilledDeiTForImageClassification(config), args=parse(tmp_path, "--bf16", "false"))
    assert "Precision: float32 (no mixed precision)." in caplog.text
