"""The Longformer encoder and classifier as plain torch.nn.Modules."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from longformer import hf, kernels, weights
from longformer.attention import AttentionMasks, LongformerSelfAttention
from longformer.config import HEAD_ACTIVATIONS, HeadConfig, LongformerConfig
from longformer.errors import WeightsMismatchError

M = TypeVar("M", bound=nn.Module)

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
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        # Non-pad tokens count from position_offset; pad tokens take the padding row (row 0 where there is none):
        # their outputs are never read.
        not_pad = input_ids.ne(self.pad_token_id).long()
        positions = (torch.cumsum(not_pad, dim=1) * not_pad + self.position_offset - 1).clamp_min(0)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.word(input_ids) + self.position(positions) + self.token_type(token_type_ids)
        return self.dropout(self.norm(x))


class Layer(nn.Module):
    """Post-norm transformer layer: attention -> add & norm -> feed-forward -> add & norm.

    `use_kernels` (decided by the model once per forward) runs the attention and the add & norm + feed-forward on
    `longformer.kernels`, which compute the same as the modules here."""

    def __init__(self, config: LongformerConfig, window: int):
        super().__init__()
        dim = config.hidden_size
        self.attn = LongformerSelfAttention(dim, config.num_heads, window, config.attention_dropout)
        self.attn_out = nn.Linear(dim, dim)
        self.attn_norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.ffn_in = nn.Linear(dim, config.intermediate_size)
        self.activation = config.hidden_act  # a name in kernels.ACTIVATIONS
        self.ffn_out = nn.Linear(config.intermediate_size, dim)
        self.ffn_norm = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: Tensor, masks: AttentionMasks, use_kernels: bool = False) -> Tensor:
        return self.add_and_feed_forward(self.attn(x, masks, use_kernels), x, use_kernels)

    def forward_global(self, x: Tensor, masks: AttentionMasks, use_kernels: bool = False) -> Tensor:
        """Outputs of the global tokens only, (B, G, D): all a last layer must compute when only they are read."""
        return self.add_and_feed_forward(self.attn.global_rows(x, masks), masks.gather(x), use_kernels)

    def add_and_feed_forward(self, attended: Tensor, residual: Tensor, use_kernels: bool = False) -> Tensor:
        """The attention's output projection added to the residual, then the feed-forward; (B, n, D) -> (B, n, D)."""
        if use_kernels:
            dropout_p = self.dropout.p if self.training else 0.0
            return kernels.add_and_feed_forward(attended, residual, self.feed_forward_weights(), self.activation,
                                                dropout_p)
        x = self.attn_norm(residual + self.dropout(self.attn_out(attended)))
        y = self.ffn_out(kernels.ACTIVATIONS[self.activation](self.ffn_in(x)))
        return self.ffn_norm(x + self.dropout(y))

    def feed_forward_weights(self) -> kernels.FeedForwardWeights:
        pairs = [(m.weight, m.bias) for m in (self.attn_out, self.attn_norm, self.ffn_in, self.ffn_out, self.ffn_norm)]
        return kernels.FeedForwardWeights(*pairs, norm_eps=self.attn_norm.eps)


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
        return self.encode(input_ids, AttentionMasks.build(attention_mask, global_attention_mask), token_type_ids,
                           global_only)

    def encode(self, input_ids: Tensor, masks: AttentionMasks, token_type_ids: Tensor | None = None,
               global_only: bool = False) -> Tensor:
        """`forward` with the attention masks already built."""
        if global_only and not masks.num_global:
            raise ValueError("global_only=True needs at least one global token")
        x = self.embeddings(input_ids, token_type_ids)
        use_kernels = kernels.enabled(x)  # the one place that chooses between the kernels and the reference
        kernels.forget_casts()  # the weights may have changed in place since the last forward
        for i, layer in enumerate(self.layers):
            run = layer.forward_global if global_only and i == len(self.layers) - 1 else layer
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(run, x, masks, use_kernels, use_reentrant=False)  # recompute activations in backward
            else:
                x = run(x, masks, use_kernels)
        return x

    @classmethod
    def from_hf(cls, checkpoint: str | Path, max_length: int | None = None,
                attention_window: int | list[int] | None = None) -> LongformerModel:
        """Convert a Hugging Face Longformer, BERT or RoBERTa checkpoint (hub id or local directory) into our model.

        max_length (tokens) and attention_window (one for all layers, or one per layer) default to the
        checkpoint's; a BERT or RoBERTa gets windows of 512 and, with a larger max_length, its position
        table copied over and over (as the Longformer was made from RoBERTa).
        """
        config, state, _ = hf.convert_hf_checkpoint(checkpoint, max_length, attention_window)
        return load_state_dict_strict(cls(config), state)

    def save_hf(self, directory: str | Path, tokenizer: str | Path | None = None) -> None:
        """Write this encoder as a Hugging Face `LongformerModel` directory that `from_pretrained` loads, with the
        tokenizer of the Hugging Face directory `tokenizer` if given."""
        hf.save_hf(self.config, self.state_dict(), directory, tokenizer)

    @classmethod
    def load(cls, directory: str | Path) -> LongformerModel:
        """A model that `save` wrote (the convert stage's data/model)."""
        config, state, _ = weights.load(directory)
        return load_state_dict_strict(cls(config), state)

    def save(self, directory: str | Path) -> None:
        """Our format: config.json + model.safetensors."""
        weights.save(directory, self.config, self.state_dict())


