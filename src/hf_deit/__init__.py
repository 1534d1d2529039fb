"""hf-deit: the distilled DeiT as a transformers model family, trained by distilling any image classifier."""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .configuration_distilled_deit import PRESET_ALIASES, PRESETS, DistilledDeiTConfig
from .modeling_distilled_deit import (
    DistilledDeiTForImageClassification,
    DistilledDeiTImageClassifierOutput,
    DistilledDeiTModel,
    DistilledDeiTModelOutput,
    DistilledDeiTPreTrainedModel,
)

__version__ = "0.1.0"

AutoConfig.register(DistilledDeiTConfig.model_type, DistilledDeiTConfig, exist_ok=True)
AutoModel.register(DistilledDeiTConfig, DistilledDeiTModel, exist_ok=True)
AutoModelForImageClassification.register(DistilledDeiTConfig, DistilledDeiTForImageClassification, exist_ok=True)
# Saved folders and Hub repos carry the model code and an `auto_map`, so they load where hf_deit is not installed.
DistilledDeiTConfig.register_for_auto_class()
DistilledDeiTModel.register_for_auto_class("AutoModel")
DistilledDeiTForImageClassification.register_for_auto_class("AutoModelForImageClassification")


def _convert_on_load(model_class, pretrained_model_name_or_path, **kwargs):
    """Checkpoints of other DeiT implementations load through `from_pretrained`, converted (`hf_deit.convert`)."""
    from .convert import load_converted

    return load_converted(model_class, pretrained_model_name_or_path, **kwargs)


DistilledDeiTPreTrainedModel._convert_on_load = staticmethod(_convert_on_load)

# The training side imports Trainer and accelerate: loaded on first use, so that `import hf_deit` stays light.
_LAZY = {
    "DistillationConfig": "arguments",
    "DistillationTrainer": "trainer",
    "DistillationObjective": "objective",
    "Teacher": "teacher",
    "ClassifierTrainer": "trainer",
    "DistillationLoss": "losses",
    "convert_checkpoint": "convert",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    *_LAZY,
    "PRESETS",
    "PRESET_ALIASES",
    "DistilledDeiTConfig",
    "DistilledDeiTForImageClassification",
    "DistilledDeiTImageClassifierOutput",
    "DistilledDeiTModel",
    "DistilledDeiTModelOutput",
    "DistilledDeiTPreTrainedModel",
]
