"""Teacher outputs recorded once (scripts/record_teacher.py, hf_deit.teacher_record) and replayed in the teacher's
place (scripts/train.py --teacher_outputs): the same run, step by step, without the teacher; a record of another run
refused before any step, each difference named."""

import json
import logging
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import record_teacher
import torch
import train
from safetensors.torch import load_file
from conftest import SCRIPTS
from test_resume import LAUNCHER, SAVE_STEPS, assert_same_run, finish, kill_group, start, train_command, wait_for
from transformers import ResNetConfig, ResNetForImageClassification

from hf_deit.teacher import TeacherForwardOutput
from hf_deit.teacher_record import RecordedTeacher, RecordMismatchError, RecordPlan, RunViews, _outputs_to_store, top_k_deviation

pytestmark = pytest.mark.filterwarnings("ignore")

STUDENT = "image_size=32,hidden_size=32,num_hidden_layers=2,num_attention_heads=2,patch_size=8"
STEPS = 6


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    return save_small_cnn(tmp_path_factory.mktemp("teacher") / "teacher")


def save_small_cnn(folder, seed: int = 0) -> str:
    """A small CNN of the digits' classes (random weights: what it says is arbitrary, but the same every time)."""
    torch.manual_seed(seed)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=10,
                          id2label={i: str(i) for i in range(10)})  # fmt: skip
    ResNetForImageClassification(config).save_pretrained(folder)
    return str(folder)


def run_flags(output_dir, *extra) -> list[str]:
    """A short run on the digits with mixup/cutmix (views bound to their batch) and half the images unlabelled."""
    return ["--dataset_name", "digits", "--max_eval_samples", "48", "--config_overrides", STUDENT,
            "--max_steps", str(STEPS), "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "16",
            "--logging_steps", "1", "--save_strategy", "no", "--eval_strategy", "steps", "--eval_steps", str(STEPS),
            "--report_to", "none", "--seed", "3", "--bf16", "false", "--output_dir", str(output_dir),
            "--mixup", "0.8", "--cutmix", "1.0", "--labeled_fraction", "0.5",
            "--protect_from_weak_teacher", "false", "--feature_map_distillation_weight", "0", *extra]  # fmt: skip


def trained(output_dir) -> tuple[list[dict], dict]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    logs = [{key: value for key, value in entry.items() if "runtime" not in key and "per_second" not in key}
            for entry in state["log_history"]]  # fmt: skip
    return logs, load_file(output_dir / "model.safetensors")


def record(tmp_path, teacher, *extra, record_flags=()):
    folder = tmp_path / "record"
    record_teacher.main(["--record_dir", str(folder), "--teacher_name_or_path", teacher, *record_flags,
                         *run_flags(tmp_path / "unused", *extra)])  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def hard_record(tmp_path_factory, teacher):
    return record(tmp_path_factory.mktemp("hard"), teacher, "--distillation_type", "hard")


def replay_trainer(*flags):
    groups = train.train_argument_parser().parse_args_into_dataclasses(args=list(flags))
    return train.build_run(*groups)[0]


@pytest.mark.slow
def test_hard_distillation_from_the_record_is_the_live_run_step_by_step(tmp_path, teacher, hard_record):
    folder = hard_record
    assert RecordedTeacher(folder).kinds == ["argmax"]
    train.main(run_flags(tmp_path / "live", "--distillation_type", "hard", "--teacher_name_or_path", teacher))
    train.main(run_flags(tmp_path / "replay", "--distillation_type", "hard", "--teacher_outputs", str(folder)))

    live_logs, live_weights = trained(tmp_path / "live")
    replay_logs, replay_weights = trained(tmp_path / "replay")
    assert len([entry for entry in live_logs if "loss_distillation" in entry]) == STEPS
    assert replay_logs == live_logs  # every step's loss and terms, the evaluation (teacher agreement included)
    evaluation = next(entry for entry in live_logs if "eval_teacher_agreement" in entry)  # from recorded logits too
    assert evaluation in replay_logs
    for name, tensor in live_weights.items():
        assert torch.equal(replay_weights[name], tensor), name


