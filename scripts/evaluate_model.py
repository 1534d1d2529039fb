#!/usr/bin/env python
"""Evaluate a saved image classifier (a distilled DeiT or any transformers one) on a dataset; print the per-head table.

    python scripts/evaluate_model.py --model_name_or_path outputs/deit                        # embedded MNIST validation
    python scripts/evaluate_model.py --model_name_or_path outputs/deit --teacher_name_or_path outputs/teacher \
        --validation_dir data/val --output_file results.json
    python scripts/evaluate_model.py --model_name_or_path outputs/deit-384 --teacher_name_or_path outputs/teacher \
        --teacher_image_size student --validation_dir data/val    # the teacher as training ran it

Data flags are train.py's (`--dataset_name`, `--train_dir`, `--validation_dir`, `--eval_split`, ...): the same flags
and `--seed` give the split training evaluated on. With only `--validation_dir`, that folder is the evaluation set.
"""

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Optional

from hf_deit_inputs import check_evaluate_command_line, exit_on_input_error

if __name__ == "__main__":  # every input on the command line checked first, before torch loads (below): in a second
    exit_on_input_error(check_evaluate_command_line, sys.argv[1:], "evaluate_model.py")

import torch  # noqa: E402
from transformers import AutoModelForImageClassification, HfArgumentParser  # noqa: E402

import hf_deit  # noqa: E402, F401  (registers our model with the Auto classes)
from hf_deit.arguments import PARSING, DataArguments  # noqa: E402
from hf_deit.data import load_image_classification_dataset  # noqa: E402
from hf_deit.evaluation import (  # noqa: E402
    dataset_label_order,
    eval_transform_for,
    evaluate_classifier,
    format_results,
    teacher_for_evaluation,
)
from hf_deit.run import parse_command_line  # noqa: E402

logger = logging.getLogger("hf_deit.evaluate")


@dataclass
class EvaluationArguments:
    """This script's flags beyond the data flags (`hf_deit.arguments.DataArguments`, train.py's)."""

    model_name_or_path: str = field(metadata={"help": "A folder or Hub id of an image classifier (ours or any)."})
    teacher_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "A teacher to measure agreement with (top-1 of the model vs the teacher's)."}
    )
    teacher_image_size: Optional[str] = field(
        default=None,
        metadata={"help": "What the teacher sees, as in training: its own preprocessing size (default; the batch is "
                  "resized to it), 'student' (the evaluated model's batch as is), or N px."},
    )
    output_file: Optional[str] = field(default=None, metadata={"help": "Write the results there as JSON."})
    batch_size: int = field(default=128, metadata={"help": "Images per batch."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes decoding the images."})
    image_size: Optional[int] = field(
        default=None, metadata={"help": "Input size; default: the model's saved preprocessing config, else its config."}
    )
    crop_pct: Optional[float] = field(
        default=None, metadata={"help": "Center-crop fraction; default: from the saved preprocessing config."}
    )
    seed: int = field(
        default=42, metadata={"help": "Seed of a carved-out validation split: training's --seed gives the same one."}
    )
    top_k: int = field(default=5, metadata={"help": "The k of top-k accuracy (reported with more than k classes)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow the model's remote code."})
    teacher_trust_remote_code: bool = field(default=False, metadata={"help": "Allow the teacher's remote code."})
    device: Optional[str] = field(default=None, metadata={"help": "cpu, cuda, ...; default: cuda when available."})


def main(argv=None) -> dict:
    parser = HfArgumentParser((EvaluationArguments, DataArguments), **PARSING)
    eval_args, data_args = parse_command_line(parser, argv, check_evaluate_command_line)  # InputErrors name each fix
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    device = eval_args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    # An evaluation folder alone is read as the only split of an image folder.
    only_validation_dir = data_args.validation_dir is not None and data_args.train_dir is None
    dataset = load_image_classification_dataset(
        dataset_name=data_args.dataset_name,
        dataset_config_name=data_args.dataset_config_name,
        train_dir=data_args.validation_dir if only_validation_dir else data_args.train_dir,
        validation_dir=None if only_validation_dir else data_args.validation_dir,
        image_column_name=data_args.image_column_name,
        label_column_name=data_args.label_column_name,
        eval_split="train" if only_validation_dir else data_args.eval_split,
        train_val_split=data_args.train_val_split,
        seed=eval_args.seed,
        streaming=data_args.streaming,
        max_eval_samples=data_args.max_eval_samples,
    )
    evaluation_set = dataset["validation"]
    label_names = evaluation_set.features["label"].names

    model = AutoModelForImageClassification.from_pretrained(
        eval_args.model_name_or_path, trust_remote_code=eval_args.trust_remote_code
    )
    transform = eval_transform_for(eval_args.model_name_or_path, model.config, eval_args.image_size, eval_args.crop_pct)
    normalize = transform.transforms[-1]  # the batch's normalisation, which a teacher may need re-done
    teacher = None
    if eval_args.teacher_name_or_path is not None:
        teacher = teacher_for_evaluation(
            eval_args.teacher_name_or_path, label_names, normalize.mean, normalize.std,
            trust_remote_code=eval_args.teacher_trust_remote_code, device=device,
            teacher_image_size=eval_args.teacher_image_size,
        )  # fmt: skip

    results = evaluate_classifier(
        model,
        evaluation_set,
        transform,
        label_order=dataset_label_order(label_names, model.config),
        teacher=teacher,
        batch_size=eval_args.batch_size,
        num_workers=eval_args.num_workers,
        skip_bad_images=data_args.skip_bad_images,
        top_k=eval_args.top_k,
        device=device,
    )
    print(f"{eval_args.model_name_or_path} on {data_args.validation_dir or data_args.train_dir or data_args.dataset_name}")
    print(format_results(results))
    if eval_args.output_file:
        record = {"model": eval_args.model_name_or_path, "teacher": eval_args.teacher_name_or_path, **results}
        os.makedirs(os.path.dirname(os.path.abspath(eval_args.output_file)), exist_ok=True)
        with open(eval_args.output_file, "w") as file:
            json.dump(record, file, indent=2)
        logger.info("Results written to %s", eval_args.output_file)
    return results


if __name__ == "__main__":
    exit_on_input_error(main, sys.argv[1:], "evaluate_model.py")
