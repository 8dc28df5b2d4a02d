"""The Longformer encoder and classifier as plain torch.nn.Modules."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from longformer.attention import AttentionMasks, LongformerSelfAttention
from longformer.config import LongformerConfig
from longformer.dropout import Dropout
from longformer.errors import ConfigError, UserError
from longformer.matmul import Linear, linear_activation, linear_add, linear_into, row_parts, weight_grad

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "gelu": nn.GELU}
_FEED_FORWARD_CHUNK_ROWS = 512  # tokens per part of the feed-forward in the forward (without autograd, both products)


class Embeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm and dropout."""

    def __init__(self, config: LongformerConfig):
        super().__init__()
        self.pad_token_id = config.pad_token_id
        self.position_offset = config.position_offset
        # RoBERTa's families keep the row below the first position for padding; BERT has no such row.
        padding_row = config.position_offset - 1 if config.position_offset else None
        self.word = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position = nn.Embedding(config.max_position_embeddings, config.hidden_size, padding_idx=padding_row)
        self.token_type = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        # Non-pad tokens count from position_offset; pad tokens take the padding row (row 0 where there is none):
        # their outputs are never read.
        not_pad = input_ids.ne(self.pad_token_id).long()
        positions = (torch.cumsum(not_pad, dim=1) * not_pad + self.position_offset - 1).clamp_min(0)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.word(input_ids) + self.position(positions) + self.token_type(token_type_ids)
        return self.dropout(self.norm(x))


class ActivationLinear(torch.autograd.Function):
    """y = activation(h) @ W^T + b that saves only h and recomputes activation(h) in backward.

    The activation output is as large as h (4x the hidden states); not keeping it cuts a layer's saved
    activations by about a fifth, for one cheap elementwise recompute. The forward goes a few hundred rows
    at a time, so activation(h) is never whole: its chunk stays in cache and no fresh full-size tensor
    (page faults) is made. Backward reuses one buffer of h's size for activation(h), its gradient and h's
    gradient. (Going a part of the rows at a time in backward too, with the weight gradient summed over the
    parts, measured no faster: 13.45 vs 13.78 s and 6.88 vs 6.78 s a step at 4096 tokens on two days.)
    """

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor, gelu: bool) -> Tensor:
        ctx.save_for_backward(h, weight)
        ctx.gelu = gelu
        rows = h.reshape(-1, h.shape[-1])  # (N, inner)
        y = rows.new_empty(rows.shape[0], weight.shape[0])  # (N, D)
        for part in row_parts(rows.shape[0], _FEED_FORWARD_CHUNK_ROWS):
            linear_into(y[part], F.gelu(rows[part]) if gelu else F.relu(rows[part]), weight, bias)
        return y.view(*h.shape[:-1], -1)

    @staticmethod
    def backward(ctx, grad_y: Tensor):
        h, weight = ctx.saved_tensors
        grad_y = grad_y.reshape(-1, grad_y.shape[-1]).contiguous()  # (N, D); oneDNN takes no other strides
        buffer = F.gelu(h) if ctx.gelu else F.relu(h)  # activation(h), (..., inner)
        flat = buffer.view(grad_y.shape[0], -1)  # (N, inner), the same memory
        grad_weight = weight_grad(grad_y, flat)
        linear_into(flat, grad_y, weight.T, None)  # grad_y @ weight: now the activation's gradient
        if ctx.gelu:
            torch.ops.aten.gelu_backward.grad_input(buffer, h, grad_input=buffer)  # in place: now h's gradient
        else:
            buffer.masked_fill_(h <= 0, 0)
        return buffer, grad_weight, grad_y.sum(0), None