def test_a_record_of_another_run_is_refused_before_any_step_naming_each_difference(tmp_path, hard_record):
    flags = run_flags(tmp_path / "other", "--distillation_type", "hard", "--teacher_outputs", str(hard_record))
    trainer = replay_trainer(*flags, "--seed", "4", "--rand_augment", "5", "--max_train_samples", "1000",
                             "--per_device_train_batch_size", "8", "--max_steps", "400",
                             "--feature_distillation_weight", "0.5")  # fmt: skip
    with pytest.raises(RecordMismatchError) as refusal:
        trainer.train()
    message = str(refusal.value)
    for difference in ("data: recorded", "augmentation: recorded", "NoisyRandAugment", "seed: recorded 3, this run 4",
                       "batch layout", "epochs: this run reads", "the record holds 1",
                       "missing term: the feature term needs the teacher's pooled features"):
        assert difference in message, (difference, message)
    assert trainer.state.global_step == 0 and not list((tmp_path / "other").iterdir())  # nothing trained or written

    # From the command line: the same refusal as an input error, with no traceback, and nothing trained.
    command = [sys.executable, str(SCRIPTS / "train.py"), *run_flags(tmp_path / "cli", "--distillation_type", "hard",
                                                                      "--teacher_outputs", str(hard_record)),
               "--seed", "4"]  # fmt: skip
    refused = subprocess.run(command, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert "train.py: error: The teacher record" in refused.stderr and "seed: recorded 3, this run 4" in refused.stderr
    assert not (tmp_path / "cli" / "model.safetensors").exists()

    # The record's own run is accepted.
    same = replay_trainer(*run_flags(tmp_path / "same", "--distillation_type", "hard", "--teacher_outputs",
                                     str(hard_record)))  # fmt: skip
    assert same.teacher.differences(RunViews(same), same.objective) == []


def test_soft_targets_need_probabilities_and_a_missing_or_interrupted_record_says_what_to_do(tmp_path, hard_record):
    trainer = replay_trainer(*run_flags(tmp_path / "soft", "--distillation_type", "soft", "--teacher_outputs",
                                        str(hard_record)))  # fmt: skip
    with pytest.raises(RecordMismatchError, match="soft distillation needs the teacher's probabilities: record with "
                                                  "--top_k"):  # fmt: skip
        trainer.teacher.check_run(trainer)
    (tmp_path / "interrupted").mkdir()
    (tmp_path / "interrupted" / "train-epoch0000-00000.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="its recording was interrupted; run scripts/record_teacher.py again"):
        RecordedTeacher(tmp_path / "interrupted")


@pytest.mark.slow
def test_soft_distillation_and_every_term_from_all_probabilities_match_within_half_precision(tmp_path, teacher):
    terms = ["--distillation_type", "soft", "--distillation_tau", "2.0", "--attention_distillation_weight", "0.5",
             "--feature_distillation_weight", "0.5", "--feature_map_distillation_weight", "1"]  # fmt: skip
    folder = record(tmp_path, teacher, *terms, record_flags=["--top_k", "all"])
    assert RecordedTeacher(folder).kinds == ["argmax", "top_k", "features", "attention_map", "stage_maps"]
    assert RecordedTeacher(folder).manifest["outputs"]["top_k_deviation"] is None  # all kept: nothing to measure
    # Read where the student runs in bf16 autocast (the default on CPUs with native bf16): float16 maps still read.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        read = RecordedTeacher(folder)._read(0, np.arange(4), ["stage_maps", "features", "attention_map"])
    assert all(len(value) == 4 and value.dtype == torch.float16 for value in read.values())
    train.main(run_flags(tmp_path / "live", *terms, "--teacher_name_or_path", teacher))
    # The teacher given beside the record: the first batches are checked against it.
    train.main(run_flags(tmp_path / "replay", *terms, "--teacher_outputs", str(folder), "--teacher_name_or_path",
                         teacher))  # fmt: skip
    live_logs, live_weights = trained(tmp_path / "live")
    replay_logs, replay_weights = trained(tmp_path / "replay")
    names = ("loss", "loss_cls", "loss_distillation", "loss_attention", "loss_feature", "loss_feature_map")
    for live, replayed in zip(live_logs, replay_logs):
        for name in (name for name in names if name in live):
            assert replayed[name] == pytest.approx(live[name], rel=2e-3, abs=2e-4), (name, live, replayed)
    for name, tensor in live_weights.items():
        assert torch.allclose(replay_weights[name], tensor, rtol=1e-2, atol=1e-4), name


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_top_k_deviation_is_the_distance_between_the_replayed_and_the_live_soft_targets(tau):
    """Top-2 of five probabilities, stored as the recorder stores them: the tail's 0.2 spread evenly over the other
    three classes, compared with the teacher's own at temperature tau, by hand."""
    live = torch.tensor([[0.5, 0.3, 0.1, 0.05, 0.05], [0.05, 0.05, 0.1, 0.3, 0.5]])
    stored = _outputs_to_store(TeacherForwardOutput(logits=live.log()), RecordPlan(epochs=1, top_k=2), None)
    replayed = torch.tensor([[0.5, 0.3, 0.2 / 3, 0.2 / 3, 0.2 / 3], [0.2 / 3, 0.2 / 3, 0.2 / 3, 0.3, 0.5]])
    at_tau = lambda probabilities: (probabilities ** (1 / tau)) / (probabilities ** (1 / tau)).sum(1, keepdim=True)
    p, q = at_tau(live), at_tau(replayed)
    deviation = top_k_deviation(live.log(), stored, tau)
    assert torch.allclose(deviation["mass outside the top k"], torch.tensor([0.2, 0.2]), atol=1e-6)
    assert torch.allclose(deviation["total variation"], 0.5 * (q - p).abs().sum(1), atol=5e-4)
    assert torch.allclose(deviation["soft loss"], (q * (q / p).log()).sum(1) * tau**2 / 5, atol=5e-5)
    assert float(deviation["total variation"][0]) > 0.02  # the flattened tail is a real difference


def test_a_top_k_record_measures_its_deviation_on_every_recorded_view(tmp_path, teacher, caplog):
    caplog.set_level(logging.INFO, logger="hf_deit.recording")
    caplog.set_level(logging.INFO, logger="hf_deit.record_teacher")
    folder = record(tmp_path, teacher, "--distillation_type", "soft", "--distillation_tau", "2.0",
                    "--max_train_samples", "128", record_flags=["--top_k", "3"])  # fmt: skip
    manifest = RecordedTeacher(folder).manifest
    # and when the recording has paid for itself: the recording's seconds over the teacher's, rounded up
    recording = manifest["recording"]
    runs = math.ceil(recording["seconds"] / recording["teacher_seconds"])
    assert runs >= 1 and f"so it pays for itself from the {record_teacher._ordinal(runs)} run" in caplog.text
    deviation = manifest["outputs"]["top_k_deviation"]
    assert deviation["views"] == manifest["recording"]["views"] == 128 and deviation["tau"] == 2.0  # the training views
    for name in ("mass outside the top k", "total variation", "soft loss"):
        assert 0 < deviation[name] < 1, (name, deviation)
    assert "Top-3 of 10 probabilities against the teacher's own" in caplog.text


def two_processes(*train_flags) -> list[str]:
    """scripts/train.py in two gloo processes, as tests/test_resume.py launches it (ACCELERATE_USE_CPU=1)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--main_process_port", "0", "--num_cpu_threads_per_process", "1", str(LAUNCHER), *train_flags]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("repeats", [1, 3])
def test_a_record_made_in_one_process_serves_a_two_process_run_as_the_live_teacher_would(tmp_path, teacher, monkeypatch,
                                                                                         repeats):  # fmt: skip
    """Hard distillation without mixup/cutmix: a record of the views is independent of the batch layout, except that
    repeated augmentation across processes places an image's copies by process (`--record_world_size 2`, still
    recorded in one process)."""
    flags = lambda output_dir, *extra: run_flags(output_dir, "--distillation_type", "hard", "--mixup", "0",
                                                 "--cutmix", "0", "--repeated_augmentation", str(repeats), *extra)
    folder = tmp_path / "record"
    record_teacher.main(["--record_dir", str(folder), "--teacher_name_or_path", teacher, "--record_world_size",
                         "1" if repeats == 1 else "2", *flags(tmp_path / "unused")])  # fmt: skip
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    for name, source in (("live", ["--teacher_name_or_path", teacher]), ("replay", ["--teacher_outputs", str(folder)])):
        run = start(two_processes(*flags(tmp_path / name, *source)), tmp_path / f"{name}.log")
        finish(run, tmp_path / f"{name}.log", timeout=400)

    live_logs, live_weights = trained(tmp_path / "live")
    replay_logs, replay_weights = trained(tmp_path / "replay")
    # `accelerate launch` with two CPU processes trains one model with DDP, not two copies: each card (written by the
    # main process from the trainer's own state) counts both processes' batches of 16.
    for name in ("live", "replay"):
        card = (tmp_path / name / "README.md").read_text()
        assert "| num_processes | 2 |" in card and "| total_train_batch_size | 32 |" in card, name
        assert json.loads((tmp_path / name / "trainer_state.json").read_text())["global_step"] == STEPS
    assert len([entry for entry in live_logs if "loss_distillation" in entry]) == STEPS
    assert replay_logs == live_logs  # every step's losses, and the evaluation
    for name, tensor in live_weights.items():
        assert torch.equal(replay_weights[name], tensor), name


@pytest.mark.slow
def test_a_run_from_a_record_killed_after_a_checkpoint_resumes_to_the_uninterrupted_result(tmp_path, teacher):
    folder = tmp_path / "record"
    distillation = ("--distillation_type", "hard")
    run_flags_of = lambda command: command[command.index("--") + 1 :]
    record_teacher.main(["--record_dir", str(folder), "--teacher_name_or_path", teacher,
                         *run_flags_of(train_command(tmp_path / "unused", extra=distillation))])  # fmt: skip
    from_record = (*distillation, "--teacher_outputs", str(folder))
    reference_dir, run_dir = tmp_path / "reference", tmp_path / "run"
    reference = start(train_command(reference_dir, extra=from_record), tmp_path / "reference.log")
    victim = start(train_command(run_dir, "--slow_steps_after", str(SAVE_STEPS), extra=from_record),
                   tmp_path / "victim.log")  # fmt: skip
    try:
        checkpoint = run_dir / f"checkpoint-{SAVE_STEPS}"
        wait_for(lambda: (checkpoint / "trainer_state.json").exists(), victim, timeout=240)
        kill_group(victim)  # SIGKILL
    finally:
        if victim.poll() is None:
            os.killpg(victim.pid, signal.SIGKILL)
    assert not (run_dir / "model.safetensors").exists(), "the kill came after the run had finished"

    resumed = start(train_command(run_dir, extra=from_record), tmp_path / "resumed.log")  # the same command again
    finish(resumed, tmp_path / "resumed.log", timeout=300)
    finish(reference, tmp_path / "reference.log", timeout=300)
    assert f"Resuming from {checkpoint}" in (tmp_path / "resumed.log").read_text()
    assert_same_run(run_dir, reference_dir)
    assert "eval_teacher_agreement" in json.loads((run_dir / "eval_results.json").read_text())  # the record's teacher


# ---- what a record weighs, and what it is tied to ----


def test_a_record_weighs_what_the_manifest_the_script_and_the_docs_say(tmp_path, teacher, caplog):
    """Every probability, the pooled features and the attention map, with mixup, over one epoch of the digits: the
    bytes on disk (every file, the manifest included) within 5% of the manifest's size, of the size record_teacher.py
    prints, and of the formula of docs/teacher-records.md, whose ImageNet figures are that formula's."""
    from hf_deit.teacher_record import DIGEST_BYTES, bytes_per_view, record_bytes

    caplog.set_level(logging.INFO, logger="hf_deit.record_teacher")
    folder = record(tmp_path, teacher, "--distillation_type", "soft", "--max_steps", "90",
                    record_flags=["--top_k", "all", "--record_features", "true", "--record_attention_map", "true"])
    manifest = RecordedTeacher(folder).manifest
    on_disk = sum(file.stat().st_size for file in folder.iterdir())
    size, per_view = manifest["size"], manifest["outputs"]["bytes_per_view"]
    assert manifest["epochs"] == 1 and per_view == {"argmax": 2, "top_k": 20, "features": 32, "attention_map": 32}
    assert size["training views"] == 1438 and size["evaluation images"] == 48  # dense: every view once
    formula = 86 * size["training views"] + 22 * size["evaluation images"] + DIGEST_BYTES * (1438 + 48)
    assert size["bytes"] == formula
    assert abs(on_disk - formula) / on_disk < 0.05, (on_disk, formula)
    assert f"{size['bytes']} bytes" in caplog.text  # what record_teacher.py prints

    docs = (SCRIPTS.parent / "docs" / "teacher-records.md").read_text()
    no_shapes = {"features": None, "attention_map": None, "stage_maps": None}
    for top_k, views_bytes in ((None, 2), (10, 42)):
        per_view = bytes_per_view(RecordPlan(epochs=300, top_k=top_k), 1000, no_shapes, None)
        assert sum(per_view.values()) == views_bytes
        imagenet = record_bytes(per_view, 1_281_167 * 300, 50_000, 1_281_167 + 50_000)
        assert f"{imagenet / 1e9:.2f} GB" in docs, (imagenet, top_k)


def image_folder(root, images, labels) -> str:
    """`images` (uint8 arrays) as PNG files in one sub-folder per label under `root`."""
    from PIL import Image

    for index, (image, label) in enumerate(zip(images, labels)):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / str(label) / f"{index:03d}.png")
    return str(root)


