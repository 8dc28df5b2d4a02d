"""Model configuration: the encoder's (readable from a Hugging Face `config.json`) and the classification head's."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from longformer.errors import ConfigError

# Hugging Face model families the encoder is made from, and the row of the position table that their first
# token takes: RoBERTa's families keep rows 0..pad_token_id for padding, BERT's counts from 0.
ROBERTA_FAMILY = ("longformer", "roberta", "xlm-roberta", "camembert")
BERT_FAMILY = ("bert",)
DEFAULT_WINDOW = 512  # a BERT or RoBERTa has no window of its own: the Longformer paper's
HEAD_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}  # head.activation -> its module
ENCODER_ACTIVATIONS = ("gelu", "relu")  # hidden_act: the names longformer.kernels.ACTIVATIONS computes


def roberta_position_offset(pad_token_id: int) -> int:
    """The position row of the first token in RoBERTa's scheme (RoBERTa's families and transformers' Longformer keep
    rows 0..pad_token_id for padding); BERT's first token takes row 0."""
    return pad_token_id + 1


def is_integer(value: object, at_least: int | None = None) -> bool:
    """An int (not a bool, which Python counts as one), and at least `at_least` if given."""
    return isinstance(value, int) and not isinstance(value, bool) and (at_least is None or value >= at_least)


def is_window(value: object) -> bool:
    """A sliding window's size: a positive even number of tokens (a token sees half of it on each side)."""
    return is_integer(value, 1) and value % 2 == 0


@dataclass
class LongformerConfig:
    vocab_size: int = 50265
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    # Full window size per layer (a token sees window // 2 tokens on each side), as in the paper.
    attention_window: list[int] = field(default_factory=lambda: [512] * 12)
    max_position_embeddings: int = 4098
    type_vocab_size: int = 1
    pad_token_id: int = 1
    # Position row of the first token; None: pad_token_id + 1 (RoBERTa, Longformer). BERT: 0.
    position_offset: int | None = None
    layer_norm_eps: float = 1e-5
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    hidden_act: str = "gelu"
    # The masked-LM head's activation: BERT's head takes the encoder's (hidden_act), RoBERTa's families' always gelu.
    lm_head_act: str = "gelu"
    # Special tokens of the tokenizer the weights were trained with (kept for export; the model reads pad only).
    bos_token_id: int | None = 0
    eos_token_id: int | None = 2

    def __post_init__(self) -> None:
        if self.position_offset is None:
            self.position_offset = roberta_position_offset(self.pad_token_id)
        if isinstance(self.attention_window, int):
            self.attention_window = [self.attention_window] * self.num_layers
        self.attention_window = list(self.attention_window)
        if len(self.attention_window) != self.num_layers:
            raise ConfigError(
                f"attention_window has {len(self.attention_window)} entries but the model has "
                f"{self.num_layers} layers: give one window or one per layer"
            )
        for i, w in enumerate(self.attention_window):
            if not is_window(w):
                raise ConfigError(f"attention_window of layer {i} must be a positive even integer, got {w!r}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        for name in ("hidden_act", "lm_head_act"):
            if getattr(self, name) not in ENCODER_ACTIVATIONS:
                raise ConfigError(f"{name} {getattr(self, name)!r} is not supported; use one of {ENCODER_ACTIVATIONS}")
        if self.max_length < 1:
            raise ConfigError(f"max_position_embeddings={self.max_position_embeddings} leaves no position for a token "
                              f"(the first token takes row {self.position_offset})")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def max_length(self) -> int:
        """Longest input the position table covers."""
        return self.max_position_embeddings - self.position_offset

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any]) -> LongformerConfig:
        """Build from the fields of a Hugging Face Longformer, BERT or RoBERTa `config.json`; a BERT or RoBERTa,
        which has no attention window, gets the paper's 512."""
        family = hf.get("model_type", "longformer")
        if family not in ROBERTA_FAMILY + BERT_FAMILY:
            raise ConfigError(f"model_type {family!r} is not supported: use a Longformer, BERT or RoBERTa "
                              f"checkpoint ({', '.join(ROBERTA_FAMILY + BERT_FAMILY)})")
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise ConfigError(f"position_embedding_type {hf['position_embedding_type']!r} is not supported: "
                              "only absolute position embeddings can be turned into a Longformer")
        pad_token_id = hf.get("pad_token_id", 1 if family in ROBERTA_FAMILY else 0)
        return cls(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            intermediate_size=hf["intermediate_size"],
            attention_window=hf.get("attention_window", DEFAULT_WINDOW),
            max_position_embeddings=hf["max_position_embeddings"],
            type_vocab_size=hf.get("type_vocab_size", 1),
            pad_token_id=pad_token_id,
            position_offset=roberta_position_offset(pad_token_id) if family in ROBERTA_FAMILY else 0,
            layer_norm_eps=hf.get("layer_norm_eps", 1e-5),
            hidden_dropout=hf.get("hidden_dropout_prob", 0.1),
            attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
            hidden_act=hf.get("hidden_act", "gelu"),
            lm_head_act=hf.get("hidden_act", "gelu") if family in BERT_FAMILY else "gelu",
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=hf.get("eos_token_id"),
        )

    @classmethod
    def from_json(cls, path: str | Path) -> LongformerConfig:
        data = json.loads(Path(path).read_text())
        if "num_hidden_layers" in data:  # a Hugging Face config.json
            return cls.from_hf_dict(data)
        return cls(**data)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")


@dataclass
class HeadConfig:
    """The classification head: Linear(hidden, dim) -> Dropout -> activation -> Dropout -> Linear(dim, labels)."""

    dim: int = 768  # 0: the encoder's hidden size (transformers' head; the reference's 768 on a base model)
    dropout: float = 0.1
    activation: str = "tanh"
    num_labels: int = 2

    def __post_init__(self) -> None:
        if not is_integer(self.dim, 0):
            raise ConfigError(f"head.dim must be a positive integer (or 0: the hidden size), got {self.dim!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"head.dropout must be in [0, 1), got {self.dropout!r}")
        if self.activation not in HEAD_ACTIVATIONS:
            raise ConfigError(f"head.activation must be one of {sorted(HEAD_ACTIVATIONS)}, got {self.activation!r}")
        if not is_integer(self.num_labels, 2):
            raise ConfigError(f"head.num_labels must be an integer >= 2, got {self.num_labels!r}")