class Layer(nn.Module):
    """Post-norm transformer layer: attention -> add & norm -> feed-forward -> add & norm."""

    def __init__(self, config: LongformerConfig, window: int):
        super().__init__()
        dim = config.hidden_size
        self.attn = LongformerSelfAttention(dim, config.num_heads, window, config.attention_dropout)
        self.attn_out = Linear(dim, dim)
        self.attn_norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.ffn_in = Linear(dim, config.intermediate_size)
        self.ffn_out = Linear(config.intermediate_size, dim)
        self.ffn_norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.gelu = config.hidden_act == "gelu"  # else relu
        self.dropout = Dropout(config.hidden_dropout)

    def forward(self, x: Tensor, masks: AttentionMasks) -> Tensor:
        return self._add_and_feed_forward(self.attn(x, masks), x)

    def forward_global(self, x: Tensor, masks: AttentionMasks) -> Tensor:
        """Outputs of the global tokens only, (B, G, D): all a last layer must compute when only they are read."""
        return self._add_and_feed_forward(self.attn.global_rows(x, masks), masks.gather(x))

    def _add_and_feed_forward(self, attended: Tensor, residual: Tensor) -> Tensor:
        if not (self.training or torch.is_grad_enabled()):
            return self._add_and_feed_forward_inference(attended, residual)
        x = self.attn_norm(residual + self.dropout(self.attn_out(attended)))
        h = self.ffn_in(x)
        if torch.is_autocast_enabled(h.device.type):  # the plain modules: autocast picks their dtypes
            y = self.ffn_out(F.gelu(h) if self.gelu else F.relu(h))
        else:
            y = ActivationLinear.apply(h, self.ffn_out.weight, self.ffn_out.bias, self.gelu)
        return self.ffn_norm(x + self.dropout(y))

    def _add_and_feed_forward_inference(self, attended: Tensor, residual: Tensor) -> Tensor:
        """The same without dropout or autograd, the feed-forward a few hundred rows at a time: h (4x the hidden
        states) is never whole, so no fresh full-size tensor page-faults and each part stays in cache, and the
        products apply the activation and the residual adds themselves (~13% faster at 4096 tokens, base)."""
        rows = residual.reshape(-1, residual.shape[-1])  # (N, D)
        x = self.attn_norm(linear_add(attended.reshape(rows.shape), self.attn_out.weight, self.attn_out.bias, rows))
        out = torch.empty_like(x)
        for part in row_parts(x.shape[0], _FEED_FORWARD_CHUNK_ROWS):
            h = linear_activation(x[part], self.ffn_in.weight, self.ffn_in.bias, "gelu" if self.gelu else "relu")
            out[part] = linear_add(h, self.ffn_out.weight, self.ffn_out.bias, x[part])
        return self.ffn_norm(out).view(residual.shape)


class LongformerModel(nn.Module):
    """The encoder: `model(input_ids, attention_mask, global_attention_mask)` -> (B, n, hidden)."""

    def __init__(self, config: LongformerConfig):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Layer(config, window) for window in config.attention_window)
        self.gradient_checkpointing = False

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                global_attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                global_only: bool = False) -> Tensor:
        """input_ids (B, n); attention_mask 1 = token, 0 = padding; global_attention_mask 1 = global.

        Returns the last hidden states (B, n, hidden), or with `global_only` those of the global tokens,
        (B, G, hidden) in position order, which lets the last layer skip every other token.
        """
        if input_ids.shape[1] > self.config.max_length:
            config = self.config
            raise ValueError(f"input has {input_ids.shape[1]} tokens; this model takes at most {config.max_length} "
                             f"(max_position_embeddings={config.max_position_embeddings})")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if global_attention_mask is None:
            global_attention_mask = torch.zeros_like(input_ids)
        masks = AttentionMasks.build(attention_mask, global_attention_mask)
        if global_only and not masks.num_global:
            raise ValueError("global_only=True needs at least one global token")
        x = self.embeddings(input_ids, token_type_ids)
        for i, layer in enumerate(self.layers):
            run = layer.forward_global if global_only and i == len(self.layers) - 1 else layer
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(run, x, masks, use_reentrant=False)  # recompute activations in backward
            else:
                x = run(x, masks)
        return x

    @classmethod
    def from_hf(cls, checkpoint: str | Path, max_length: int | None = None,
                attention_window: int | list[int] | None = None) -> LongformerModel:
        """Convert a Hugging Face Longformer, BERT or RoBERTa checkpoint (hub id or local directory) into our model.

        max_length (tokens) and attention_window (one for all layers, or one per layer) default to the
        checkpoint's; a BERT or RoBERTa gets windows of 512 and, with a larger max_length, its position
        table copied over and over (as the Longformer was made from RoBERTa).
        """
        from longformer.convert import convert_hf_checkpoint  # the only module that imports transformers

        config, state = convert_hf_checkpoint(checkpoint, max_length, attention_window)
        model = cls(config)
        load_state_dict_strict(model, state)
        return model

    def save_hf(self, directory: str | Path, tokenizer: str | Path | None = None) -> None:
        """Write this encoder as a Hugging Face `LongformerModel` directory that `from_pretrained` loads, with the
        tokenizer of the Hugging Face directory `tokenizer` if given."""
        from longformer.convert import save_hf

        save_hf(self.config, self.state_dict(), directory, tokenizer)

    @classmethod
    def load(cls, directory: str | Path) -> LongformerModel:
        """Load a model saved by the convert stage (`longformer.checkpoint.save_converted`)."""
        from longformer.checkpoint import load_encoder

        return load_encoder(directory)


