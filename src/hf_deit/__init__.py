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

__all__ = [
    "PRESETS",
    "PRESET_ALIASES",
    "DistilledDeiTConfig",
    "DistilledDeiTForImageClassification",
    "DistilledDeiTImageClassifierOutput",
    "DistilledDeiTModel",
    "DistilledDeiTModelOutput",
    "DistilledDeiTPreTrainedModel",
]