def test_a_record_is_tied_to_the_images_content_not_to_where_they_lie(tmp_path, teacher, monkeypatch):
    import shutil

    from sklearn.datasets import load_digits
    from PIL import Image

    monkeypatch.setenv("HF_DEIT_DIGEST_CACHE", str(tmp_path / "digests"))
    digits = load_digits()
    images = (digits.images * 16).clip(0, 255).astype("uint8")
    image_folder(tmp_path / "data" / "train", images[:60], digits.target[:60])
    image_folder(tmp_path / "data" / "pool", images[60:80], [0] * 20)
    flags = lambda root, output: ["--train_dir", str(root / "train"), "--unlabeled_train_dir", str(root / "pool" / "0"),
                                  *run_flags(output, "--distillation_type", "hard", "--max_steps", "2")[2:]]
    folder = tmp_path / "record"
    record_teacher.main(["--record_dir", str(folder), "--teacher_name_or_path", teacher,
                         *flags(tmp_path / "data", tmp_path / "unused")])  # fmt: skip

    shutil.move(tmp_path / "data", tmp_path / "moved")  # the same files elsewhere: accepted
    moved = replay_trainer(*flags(tmp_path / "moved", tmp_path / "run"), "--teacher_outputs", str(folder))
    assert moved.teacher.differences(RunViews(moved), moved.objective) == []

    for changed in (tmp_path / "moved" / "train" / "3" / "003.png", tmp_path / "moved" / "pool" / "0" / "007.png"):
        original, pixels = changed.read_bytes(), np.array(Image.open(changed))
        pixels[0, 0] = 255 - pixels[0, 0]  # one pixel, same name, same size of image
        Image.fromarray(pixels).save(changed)
        trainer = replay_trainer(*flags(tmp_path / "moved", tmp_path / "run"), "--teacher_outputs", str(folder))
        with pytest.raises(RecordMismatchError, match=f"1 of .* images differ from the recorded ones .*such as "
                                                      f"{changed}"):  # fmt: skip
            trainer.teacher.check_run(trainer)
        changed.write_bytes(original)


