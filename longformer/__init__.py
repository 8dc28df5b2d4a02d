"""Longformer for long-document classification: a plain PyTorch model, exact against transformers.

The model library (this package, without `longformer.pipeline`) needs torch and safetensors; converting Hugging
Face checkpoints (`from_hf`, `save_hf`) needs transformers, imported when used. `longformer.pipeline` is the DVC
pipeline built on it.
"""

from longformer.attention import AttentionMasks
from longformer.config import HeadConfig, LongformerConfig
from longformer.errors import UserError, WeightsMismatchError
from longformer.model import LongformerClassifier, LongformerModel

__all__ = ["AttentionMasks", "HeadConfig", "LongformerClassifier", "LongformerConfig", "LongformerModel", "UserError",
           "WeightsMismatchError"]
