"""Longformer for long-document classification: a plain PyTorch model, exact against transformers.

The model library (this package, without `longformer.pipeline`) needs torch and safetensors; converting Hugging
Face checkpoints (`from_hf`, `save_hf`) needs transformers, imported when used. `longformer.pipeline` is the DVC
pipeline built on it.

The names below are imported when first used: importing a module of the package (as each pipeline stage does) does
not import the model, so a stage depends only on the modules it runs.
"""

import importlib

PUBLIC = {  # name -> the module that defines it
    "AttentionMasks": "longformer.attention",
    "HeadConfig": "longformer.config",
    "LongformerConfig": "longformer.config",
    "UserError": "longformer.errors",
    "WeightsMismatchError": "longformer.errors",
    "LongformerClassifier": "longformer.model",
    "LongformerForMaskedLM": "longformer.model",
    "LongformerModel": "longformer.model",
}
__all__ = sorted(PUBLIC)


def __getattr__(name: str) -> object:
    if name not in PUBLIC:
        raise AttributeError(f"module 'longformer' has no attribute {name!r}")
    return getattr(importlib.import_module(PUBLIC[name]), name)