def test_a_record_is_refused_beside_other_teacher_weights_and_names_its_teacher_without_one(tmp_path, teacher,
                                                                                          hard_record):  # fmt: skip
    other = save_small_cnn(tmp_path / "other", seed=1)
    flags = run_flags(tmp_path / "run", "--distillation_type", "hard", "--teacher_outputs", str(hard_record))
    trainer = replay_trainer(*flags, "--teacher_name_or_path", other)
    with pytest.raises(RecordMismatchError, match=r"teacher \(weights_sha256\): recorded .*: the given teacher is not "
                                                  "the recorded one"):  # fmt: skip
        trainer.train()
    assert trainer.state.global_step == 0
    alone = replay_trainer(*flags)
    assert alone.teacher_name == teacher and alone.teacher.report is not None  # the card's teacher, its check


def test_a_record_that_disagrees_with_the_given_teacher_stops_the_first_step(tmp_path, teacher, hard_record):
    from safetensors.torch import save_file

    tampered = tmp_path / "tampered"
    shutil_copytree(hard_record, tampered)
    first = next(tampered.glob("epoch0000-*.safetensors"))
    stored = load_file(first)
    stored["argmax"] = (stored["argmax"] + 1) % 10  # a record corrupted, or made by other weights with the same hash
    save_file(stored, first)
    trainer = replay_trainer(*run_flags(tmp_path / "run", "--distillation_type", "hard", "--teacher_outputs",
                                        str(tampered), "--teacher_name_or_path", teacher))  # fmt: skip
    with pytest.raises(RecordMismatchError, match="is not the given teacher's on this run's views: the teacher's top "
                                                  "class differs on 16 of 16 views"):  # fmt: skip
        trainer.train()
    assert trainer.state.global_step == 0