class ClassificationHead(nn.Module):
    def __init__(self, hidden_size: int, head: HeadConfig):
        super().__init__()
        self.dense = nn.Linear(hidden_size, head.dim)
        self.dropout = nn.Dropout(head.dropout)
        self.activation = HEAD_ACTIVATIONS[head.activation]()
        self.out = nn.Linear(head.dim, head.num_labels)

    def forward(self, cls: Tensor) -> Tensor:
        return self.out(self.dropout(self.activation(self.dropout(self.dense(cls)))))


class LongformerClassifier(nn.Module):
    """Encoder + head on the first (<s>/CLS) token, which gets global attention by default."""

    def __init__(self, config: LongformerConfig, head: HeadConfig | None = None):
        super().__init__()
        head = head or HeadConfig()
        self.head_config = dataclasses.replace(head, dim=head.dim or config.hidden_size)
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

    @classmethod
    def from_encoder(cls, encoder: LongformerModel, head: HeadConfig | None = None) -> LongformerClassifier:
        """A classifier around a pretrained encoder, with a freshly initialised head."""
        model = cls(encoder.config, head)
        model.encoder = encoder
        return model

    @classmethod
    def from_hf(cls, checkpoint: str | Path, head: HeadConfig | None = None, max_length: int | None = None,
                attention_window: int | list[int] | None = None) -> LongformerClassifier:
        """A classifier around `LongformerModel.from_hf(checkpoint, max_length, attention_window)`. A sequence
        classifier's checkpoint (what `save_hf` writes) brings its trained head, unless `head` asks for a new one;
        any other checkpoint gets a freshly initialised `head` (default: HeadConfig())."""
        config, state, trained = hf.convert_hf_classifier(checkpoint, max_length, attention_window)
        encoder = load_state_dict_strict(LongformerModel(config), state)
        if head or trained is None:
            return cls.from_encoder(encoder, head)
        model = cls.from_encoder(encoder, trained[0])
        load_state_dict_strict(model.head, trained[1])
        return model

    def save_hf(self, directory: str | Path, tokenizer: str | Path | None = None, labels: list[str] | None = None,
                tokenizer_max_length: int | None = None) -> bool:
        """Write a Hugging Face `LongformerForSequenceClassification` directory (labels named by `labels`), with the
        tokenizer of the Hugging Face directory `tokenizer` if given, truncating at tokenizer_max_length (default:
        the model's length). transformers' head is dense(hidden -> hidden) -> tanh -> out_proj: a head of another
        dim or activation cannot be written, and the directory then holds the encoder alone, with a warning.
        Returns whether the head was written."""
        return hf.save_hf_classifier(self.config, self.state_dict(), self.head_config, directory, tokenizer, labels,
                                     tokenizer_max_length)

    @classmethod
    def load(cls, directory: str | Path) -> LongformerClassifier:
        """A classifier that `save` wrote (the train stage's data/train)."""
        config, state, head = weights.load(directory, head=True)
        return load_state_dict_strict(cls(config, head), state)

    def save(self, directory: str | Path, state: dict[str, Tensor] | None = None) -> None:
        """Our format: config.json + head.json + model.safetensors, of `state` (default: this model's weights)."""
        weights.save(directory, self.config, self.state_dict() if state is None else state, self.head_config)


