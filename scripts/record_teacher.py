#!/usr/bin/env python
r"""Record the teacher's outputs once, over exactly the views a training run will produce (hf_deit.teacher_record).

    python scripts/record_teacher.py --record_dir outputs/record --teacher_name_or_path outputs/teacher \
        --distillation_type hard <the run's data, augmentation, seed and schedule flags>
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 scripts/record_teacher.py ...  # in parallel
    python scripts/train.py --teacher_outputs outputs/record --distillation_type hard <the same flags>

Takes train.py's flags (the run the record is for) and its own (--help lists them under "Record"). Every student
trained with the same data, augmentation, seed and schedule then trains from the record without running the teacher.
A run that differs is refused, each difference named. Under `accelerate launch --num_processes N` each process records
its share of every epoch (`--record_world_size` is the training run's process count, not the recording's).
It prints the record's size before writing (bytes per view x views + 8 bytes per image, docs/teacher-records.md) and
after (the manifest's `size`), the teacher's speed, and after how many runs from the record the recording has paid for
itself.
"""
import logging
import math
import sys
from dataclasses import dataclass, field
from typing import Optional

import train
from hf_deit_inputs import exit_on_input_error
from transformers import HfArgumentParser, set_seed

from hf_deit.arguments import PARSING, AugmentationArguments, DataArguments, DistillationConfig, ModelArguments
from hf_deit.recording import record_teacher_outputs
from hf_deit.run import parse_command_line
from hf_deit.teacher_record import plan_for_run

logger = logging.getLogger("hf_deit.record_teacher")


@dataclass
class RecordArguments:
    """This script's flags beyond train.py's (`hf_deit.teacher_record`)."""

    _argument_group_name = "Record"  # its heading in --help

    record_dir: str = field(metadata={"help": "Where the record goes (safetensors shards and manifest.json)."})
    num_epochs: Optional[int] = field(
        default=None, metadata={"help": "Epochs recorded; default: as many as the run's schedule reads."}
    )
    record_world_size: int = field(
        default=1,
        metadata={"help": "Processes of the run the record is for. Matters only with repeated augmentation or "
                  "mixup/cutmix, whose views depend on it."},
    )
    top_k: str = field(
        default="auto",
        metadata={"help": "Teacher probabilities kept per view: N, 'all', or 'auto' (10 for soft distillation, none "
                  "for hard, which needs only the argmax)."},
    )
    record_features: Optional[bool] = field(
        default=None, metadata={"help": "Record the pooled features (default: when the feature term is on)."}
    )
    record_attention_map: Optional[bool] = field(
        default=None, metadata={"help": "Record the attention maps (default: when the attention term is on)."}
    )
    record_stage_maps: Optional[bool] = field(
        default=None, metadata={"help": "Record the CNN stage map (default: when the feature-map term is on)."}
    )
    teacher_batch_size: Optional[int] = field(
        default=None,
        metadata={"help": "Views per teacher pass (default: the run's batch, whose arithmetic is the run's; larger "
                  "is faster on an accelerator)."},
    )
    compile_teacher: bool = field(
        default=False, metadata={"help": "Compile the teacher's pass (weights frozen in, as for inference)."}
    )
    overwrite_record: bool = field(default=False, metadata={"help": "Replace a record already in --record_dir."})


def main(argv=None) -> dict:
    # train.py's flags (the run the record is for) and this script's own
    groups = (ModelArguments, DataArguments, AugmentationArguments, DistillationConfig, RecordArguments)
    parser = HfArgumentParser(groups, **PARSING)
    model_args, data_args, aug_args, training_args, record_args = parse_command_line(parser, argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if training_args.teacher_outputs is not None:
        parser.error("--teacher_outputs reads a record; to write one, pass --record_dir and the teacher.")
    if training_args.teacher_name_or_path is None:
        parser.error("Recording needs the teacher: pass --teacher_name_or_path.")
    set_seed(training_args.seed)
    trainer, _, _ = train.build_run(model_args, data_args, aug_args, training_args)
    if record_args.compile_teacher:
        trainer.teacher.compile(backend=training_args.torch_compile_backend or "inductor")
    plan = plan_for_run(trainer, record_args.num_epochs, record_args.record_world_size, record_args.top_k,
                        record_args.record_features, record_args.record_attention_map, record_args.record_stage_maps,
                        record_args.teacher_batch_size)  # fmt: skip
    manifest = record_teacher_outputs(trainer, record_args.record_dir, plan, overwrite=record_args.overwrite_record)
    if not trainer.is_world_process_zero():
        return manifest
    recording, size = manifest["recording"], manifest["size"]
    logger.info("Recorded %d views (%s) in %.1f s by %d process(es), the teacher at %.1f views/s: %s, %d bytes "
                "(%d training views x %d B + %d evaluation images + %d B per image).", recording["views"],
                ", ".join(manifest["outputs"]["kinds"]), recording["seconds"], recording["processes"],
                recording["views"] / max(recording["teacher_seconds"], 1e-9), record_args.record_dir, size["bytes"],
                size["training views"], sum(manifest["outputs"]["bytes_per_view"].values()),
                size["evaluation images"], size["digest bytes per image"])  # fmt: skip
    # Each run from the record is spared the teacher's passes; the recording also rebuilt every view once.
    runs = math.ceil(recording["seconds"] * recording["processes"] / max(recording["teacher_seconds"], 1e-9))
    logger.info("Each run from this record is spared about %.1f s of teacher passes; the recording took %.1f s, so it "
                "pays for itself from the %s run that trains from it%s.", recording["teacher_seconds"],
                recording["seconds"] * recording["processes"], _ordinal(runs),
                "" if runs <= 2 else ": with a teacher this cheap, rebuilding the views costs more than its passes")
    return manifest


def _ordinal(number: int) -> str:
    suffix = "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


if __name__ == "__main__":
    exit_on_input_error(main, sys.argv[1:], "record_teacher.py")