def shutil_copytree(source, destination):
    import shutil

    shutil.copytree(source, destination)


def test_a_record_of_an_earlier_format_says_to_record_again(tmp_path, hard_record):
    old = tmp_path / "old"
    shutil_copytree(hard_record, old)
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "format": 2}))
    with pytest.raises(ValueError, match="recorded by an earlier version of hf-deit .* must be recorded again"):
        RecordedTeacher(old)


@pytest.mark.slow
def test_a_mixup_record_made_by_two_processes_serves_a_two_process_run_as_the_live_teacher_would(tmp_path, teacher,
                                                                                                monkeypatch):  # fmt: skip
    """Mixup/cutmix views depend on the whole batch: the record is made for the two-process layout, here by two
    recording processes in parallel (each its share, one manifest), and equals one made in a single process."""
    flags = lambda output_dir, *extra: run_flags(output_dir, "--distillation_type", "hard", *extra)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    folder = tmp_path / "record"
    launch = [*two_processes()[:-1], str(SCRIPTS / "record_teacher.py")]
    run = start([*launch, "--record_dir", str(folder), "--teacher_name_or_path", teacher, "--record_world_size", "2",
                 *flags(tmp_path / "unused")], tmp_path / "record.log")  # fmt: skip
    finish(run, tmp_path / "record.log", timeout=400)
    single = tmp_path / "single"
    record_teacher.main(["--record_dir", str(single), "--teacher_name_or_path", teacher, "--record_world_size", "2",
                         *flags(tmp_path / "unused")])  # fmt: skip
    parallel, alone = RecordedTeacher(folder).manifest, RecordedTeacher(single).manifest
    assert parallel["recording"]["processes"] == 2 and parallel["size"] == alone["size"]
    for split, files in alone["shards"].items():
        ours = torch.cat([load_file(folder / file["file"])["argmax"] for file in parallel["shards"][split]])
        theirs = torch.cat([load_file(single / file["file"])["argmax"] for file in files])
        assert torch.equal(ours, theirs), split

    for name, source in (("live", ["--teacher_name_or_path", teacher]), ("replay", ["--teacher_outputs", str(folder)])):
        run = start(two_processes(*flags(tmp_path / name, *source)), tmp_path / f"{name}.log")
        finish(run, tmp_path / f"{name}.log", timeout=400)
    live_logs, live_weights = trained(tmp_path / "live")
    replay_logs, replay_weights = trained(tmp_path / "replay")
    assert len([entry for entry in live_logs if "loss_distillation" in entry]) == STEPS
    assert replay_logs == live_logs
    for name, tensor in live_weights.items():
        assert torch.equal(replay_weights[name], tensor), name
