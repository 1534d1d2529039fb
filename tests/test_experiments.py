"""The experiment scripts end to end in their quick modes (real MNIST subsets, real training runs), and what they share
(`scripts/experiment_common.py`): side-by-side runs, progress, and one teacher record for the students that share it."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


@pytest.mark.slow
def test_quick_data_efficiency_run_writes_table_json_and_plot(tmp_path):
    import experiment_data_efficiency as module  # scripts/ is on the path (conftest)

    results = module.main(["--output_dir", str(tmp_path), "--quick", "--teacher_record", "always"])

    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    # 25%: teacher + 5 students; 100%: teacher + the 3 variants without a pool.
    assert [(r["fraction"], r["variant"]) for r in runs] == [
        (0.25, "teacher"), (0.25, "none"), (0.25, "hard"), (0.25, "hard+attn"), (0.25, "hard+pool"),
        (0.25, "hard+attn+pool"), (1.0, "teacher"), (1.0, "none"), (1.0, "hard"), (1.0, "hard+attn"),
    ]  # fmt: skip
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in runs)
    table = (tmp_path / "results.md").read_text()
    assert "| 25% |" in table and "| 100% |" in table and "n/a" in table and results["table"] in table
    with Image.open(tmp_path / "accuracy_vs_labels.png") as plot:
        assert plot.format == "PNG" and plot.width > 300

    # The students that see the same views trained from one record of their teacher: hard with hard+attn, and the two
    # pool variants (their pool changes the views).
    served = json.loads((tmp_path / "runs" / "labels0.25_seed0" / "records" / "records.json").read_text())
    assert sorted(entry["students"] for entry in served.values()) == [
        ["hard", "hard+attn"], ["hard+pool", "hard+attn+pool"]]  # fmt: skip
    cost = json.loads((tmp_path / "results.json").read_text())["distillation_cost"]
    assert cost["distilled_students"] == cost["students_from_records"] == 6 and cost["records"] == 3
    assert "6 of them from 3 shared teacher records" in table

    # Started again, it trains nothing and summarises what is on disk: an interrupted grid resumes, parallel seeds add up.
    stamps = {path: path.stat().st_mtime_ns for path in (tmp_path / "runs").glob("*/*/model.safetensors")}
    stamps.update({path: path.stat().st_mtime_ns for path in (tmp_path / "runs").glob("*/records/*/manifest.json")})
    again = module.main(["--output_dir", str(tmp_path), "--quick"])
    assert again["runs"] == results["runs"]
    assert stamps and all(path.stat().st_mtime_ns == stamp for path, stamp in stamps.items())
    assert module.main(["--output_dir", str(tmp_path), "--quick", "--summary_only"])["runs"] == results["runs"]
    # A cell some seeds have not reached yet says so.
    assert module._mean_std([0.5, 0.7], seeds=2) == "60.0 ± 14.1"
    assert module._mean_std([0.5], seeds=2) == "50.0 (1 of 2 seeds)" and module._mean_std([], seeds=2) == "n/a"


@pytest.mark.slow
def test_quick_recipe_study_runs_both_arms_and_reports_the_difference_per_seed(tmp_path):
    import experiment_recipe as module

    module.main(["--output_dir", str(tmp_path), "--quick", "--seeds", "0", "--teacher_record", "always"])
    found = module.main(["--output_dir", str(tmp_path), "--quick", "--seeds", "1", "--teacher_record", "always"])

    assert set(found["runs"]["quick"]) == {"none", "hard", "hard+fmap"}
    # hard and hard+fmap trained from one record of their teacher; none, which does not use it, with the teacher.
    for seed in (0, 1):
        served = json.loads((tmp_path / f"seed{seed}" / "records" / "records.json").read_text())
        assert [entry["students"] for entry in served.values()] == [["quick / hard", "quick / hard+fmap"]]
    assert found["distillation_cost"]["students_from_records"] == found["distillation_cost"]["distilled_students"] == 4
    assert all(set(by_seed) == {0, 1} for by_seed in found["runs"]["quick"].values())
    assert set(found["teachers"]["teacher28"]) == {0, 1}
    distilled = found["runs"]["quick"]["hard+fmap"][0]
    assert "train_loss" in distilled and 0.0 <= distilled["eval_accuracy"] <= 1.0
    table = (tmp_path / "results.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| quick | hard+fmap |"))
    assert "(seeds 0, 1)" in row and row.count("/") >= 3  # per-seed accuracies and per-seed differences to none
    with Image.open(tmp_path / "results.png") as plot:
        assert plot.format == "PNG"
    with pytest.raises(SystemExit, match="Unknown rows"):
        module.main(["--output_dir", str(tmp_path), "--quick", "--rows", "nope"])


@pytest.mark.slow
def test_quick_past_teacher_study_compares_each_student_with_its_seeds_teacher_and_draws_every_head(tmp_path):
    import experiment_past_teacher as module

    results = module.main(["--output_dir", str(tmp_path), "--quick", "--seeds", "0", "--recipes", "light", "mixed"])
    assert set(results) == {"0"} and set(results["0"]) == {"teacher", "light", "mixed"}
    mixed = results["0"]["mixed"]
    assert set(mixed["curves"]) == set(module.HEADS)
    assert [step for step, _ in mixed["curves"]["averaged heads"]] == [1, 2, 3, 4]  # every step of the quick run
    assert "--mixup 0.8" in " ".join(module.student_argv(tmp_path, 0, "mixed", module.parse_args([])))
    table = (tmp_path / "results.md").read_text()
    teacher = 100 * results["0"]["teacher"]["eval_accuracy"]
    row = next(line for line in table.splitlines() if line.startswith("| 0 | mixed |"))
    assert f"| {teacher:.1f} | {100 * mixed['eval_accuracy']:.1f} |" in row
    assert f"| {100 * mixed['eval_accuracy'] - teacher:+.1f} |" in row
    assert "Table written on" in table and ", commit " in table  # the machine and code behind the figures
    with Image.open(tmp_path / "learning_curves.png") as plot:
        assert plot.format == "PNG"
    # a rerun trains nothing: both students and the teacher are kept
    before = (tmp_path / "seed0" / "mixed" / "all_results.json").stat().st_mtime_ns
    module.main(["--output_dir", str(tmp_path), "--quick", "--seeds", "0", "--recipes", "mixed"])
    assert (tmp_path / "seed0" / "mixed" / "all_results.json").stat().st_mtime_ns == before


def test_sample_folders_have_the_described_classes_counts_and_formats(tmp_path):
    from make_sample_folders import FOLDERS, VALIDATION_PER_CLASS, build_folder
    from PIL import Image

    for kind, (classes, per_class) in FOLDERS.items():
        train, val = build_folder(kind, tmp_path / kind)
        for split, count in ((train, per_class), (val, VALIDATION_PER_CLASS)):
            assert sorted(path.name for path in split.iterdir()) == sorted(classes)
            files = sorted(split.glob("*/*"))
            assert len(files) == count * len(classes)
            assert {path.suffix for path in files} == {".jpg", ".png"}
            sizes = {Image.open(path).size for path in files}
            assert all(width == height and 48 <= width <= 200 for width, height in sizes) and len(sizes) > 5
    # Rebuilt with the same seed, the same images.
    again, _ = build_folder("photos", tmp_path / "again")
    assert (again / "rocket" / "3.png").read_bytes() == (tmp_path / "photos" / "train" / "rocket" / "3.png").read_bytes()


def test_the_scans_folder_holds_every_8x8_digit_once_split_per_class(tmp_path):
    from make_sample_folders import build_folder
    from PIL import Image
    from sklearn.datasets import load_digits

    train, val = build_folder("scans", tmp_path / "scans")
    digits = load_digits()
    for split, low, high in ((train, 139, 147), (val, 35, 37)):  # 174 to 183 per class
        assert sorted(path.name for path in split.iterdir()) == [str(label) for label in range(10)]
        assert all(low <= len(list(folder.iterdir())) <= high for folder in split.iterdir())
    files = sorted(tmp_path.glob("scans/*/*/*.png"))
    assert len(files) == len(digits.target) and len({path.name for path in files}) == len(files)
    sample = files[0]
    with Image.open(sample) as image:
        assert image.size == (8, 8) and image.mode == "L"
        index = int(sample.stem)
        assert int(sample.parent.name) == digits.target[index]
        assert abs(np.asarray(image).astype(int) - digits.images[index] * 255 / 16).max() <= 0.5


def test_the_faces_folder_holds_every_lfw_patch_once_split_per_class(tmp_path):
    from make_sample_folders import build_folder
    from PIL import Image
    from skimage import data

    train, val = build_folder("faces", tmp_path / "faces")
    patches = data.lfw_subset()  # 100 faces, then 100 backgrounds
    for split, count in ((train, 80), (val, 20)):
        assert sorted(path.name for path in split.iterdir()) == ["background", "face"]
        assert all(len(list(folder.iterdir())) == count for folder in split.iterdir())
    files = sorted(tmp_path.glob("faces/*/*/*.png"))
    assert sorted(int(path.stem) for path in files) == list(range(200))
    for path in files[::37]:
        with Image.open(path) as image:
            assert image.size == (25, 25) and image.mode == "L"
            index = int(path.stem)
            assert path.parent.name == ("face" if index < 100 else "background")
            assert abs(np.asarray(image).astype(int) - patches[index] * 255).max() <= 0.5


def test_the_pool_split_keeps_a_seeded_share_of_each_class_and_hides_the_rest_s_labels(tmp_path):
    from experiment_own_folder import pool_split
    from make_sample_folders import build_folder

    train, _ = build_folder("photos", tmp_path / "photos")  # 4 classes of 30
    labelled, pool = pool_split(train, 0.25, seed=1, folder=tmp_path / "split")
    assert sorted(path.name for path in labelled.iterdir()) == sorted(path.name for path in train.iterdir())
    assert all(len(list(folder.iterdir())) == 8 for folder in labelled.iterdir())  # round(7.5)
    pooled = list(pool.iterdir())
    assert len(pooled) == 4 * 22 and all(path.is_file() for path in pooled)
    # Every image once, in one of the two; a pool file's name says nothing of its class.
    contents = sorted(path.read_bytes() for path in [*labelled.glob("*/*"), *pooled])
    assert contents == sorted(path.read_bytes() for path in train.glob("*/*"))
    classes = {path.name for path in train.iterdir()}
    assert not any(name in path.name for path in pooled for name in classes)
    # Seeded: another seed draws other images; the same seed, the same (an existing split is kept as it is).
    other, _ = pool_split(train, 0.25, seed=2, folder=tmp_path / "other")
    assert sorted(path.name for path in other.glob("*/*")) != sorted(path.name for path in labelled.glob("*/*"))
    again, _ = pool_split(train, 0.25, seed=1, folder=tmp_path / "again")
    assert sorted(path.name for path in again.glob("*/*")) == sorted(path.name for path in labelled.glob("*/*"))


def test_runs_in_parallel_show_progress_and_a_failed_run_is_named_with_its_log(tmp_path, capsys):
    from experiment_common import run_in_parallel

    runs = {"fails": ("train.py", ["--output_dir", str(tmp_path / "fails"), "--no_such_flag", "1"]),
            "helps": ("train.py", ["--output_dir", str(tmp_path / "helps"), "--help"])}  # fmt: skip
    with pytest.raises(SystemExit, match=r"(?s)fails failed \(exit [1-9]\d*\); the end of .*train\.log.*no_such_flag"):
        run_in_parallel(runs)
    shown = capsys.readouterr().out  # captured: not a terminal, so plain lines
    assert "\r" not in shown and "\x1b" not in shown
    assert "  fails  failed (exit " in shown and "  helps  done in " in shown
    assert "--teacher_name_or_path" in (tmp_path / "helps" / "train.log").read_text()  # the other run finished


def test_a_stage_in_this_process_prints_its_progress_among_its_logs(tmp_path, capsys, monkeypatch):
    import time

    import experiment_common
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from hf_deit.progress import progress_file_callback

    monkeypatch.setattr(experiment_common, "PROGRESS_INTERVAL", 0.05)

    def stage(argv):  # what a trainer does in a stage: the callback the environment asks for
        callback = progress_file_callback()
        args, state = TrainingArguments(output_dir=argv[1], report_to="none"), TrainerState(max_steps=8)
        callback.on_train_begin(args, state, TrainerControl())
        state.global_step = 4
        callback.on_log(args, state, TrainerControl(), logs={"loss": 0.5})
        time.sleep(0.5)
        return {"eval_accuracy": 0.5}

    metrics = experiment_common.run_stage("a stage", stage, ["--output_dir", str(tmp_path / "run")])
    assert metrics["eval_accuracy"] == 0.5 and metrics["wall_seconds"] > 0
    shown = capsys.readouterr().out
    assert "=== a stage: --output_dir" in shown and "  run  [##########----------]  4/8   50%" in shown
    assert "loss 0.5000" in shown and "\r" not in shown
    assert experiment_common.PROGRESS_FILE_ENV not in __import__("os").environ  # restored after the stage


@pytest.mark.slow
def test_students_that_see_the_same_views_share_one_record_and_train_as_with_their_live_teacher(tmp_path, capsys):
    from experiment_common import RECORD_FLAG, RECORDS_NAME, share_teacher_records
    from test_teacher_record import run_flags, save_small_cnn, trained
    from transformers import ResNetForImageClassification

    import train

    teacher = save_small_cnn(tmp_path / "teacher")

    def student(name, *flags):
        return run_flags(tmp_path / name, "--teacher_name_or_path", teacher, *flags)

    students = {
        "hard": student("hard", "--distillation_type", "hard"),
        "hard, lr 1e-3": student("hard_lr", "--distillation_type", "hard", "--learning_rate", "1e-3"),
        "soft, wider": student("soft_wide", "--distillation_type", "soft", "--config_overrides",
                               "image_size=32,hidden_size=48,num_hidden_layers=2,num_attention_heads=2,patch_size=8"),
        "hard, seed 4": student("seed4", "--distillation_type", "hard", "--seed", "4"),  # other views, alone
        "none": student("none", "--distillation_type", "none"),  # scores the teacher, never trains from it
    }  # fmt: skip
    shared = share_teacher_records("test", tmp_path / "records", students, when="always")

    served = json.loads((tmp_path / "records" / RECORDS_NAME).read_text())
    assert [entry["students"] for entry in served.values()] == [["hard", "hard, lr 1e-3", "soft, wider"]]
    folder = str(tmp_path / "records" / next(iter(served)))
    manifest = json.loads((tmp_path / "records" / next(iter(served)) / "manifest.json").read_text())
    assert manifest["outputs"]["kinds"] == ["argmax", "top_k"]  # the soft student's probabilities too
    for name in ("hard", "hard, lr 1e-3", "soft, wider"):
        assert "--teacher_name_or_path" not in shared[name] and shared[name][-2:] == ["--teacher_outputs", folder]
    assert shared["hard, seed 4"] == students["hard, seed 4"] and shared["none"] == students["none"]

    # From the record, the run the live teacher gives, step by step (float32 on the CPU).
    train.main(shared["hard, lr 1e-3"])
    live = student("live", "--distillation_type", "hard", "--learning_rate", "1e-3")
    train.main(live)
    (replay_logs, replay_weights), (live_logs, live_weights) = trained(tmp_path / "hard_lr"), trained(tmp_path / "live")
    assert replay_logs == live_logs
    assert all(torch.equal(replay_weights[name], tensor) for name, tensor in live_weights.items())

    # Asked again, the finished student is left alone and the two waiting ones reuse the record, not a new one.
    stamp = os.stat(os.path.join(folder, "manifest.json")).st_mtime_ns
    again = share_teacher_records("test", tmp_path / "records", students, when="always")
    assert again["hard"] == shared["hard"] and again["soft, wider"] == shared["soft, wider"]
    assert os.stat(os.path.join(folder, "manifest.json")).st_mtime_ns == stamp
    # A teacher trained again into the same folder has other outputs: recorded again, never replayed from the old.
    old_weights = manifest["teacher"]["weights_sha256"]
    torch.manual_seed(1)
    config = ResNetForImageClassification.config_class.from_pretrained(teacher)
    ResNetForImageClassification(config).save_pretrained(teacher)
    share_teacher_records("test", tmp_path / "records", students, when="always")
    assert json.loads(Path(folder, "manifest.json").read_text())["teacher"]["weights_sha256"] != old_weights

    # "auto" measures what a record would cost and save, says so, and records only where it pays.
    fresh = {f"hard {index}": student(f"auto{index}", "--distillation_type", "hard", "--seed", "5",
                                      "--learning_rate", f"{index}e-4") for index in (1, 2, 3)}  # fmt: skip
    capsys.readouterr()
    decided = share_teacher_records("test", tmp_path / "auto_records", fresh, when="auto")
    said = re.search(r"teacher takes ([\d.]+) ms and rebuilding the view ([\d.]+) ms, so one record would (save|cost) "
                     r"about ([\d.]+) ms: (recording it|each keeps its live teacher)", capsys.readouterr().out)  # fmt: skip
    teacher_ms, pipeline_ms = float(said[1]), float(said[2])
    pays = 2 * teacher_ms > pipeline_ms
    assert said[3] == ("save" if pays else "cost")
    assert float(said[4]) == pytest.approx(abs(2 * teacher_ms - pipeline_ms), abs=2e-3)
    assert (said[5] == "recording it") == pays
    assert all((RECORD_FLAG in argv) == pays for argv in decided.values())
    assert (tmp_path / "auto_records" / RECORDS_NAME).is_file() == pays
    with pytest.raises(ValueError, match="when must be one of auto, always, never"):
        share_teacher_records("test", tmp_path / "records", students, when="sometimes")


def test_the_own_folder_table_over_seeds_gives_each_seed_the_mean_and_what_the_check_did(tmp_path):
    from experiment_own_folder import seeds_table

    def finish(folder: Path, accuracy: float, log: str = "") -> None:
        folder.mkdir(parents=True)
        (folder / "all_results.json").write_text(json.dumps({"eval_accuracy": accuracy}))
        (folder / "eval_results.json").write_text("{}")
        (folder / "train.log").write_text(log)

    seeds = [tmp_path / f"seed{seed}" for seed in range(3)]
    for seed, seed_dir in enumerate(seeds):
        finish(seed_dir / "photos" / "teacher", 0.95 + 0.01 * seed)
        finish(seed_dir / "photos" / "hard_weak_all", 0.9, "The label replaced the teacher on 12 images"
               + (", it generalises poorly" if seed else ""))
    finish(seeds[0] / "photos" / "none", 0.875)  # the other seeds unfinished
    (seeds[1] / "photos" / "none").mkdir()
    results = seeds_table(seeds, ["photos"], ["--seed_dirs", "..."])
    table = (tmp_path / "seeds.md").read_text()
    assert "| photos | teacher (default schedule) | 95.0 | 96.0 | 97.0 | 96.0 | - |" in table
    assert "| photos | student, no teacher | 87.5 | - | - | 87.5 (1 of 3) | - |" in table
    assert ("protected (the default: fallback all) | 90.0 | 90.0 | 90.0 | 90.0 | labels replace a weak teacher, "
            "named: generalises poorly (2 of 3) |") in table
    assert results["photos"]["none"] == [87.5, None, None] and "hard" not in results["photos"]
    assert (tmp_path / "seeds.png").stat().st_size > 0 and json.loads((tmp_path / "seeds.json").read_text()) == results
