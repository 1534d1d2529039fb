"""Fully sharded training (FSDP2) of the distilled student with a teacher, on 2 CPU processes over gloo: the same loss
and update as 1 process, and a saved model that loads.

The first test runs scripts/train.py as a user would (`accelerate launch ... --fsdp full_shard --fsdp_config ...`),
through `DistillationTrainer` and accelerate's FSDP2 path. accelerate (1.15) itself turns FSDP on only for
accelerator devices and on CPU would train with DDP; `DeiTTrainerBase` hands its state the FSDP plugin when FSDP
was asked for on several CPU processes (hf_deit.trainer._shard_on_cpu_when_asked). The second test shards with
torch's `fully_shard` directly, without the Trainer or accelerate: the model's side of FSDP on its own (the wrap
unit `DistilledDeiTLayer` named in configs/accelerate_fsdp.yaml, a full state dict that `from_pretrained` loads).
"""

import json
import os
import sys
import textwrap

import pytest
import torch

from test_trainer import TORCHRUN, _mkdir, run_here, run_worker, tiny_resnet, tiny_student


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
        from hf_deit.distributed import leave_process_group

        leave_process_group()
    """
)

# scripts/train.py as a user runs it, with a callback that records what FSDP did (parameters, shards) after the
# first step, and the model's logits on fixed images before and after training (every process runs that forward
# pass: the sharded model gathers its weights). The main process writes report.json into the output folder.
TRAIN_WITH_RECORD = textwrap.dedent(
    """
    import atexit, json, os, runpy, sys
    import torch, transformers
    sys.path.insert(0, {tests_dir!r})
    from test_fsdp import probe_images
    from test_trainer import gloo_threads
    from train_launcher import ROOT, _add_callback

    # Registered first, so it runs last, after hf_deit's own exit hook.
    atexit.register(lambda: print(f"gloo threads at exit: {{gloo_threads()}}", flush=True))


    class Record(transformers.TrainerCallback):
        report = {{}}

        def logits(self, model):
            was_training = model.training
            with torch.no_grad():
                logits = model.eval()(pixel_values=probe_images()).logits.tolist()
            model.train(was_training)
            return logits

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.report["logits_before"] = self.logits(model)

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 1:
                from torch.distributed.tensor import DTensor

                parameters = dict(model.named_parameters())
                self.report.update(
                    model_class=type(model).__name__, world_size=args.world_size,
                    not_sharded=sorted(name for name, p in parameters.items() if not isinstance(p, DTensor)),
                    local_numel=sum((p.to_local() if isinstance(p, DTensor) else p).numel()
                                    for p in parameters.values()),
                    numel=sum(p.numel() for p in parameters.values()),
                )

        def on_train_end(self, args, state, control, model=None, **kwargs):
            self.report["logits"] = self.logits(model)
            if state.is_world_process_zero:
                with open(os.path.join(args.output_dir, "report.json"), "w") as f:
                    json.dump(self.report, f)


    _add_callback(transformers, Record())
    sys.argv = [str(ROOT / "scripts" / "train.py"), *sys.argv[1:]]
    runpy.run_path(sys.argv[0], run_name="__main__")
    """
)

# The same 64 images in the same order, and nothing random that depends on the number of processes: no drop path, no
# repeated augmentation (multi-process only), the small-image preset (crops seeded by position; no mixup).
TRAIN_ARGS = ["--dataset_name", "digits", "--image_size", "16", "--config_overrides",
              "image_size=16,patch_size=4,hidden_size=32,num_hidden_layers=2,num_attention_heads=2",
              "--drop_path_rate", "0", "--repeated_augmentation", "1", "--distillation_type", "hard",
              "--max_steps", "2", "--warmup_steps", "0", "--learning_rate", "1e-3", "--logging_steps", "1",
              "--eval_strategy", "no", "--save_strategy", "no", "--disable_tqdm", "true",
              "--max_eval_samples", "32"]  # fmt: skip
FSDP_ARGS = ["--fsdp", "full_shard", "--fsdp_config",
             json.dumps(dict(version=2, transformer_layer_cls_to_wrap=["DistilledDeiTLayer"]))]  # fmt: skip
ACCELERATE_TWO_CPU_PROCESSES = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                                "2", "--main_process_port", "0", "--num_cpu_threads_per_process", "1"]  # fmt: skip


def probe_images() -> torch.Tensor:
    return torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.mark.slow
def test_train_script_fully_shards_on_two_cpu_processes_with_one_process_loss_and_a_loadable_model(
    tmp_path, monkeypatch
):
    from transformers import AutoModelForImageClassification

    from hf_deit import DistilledDeiTForImageClassification

    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")  # two gloo processes from `accelerate launch --multi_gpu`
    teacher = tmp_path / "teacher"
    tiny_resnet(seed=3).save_pretrained(teacher)
    script = tmp_path / "train_with_record.py"
    script.write_text(TRAIN_WITH_RECORD.format(tests_dir=os.path.dirname(__file__)))
    flags = [*TRAIN_ARGS, "--teacher_name_or_path", str(teacher)]
    # run_worker appends the output folder to the command: "--output_dir" goes last.
    single = run_worker([sys.executable, str(script), *flags, "--per_device_train_batch_size", "32", "--output_dir"],
                        _mkdir(tmp_path / "single"), timeout=480)  # fmt: skip
    double = run_worker([*ACCELERATE_TWO_CPU_PROCESSES, str(script), *FSDP_ARGS, *flags,
                         "--per_device_train_batch_size", "16", "--output_dir"], _mkdir(tmp_path / "double"),
                        timeout=480)  # fmt: skip

    # Fully sharded: every parameter (the objective's projections too) a DTensor; each process holds about half.
    assert (single["model_class"], double["model_class"]) == (
        "DistilledDeiTForImageClassification", "FSDPDistilledDeiTForImageClassification")  # fmt: skip
    # Both workarounds still needed: accelerate 1.15 left FSDP off on CPU (the line says that hf_deit.distributed's
    # shard_on_cpu_when_asked turned it on), and fully_shard swapped the class (which the model's save_pretrained
    # undoes).
    # When either assertion fails, the library no longer needs the workaround: remove it.
    assert "FSDP2 on 2 CPU processes (gloo): accelerate enables FSDP only on accelerators." in double["output"]
    assert (single["world_size"], double["world_size"]) == (1, 2)
    assert double["not_sharded"] == [] and len(single["not_sharded"]) > 30
    assert double["numel"] == single["numel"] and double["local_numel"] < 0.52 * double["numel"]
    # Each process averages its 16 images, FSDP averages the gradients: the two steps on the same 64 images.
    logged = {run: json.loads((tmp_path / run / "trainer_state.json").read_text())["log_history"][:2]
              for run in ("single", "double")}  # fmt: skip
    for one, two in zip(logged["single"], logged["double"], strict=True):
        for key in ("loss", "loss_cls", "loss_distillation", "loss_feature_map"):
            assert two[key] == pytest.approx(one[key], abs=1e-5), (two["step"], key)
        assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-5), two["step"]

    # The saved folder is an ordinary one (no torch sources copied beside ours; auto_map names our classes) and
    # loads, plainly and as remote code, with the trained sharded model's logits, which are the single process's.
    assert sorted(path.name for path in (tmp_path / "double").glob("*.py")) == [
        "configuration_distilled_deit.py", "modeling_distilled_deit.py"]  # fmt: skip
    trained = torch.tensor(double["logits"])
    torch.testing.assert_close(torch.tensor(single["logits"]), trained, rtol=1e-4, atol=1e-5)
    assert (trained - torch.tensor(double["logits_before"])).abs().max() > 1e-3  # the steps changed the model
    saved = tmp_path / "double"
    for loaded in (DistilledDeiTForImageClassification.from_pretrained(saved),
                   AutoModelForImageClassification.from_pretrained(saved, trust_remote_code=True)):  # fmt: skip
        with torch.no_grad():
            logits = loaded.eval()(pixel_values=probe_images()).logits
        assert torch.isfinite(logits).all()
        torch.testing.assert_close(logits, trained, rtol=1e-5, atol=1e-6)
    # Both ranks left the group with gloo's threads joined, although the sharded model's device mesh is cached by
    # DTensor for the life of the process (hf_deit.distributed).
    assert double["gloo_threads_at_exit"] == [0, 0]


@pytest.mark.slow
def test_two_fully_sharded_processes_give_one_process_loss_and_update_and_a_loadable_model(tmp_path):
    from hf_deit import DistilledDeiTForImageClassification

    script = tmp_path / "fsdp_worker.py"
    script.write_text(FSDP_WORKER.format(tests_dir=os.path.dirname(__file__)))
    single = run_here(script, _mkdir(tmp_path / "single"))
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