class MaskedLMHead(nn.Module):
    """dense -> activation (config.lm_head_act) -> LayerNorm -> decoder, whose weight is the word embeddings' (tied)
    and bias its own: BERT's and RoBERTa's head. Initialised as they initialise it."""

    def __init__(self, config: LongformerConfig, init_std: float = 0.02):
        super().__init__()
        self.activation = kernels.ACTIVATIONS[config.lm_head_act]
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        nn.init.normal_(self.dense.weight, std=init_std)
        nn.init.zeros_(self.dense.bias)

    def forward(self, hidden: Tensor, word_embeddings: Tensor) -> Tensor:
        """(..., D) hidden states, (vocab, D) word embeddings -> (..., vocab) logits."""
        return F.linear(self.norm(self.activation(self.dense(hidden))), word_embeddings, self.bias)


class LongformerForMaskedLM(nn.Module):
    """Encoder + masked-LM head: what continued pretraining trains. Attention is local unless a global mask is
    given."""

    def __init__(self, config: LongformerConfig):
        super().__init__()
        self.encoder = LongformerModel(config)
        self.lm_head = MaskedLMHead(config)

    @property
    def config(self) -> LongformerConfig:
        return self.encoder.config

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                global_attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                predict: Tensor | None = None) -> Tensor:
        """-> logits (B, n, vocab); with `predict` (B, n, bool), those of the predicted tokens only, (P, vocab) in
        row-major order: the product with the vocabulary is the largest in the model, and training reads only the
        masked tokens' logits."""
        hidden = self.encoder(input_ids, attention_mask, global_attention_mask, token_type_ids)
        if predict is not None:
            hidden = hidden[predict]
        return self.lm_head(hidden, self.encoder.embeddings.word.weight)

    @classmethod
    def from_encoder(cls, encoder: LongformerModel, lm_head: dict[str, Tensor] | None = None) -> LongformerForMaskedLM:
        """A masked LM around `encoder`, with the head's tensors `lm_head` (named as in MaskedLMHead), or a new head
        initialised as BERT's and RoBERTa's where None."""
        model = cls(encoder.config)
        model.encoder = encoder
        if lm_head is not None:
            load_state_dict_strict(model.lm_head, lm_head, "the masked-LM head")
        return model

    @classmethod
    def from_hf(cls, checkpoint: str | Path, max_length: int | None = None,
                attention_window: int | list[int] | None = None) -> LongformerForMaskedLM:
        """As `LongformerModel.from_hf`, with the checkpoint's masked-LM head (BERT's `cls.predictions`, RoBERTa's
        and Longformer's `lm_head`), or a new one where it ships none."""
        config, state, lm_head = hf.convert_hf_checkpoint(checkpoint, max_length, attention_window)
        return cls.from_encoder(load_state_dict_strict(LongformerModel(config), state), lm_head)

    def save_hf(self, directory: str | Path, tokenizer: str | Path | None = None) -> None:
        """Write a Hugging Face `LongformerForMaskedLM` directory, with the tokenizer of the Hugging Face directory
        `tokenizer` if given: `transformers.pipeline("fill-mask", model=directory)` runs on it."""
        hf.save_hf_masked_lm(self.config, self.state_dict(), directory, tokenizer)

    @classmethod
    def load(cls, directory: str | Path) -> LongformerForMaskedLM:
        """A masked LM that `save` wrote (the pretrain stage's data/pretrained)."""
        encoder = LongformerModel.load(directory)
        lm_head = weights.load_lm_head(directory)
        if lm_head is None:
            raise WeightsMismatchError(f"{directory} holds an encoder without a masked-LM head "
                                       f"({weights.LM_HEAD_FILE} not found)")
        return cls.from_encoder(encoder, lm_head)

    def save(self, directory: str | Path, state: dict[str, Tensor] | None = None) -> None:
        """Our format: the encoder as `LongformerModel.save` writes it (what fine-tuning loads), the head beside it
        in lm_head.safetensors; of `state` (default: this model's weights)."""
        state = self.state_dict() if state is None else state
        parts = {prefix: {k.removeprefix(f"{prefix}."): v for k, v in state.items() if k.startswith(f"{prefix}.")}
                 for prefix in ("encoder", "lm_head")}
        weights.save(directory, self.config, parts["encoder"], lm_head=parts["lm_head"])


def load_state_dict_strict(model: M, state: dict[str, Tensor], what: str = "the weights") -> M:
    """model.load_state_dict(state), or a WeightsMismatchError naming every tensor that does not fit."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                        for k, v in expected.items() if k in state and state[k].shape != v.shape)
    if missing or unexpected or mis_shaped:
        parts = [f"{label} ({len(keys)}): {', '.join(keys[:10])}{' ...' if len(keys) > 10 else ''}"
                 for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                     ("shape mismatches", mis_shaped)) if keys]
        raise WeightsMismatchError(f"{what} do not match the model: " + "; ".join(parts))
    model.load_state_dict(state)
    return model
