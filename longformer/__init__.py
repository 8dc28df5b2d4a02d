"""Longformer for long-document classification: a plain PyTorch model, exact against transformers."""

from longformer.attention import AttentionMasks
from longformer.config import LongformerConfig
from longformer.model import CheckpointMismatchError, HeadConfig, LongformerClassifier, LongformerModel

__all__ = ["AttentionMasks", "CheckpointMismatchError", "HeadConfig", "LongformerClassifier", "LongformerConfig",
           "LongformerModel"]