@dataclass
class HeadConfig:
    """The classification head: Linear(hidden, dim) -> Dropout -> activation -> Dropout -> Linear(dim, labels)."""

    dim: int = 768
    dropout: float = 0.1
    activation: str = "tanh"
    num_labels: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.dim, int) or self.dim < 1:
            raise ConfigError(f"head.dim must be a positive integer, got {self.dim!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"head.dropout must be in [0, 1), got {self.dropout!r}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"head.activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if not isinstance(self.num_labels, int) or self.num_labels < 2:
            raise ConfigError(f"head.num_labels must be an integer >= 2, got {self.num_labels!r}")


class ClassificationHead(nn.Module):
    def __init__(self, hidden_size: int, head: HeadConfig):
        super().__init__()
        self.dense = Linear(hidden_size, head.dim)
        self.dropout = Dropout(head.dropout)
        self.activation = ACTIVATIONS[head.activation]()
        self.out = Linear(head.dim, head.num_labels)

    def forward(self, cls: Tensor) -> Tensor:
        return self.out(self.dropout(self.activation(self.dropout(self.dense(cls)))))


class LongformerClassifier(nn.Module):
    """Encoder + head on the first (<s>/CLS) token, which gets global attention by default."""

    def __init__(self, config: LongformerConfig, head: HeadConfig | None = None):
        super().__init__()
        self.head_config = head or HeadConfig()
        self.encoder = LongformerModel(config)
        self.head = ClassificationHead(config.hidden_size, self.head_config)

    @property
    def config(self) -> LongformerConfig:
        return self.encoder.config

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                global_attention_mask: Tensor | None = None) -> Tensor:
        """-> logits (B, num_labels). The first token is always global (more may be given)."""
        global_attention_mask = torch.zeros_like(input_ids) if global_attention_mask is None \
            else global_attention_mask.clone()
        global_attention_mask[:, 0] = 1
        # The first token is the first global slot; the last layer computes only the global tokens.
        cls = self.encoder(input_ids, attention_mask, global_attention_mask, global_only=True)[:, 0]
        return self.head(cls)

    def loss(self, logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
        return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)

    @classmethod
    def from_encoder(cls, encoder: LongformerModel, head: HeadConfig | None = None) -> LongformerClassifier:
        """A classifier around a pretrained encoder, with a freshly initialised head."""
        model = cls(encoder.config, head)
        model.encoder = encoder
        return model

    @classmethod
    def from_hf(cls, checkpoint: str | Path, head: HeadConfig | None = None, max_length: int | None = None,
                attention_window: int | list[int] | None = None) -> LongformerClassifier:
        """A classifier around `LongformerModel.from_hf(checkpoint, max_length, attention_window)`."""
        return cls.from_encoder(LongformerModel.from_hf(checkpoint, max_length, attention_window), head)


class CheckpointMismatchError(UserError, ValueError):
    """A state dict that does not fit the model: names the missing, unexpected and mis-shaped tensors."""


def load_state_dict_strict(model: nn.Module, state: dict[str, Tensor]) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                        for k, v in expected.items() if k in state and state[k].shape != v.shape)
    if missing or unexpected or mis_shaped:
        parts = [f"{label} ({len(keys)}): {', '.join(keys[:10])}{' ...' if len(keys) > 10 else ''}"
                 for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                     ("shape mismatches", mis_shaped)) if keys]
        raise CheckpointMismatchError("checkpoint does not match the model: " + "; ".join(parts))
    model.load_state_dict(state)
