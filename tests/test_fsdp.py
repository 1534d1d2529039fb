"""Fully sharded training (FSDP2, torch's `fully_shard`) of the distilled student with a teacher, on 2 CPU processes
over gloo: the same loss and update as 1 process, and a saved model that loads.

Why torch's `fully_shard` here and not accelerate's FSDP through the Trainer: accelerate (1.15) turns its FSDP plugin
on only for accelerator devices (CUDA, XPU, NPU, ...). On CPU its state stays MULTI_CPU and `fsdp=...` in
`TrainingArguments` silently trains with DDP (the wrapped model is a `DistributedDataParallel`); the first test
pins that down so the README's claim stays true, and fails the day accelerate shards on CPU. torch itself shards
on CPU over gloo, so the model's side of FSDP (the wrap unit `DistilledDeiTLayer` named in configs/accelerate_fsdp.yaml,
a full state dict that `from_pretrained` loads) is tested with it directly.
"""

import os
import sys
import textwrap

import pytest
import torch

from test_trainer import _mkdir, run_worker, tiny_student

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]

FSDP_WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    import torch.distributed as dist
    sys.path.insert(0, {tests_dir!r})
    from test_trainer import load_digits_tensors, tiny_resnet, tiny_student
    from hf_deit.losses import DistillationLoss

    out = sys.argv[1]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    sharded = world > 1
    if sharded:
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.tensor import DTensor

        dist.init_process_group("gloo")
    rank = dist.get_rank() if sharded else 0
    student, teacher = tiny_student(seed=1), tiny_resnet(seed=3).eval().requires_grad_(False)
    if sharded:  # one FSDP unit per transformer block, then the rest (embeddings, norm, heads): FULL_SHARD
        for block in student.deit.layers:
            fully_shard(block)
        fully_shard(student)
        assert all(isinstance(p, DTensor) for p in student.parameters())
    images, labels = load_digits_tensors()
    images, labels = images[:32].chunk(world)[rank], labels[:32].chunk(world)[rank]  # 16 images each
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    criterion = DistillationLoss(distillation_type="hard")
    outputs = student(pixel_values=images)
    with torch.no_grad():
        teacher_logits = teacher(images).logits
    loss = criterion(outputs.cls_logits, outputs.distillation_logits, labels, teacher_logits).loss
    loss.backward()  # FSDP reduce-scatters the gradients: the mean over both processes' images
    optimizer.step()
    mean_loss = loss.detach().clone()
    if sharded:
        dist.all_reduce(mean_loss)
        mean_loss /= world
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state_dict = get_model_state_dict(student, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        state_dict = student.state_dict()
    if rank == 0:  # a plain model carries the gathered weights: an ordinary folder, whatever the sharding
        from hf_deit import DistilledDeiTForImageClassification

        DistilledDeiTForImageClassification(student.config).save_pretrained(os.path.join(out, "model"),
                                                                            state_dict=state_dict)
        with open(os.path.join(out, "report.json"), "w") as f:
            json.dump(dict(loss=mean_loss.item(), world_size=world), f)
    if sharded:
        dist.destroy_process_group()
    """
)

TRAINER_FSDP_PROBE = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from torch import nn
    sys.path.insert(0, {tests_dir!r})
    from test_trainer import DigitsDataset, args_for, load_digits_tensors, tiny_resnet, tiny_student
    from hf_deit.trainer import DistillationTrainer

    images, labels = load_digits_tensors()
    trainer = DistillationTrainer(
        model=tiny_student(seed=1),
        args=args_for(sys.argv[1], per_device_train_batch_size=16, max_steps=1, ddp_backend="gloo", fsdp=True,
                      fsdp_config=dict(version=2, transformer_layer_cls_to_wrap=["DistilledDeiTLayer"]),
                      distillation_type="hard"),
        train_dataset=DigitsDataset(images[:32], labels[:32]), teacher=tiny_resnet(seed=3).eval(),
    )
    trainer.train()
    if trainer.is_world_process_zero():
        with open(os.path.join(sys.argv[1], "report.json"), "w") as f:
            json.dump(dict(distributed_type=str(trainer.accelerator.distributed_type),
                           wrapper=type(trainer.model_wrapped).__name__), f)
    torch.distributed.destroy_process_group()
    """
)


@pytest.mark.slow
def test_accelerate_trains_with_ddp_when_fsdp_is_asked_for_on_cpu(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(TRAINER_FSDP_PROBE.format(tests_dir=os.path.dirname(__file__)))
    report = run_worker(TORCHRUN + [str(script)], _mkdir(tmp_path / "out"), timeout=480)
    assert report == {"distributed_type": "DistributedType.MULTI_CPU", "wrapper": "DistributedDataParallel"}


@pytest.mark.slow
def test_two_fully_sharded_processes_give_one_process_loss_and_update_and_a_loadable_model(tmp_path):
    from hf_deit import DistilledDeiTForImageClassification

    script = tmp_path / "fsdp_worker.py"
    script.write_text(FSDP_WORKER.format(tests_dir=os.path.dirname(__file__)))
    single = run_worker([sys.executable, str(script)], _mkdir(tmp_path / "single"))
    double = run_worker(TORCHRUN + [str(script)], _mkdir(tmp_path / "double"))

    assert (single["world_size"], double["world_size"]) == (1, 2)
    # Each process averages its 16 images; FSDP averages the gradients: the step on the same 32 images.
    assert double["loss"] == pytest.approx(single["loss"], abs=1e-5)
    one = DistilledDeiTForImageClassification.from_pretrained(tmp_path / "single" / "model")
    sharded = DistilledDeiTForImageClassification.from_pretrained(tmp_path / "double" / "model")
    before = dict(tiny_student(seed=1).named_parameters())
    for name, parameter in sharded.named_parameters():
        torch.testing.assert_close(parameter, dict(one.named_parameters())[name], rtol=1e-4, atol=1e-6, msg=name)
    # The step changed the weights (so the comparison above is of the update, not of the seed).
    assert max((p - before[n]).abs().max().item() for n, p in sharded.named_parameters()) > 1e-3
