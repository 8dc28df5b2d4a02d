"""Hugging Face checkpoints <-> our model: the library's only module that imports `transformers` (lazily).

* `convert_hf_checkpoint`: a Longformer, BERT or RoBERTa checkpoint (hub id or local directory) -> our config +
  state dict (renamed, q/k/v fused) + its masked-LM head if it ships one; a BERT or RoBERTa becomes a long
  Longformer the way the Longformer was made from RoBERTa.
* `save_hf`: our encoder -> a Hugging Face `LongformerModel` directory; `save_hf_masked_lm`: our masked LM -> a
  `LongformerForMaskedLM` directory; `save_hf_classifier`: our classifier -> a `LongformerForSequenceClassification`
  directory, whose head `convert_hf_classifier` reads back.
* `load_tokenizer`: a checkpoint directory's tokenizer.
Our own format (config + safetensors) lives in `longformer.weights`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import Tensor

from longformer.config import (BERT_FAMILY, ROBERTA_FAMILY, HeadConfig, LongformerConfig,
                               roberta_position_offset)
from longformer.errors import (CheckpointError, MissingInputError, PartialExportWarning, WeightsMismatchError,
                               reading)

CONFIG_FILE = "config.json"
FAMILIES = ROBERTA_FAMILY + BERT_FAMILY

# Hugging Face module names -> ours; one table, read both ways.
EMBEDDING_NAMES = {"word_embeddings": "word", "position_embeddings": "position",
                   "token_type_embeddings": "token_type", "LayerNorm": "norm"}
LAYER_NAMES = {
    "attention.self.query_global": "attn.query_global",
    "attention.self.key_global": "attn.key_global",
    "attention.self.value_global": "attn.value_global",
    "attention.output.dense": "attn_out",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "ffn_in",
    "output.dense": "ffn_out",
    "output.LayerNorm": "ffn_norm",
}
QKV_NAMES = ("attention.self.query", "attention.self.key", "attention.self.value")  # fused into our `attn.qkv`
HF_PREFIX = re.compile(r"^(longformer|roberta|bert)\.")  # task models keep the encoder under one of these
# Present in Hugging Face checkpoints, unused by the encoder.
IGNORED = re.compile(r"^(pooler\.|lm_head\.|cls\.|classifier\.|embeddings\.position_ids$)")
# Masked-LM heads: BERT's (`cls.predictions`) and RoBERTa's or Longformer's (`lm_head`) -> ours (`MaskedLMHead`).
# Their decoder's weight is the word embeddings and its bias the head's `bias`: tied, not read.
LM_HEAD_NAMES = {"cls.predictions.transform.dense": "dense", "cls.predictions.transform.LayerNorm": "norm",
                 "cls.predictions": "", "lm_head.dense": "dense", "lm_head.layer_norm": "norm", "lm_head": ""}
LM_HEAD_PREFIXES = ("cls.", "lm_head.")


# ---------------------------------------------------------------------------------------------------------------
# Names and tensors

def rename_hf_state_dict(hf_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename Hugging Face Longformer/BERT/RoBERTa encoder tensors to ours and fuse query/key/value into `qkv`."""
    state: dict[str, Tensor] = {}
    qkv: dict[str, dict[str, Tensor]] = {}  # our qkv name -> {HF part: tensor}
    for hf_name, tensor in hf_state.items():
        name = HF_PREFIX.sub("", hf_name)
        if IGNORED.match(name):
            continue
        module, kind = name.rsplit(".", 1)
        embedding = re.fullmatch(r"embeddings\.(\w+)", module)
        layer = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)", module)
        if embedding and embedding[1] in EMBEDDING_NAMES:
            state[f"embeddings.{EMBEDDING_NAMES[embedding[1]]}.{kind}"] = tensor
        elif layer and layer[2] in LAYER_NAMES:
            state[f"layers.{layer[1]}.{LAYER_NAMES[layer[2]]}.{kind}"] = tensor
        elif layer and layer[2] in QKV_NAMES:
            qkv.setdefault(f"layers.{layer[1]}.attn.qkv.{kind}", {})[layer[2]] = tensor
        else:
            raise WeightsMismatchError(f"checkpoint tensor {hf_name!r} has no counterpart in our model")
    for name, parts in qkv.items():
        missing = [part for part in QKV_NAMES if part not in parts]
        if missing:
            raise WeightsMismatchError(f"checkpoint lacks {', '.join(missing)} for {name}")
        state[name] = torch.cat([parts[part] for part in QKV_NAMES])
    return state


def to_hf_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our encoder's tensors under Hugging Face `LongformerModel` names, `qkv` split into query/key/value."""
    embedding_names = {ours: hf for hf, ours in EMBEDDING_NAMES.items()}
    layer_names = {ours: hf for hf, ours in LAYER_NAMES.items()}
    hf: dict[str, Tensor] = {}
    for name, tensor in state.items():
        module, kind = name.rsplit(".", 1)
        top, rest = module.split(".", 1)
        if top == "embeddings":
            hf[f"embeddings.{embedding_names[rest]}.{kind}"] = tensor
            continue
        index, part = rest.split(".", 1)
        if part == "attn.qkv":
            for hf_part, chunk in zip(QKV_NAMES, tensor.chunk(3)):
                hf[f"encoder.layer.{index}.{hf_part}.{kind}"] = chunk
        else:
            hf[f"encoder.layer.{index}.{layer_names[part]}.{kind}"] = tensor
    return hf


def add_global_projections(state: dict[str, Tensor], num_layers: int) -> None:
    """A BERT or RoBERTa has no global projections: they start as copies of the local query, key and value
    (the Longformer paper, section 5), in place."""
    for i in range(num_layers):
        for kind in ("weight", "bias"):
            for name, part in zip(("query", "key", "value"), state[f"layers.{i}.attn.qkv.{kind}"].chunk(3)):
                state[f"layers.{i}.attn.{name}_global.{kind}"] = part.clone()


def resize(config: LongformerConfig, state: dict[str, Tensor], max_length: int | None = None,
           attention_window: int | list[int] | None = None) -> LongformerConfig:
    """Set the attention windows and the number of positions (None keeps the checkpoint's); the state's position
    table is changed in place, the new config returned.

    A longer table is the pretrained rows copied over and over, as the Longformer was made from RoBERTa: the
    model has never seen the positions past the original ones, but each copy starts from a sensible embedding.
    """
    changes: dict = {}
    if attention_window is not None:
        changes["attention_window"] = attention_window
    if max_length is not None and max_length != config.max_length:
        table = state["embeddings.position.weight"]  # (offset + positions, D)
        offset = config.position_offset
        pretrained = table[offset:]
        rows = pretrained.repeat(math.ceil(max_length / len(pretrained)), 1)[:max_length]
        state["embeddings.position.weight"] = torch.cat([table[:offset], rows])
        changes["max_position_embeddings"] = offset + max_length
    return dataclasses.replace(config, **changes)


# ---------------------------------------------------------------------------------------------------------------
# Reading checkpoints

def is_hub_id(checkpoint: str) -> bool:
    return not Path(checkpoint).exists() and checkpoint.count("/") == 1 and not checkpoint.startswith((".", "/"))


def unreachable_error(checkpoint: str, error: Exception) -> CheckpointError:
    return CheckpointError(
        f"could not fetch {checkpoint!r} from the Hugging Face hub ({type(error).__name__}: {error}). "
        "Without network access, download it on a machine that has it "
        f"(`hf download {checkpoint} --local-dir DIR`) and set model.checkpoint to that local directory."
    )


def read_hf_config(checkpoint: str):
    from transformers import AutoConfig

    if is_hub_id(checkpoint):
        try:
            hf_config = AutoConfig.from_pretrained(checkpoint)
        except OSError as error:
            raise unreachable_error(checkpoint, error) from error
    else:
        if not (Path(checkpoint) / CONFIG_FILE).is_file():
            raise CheckpointError(f"{checkpoint!r} is neither a Hugging Face hub id nor a directory with a "
                                  f"{CONFIG_FILE}")
        with reading(Path(checkpoint) / CONFIG_FILE):
            hf_config = AutoConfig.from_pretrained(checkpoint)
    if hf_config.model_type not in FAMILIES:
        raise CheckpointError(f"{checkpoint!r} is a {hf_config.model_type!r} checkpoint, which cannot be turned "
                              f"into a Longformer: use a Longformer, BERT or RoBERTa checkpoint "
                              f"(model_type {', '.join(FAMILIES)})")
    return hf_config


def load_tokenizer(directory: str | Path):
    """The tokenizer of a Hugging Face checkpoint directory (the download stage's output)."""
    from transformers import AutoTokenizer

    if not Path(directory).is_dir():
        raise MissingInputError(f"{directory} not found")
    with reading(directory):
        return AutoTokenizer.from_pretrained(directory)


def convert_hf_checkpoint(checkpoint: str | Path, max_length: int | None = None,
                          attention_window: int | list[int] | None = None
                          ) -> tuple[LongformerConfig, dict[str, Tensor], dict[str, Tensor] | None]:
    """A hub id or local Hugging Face directory (Longformer, BERT or RoBERTa) -> our config, the encoder's state
    dict and the masked-LM head's (named as in `MaskedLMHead`; None where the checkpoint ships no head).

    max_length (tokens) and attention_window (one, or one per layer) default to the checkpoint's; a BERT or
    RoBERTa has no window and gets 512. A Longformer cannot be given more positions than it was trained with.
    """
    config, state, lm_head, _ = _convert(str(checkpoint), max_length, attention_window)
    return config, state, lm_head


def convert_hf_classifier(checkpoint: str | Path, max_length: int | None = None,
                          attention_window: int | list[int] | None = None
                          ) -> tuple[LongformerConfig, dict[str, Tensor], tuple[HeadConfig, dict[str, Tensor]] | None]:
    """As `convert_hf_checkpoint`, with the classification head of a RoBERTa-family sequence classifier
    (`HF_CLASSIFIERS`, what `save_hf_classifier` writes) as our head config and tensors (named as in
    `ClassificationHead`) in place of a masked-LM head; None for any other checkpoint. The checkpoint is read once."""
    config, state, _, head = _convert(str(checkpoint), max_length, attention_window)
    return config, state, head


def _convert(checkpoint: str, max_length: int | None, attention_window: int | list[int] | None
             ) -> tuple[LongformerConfig, dict[str, Tensor], dict[str, Tensor] | None,
                        tuple[HeadConfig, dict[str, Tensor]] | None]:
    """The checkpoint, loaded once, as our config, encoder state, masked-LM head and classification head."""
    hf_config = read_hf_config(checkpoint)
    if not getattr(hf_config, "tie_word_embeddings", True):
        raise CheckpointError(f"{checkpoint!r} has a masked-LM decoder of its own (tie_word_embeddings=false); "
                              "only heads whose decoder is the word embeddings can be converted")
    classifier = bool(set(hf_config.architectures or ()) & set(HF_CLASSIFIERS))
    hf_model, info = load_hf_model(checkpoint, hf_config, classifier)
    missing = set(info.get("missing_keys") or ())
    head_missing = {name for name in missing if name.startswith(LM_HEAD_PREFIXES)}
    # No head at all: every head tensor missing but the decoder's weight, which is the word embeddings.
    head_shipped = [name for name in hf_model.state_dict() if name.startswith(LM_HEAD_PREFIXES)
                    and name not in missing and not name.endswith("decoder.weight")]
    if not head_shipped:
        missing -= head_missing
    problems = [f"missing tensors: {', '.join(sorted(missing))}"] if missing else []
    problems += [f"{name}: checkpoint {tuple(found)} vs config {tuple(wanted)}"
                 for name, found, wanted in sorted(info.get("mismatched_keys") or [])]
    if problems:
        raise WeightsMismatchError(f"checkpoint {checkpoint!r} does not match its config.json: " + "; ".join(problems))
    try:
        config = LongformerConfig.from_hf_dict(hf_model.config.to_dict())
    except ValueError as error:
        raise CheckpointError(f"cannot convert {checkpoint!r}: {error}") from error
    hf_state = hf_model.state_dict()
    state = rename_hf_state_dict(hf_state)
    lm_head = rename_hf_lm_head(hf_state) if head_shipped and not head_missing else None
    if hf_config.model_type == "longformer":
        if max_length is not None and max_length > config.max_length:
            raise CheckpointError(f"{checkpoint!r} is a Longformer trained on {config.max_length} positions; it "
                                  f"cannot take max_length={max_length}. Use at most {config.max_length}, or extend a "
                                  "BERT or RoBERTa checkpoint instead")
    else:
        add_global_projections(state, config.num_layers)
    head = hf_classifier_head(hf_config, hf_state) if classifier else None
    return resize(config, state, max_length, attention_window), state, lm_head, head


def load_hf_model(checkpoint: str, hf_config, classifier: bool):
    """transformers' sequence classifier (`classifier`) or masked LM of the checkpoint's family, and its loading info:
    the head's tensors are reported missing where the checkpoint ships the encoder alone, and mismatched shapes are
    reported instead of raised."""
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    verbosity, progress_bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # its load report would call a missing head corrupt: convert says what it does
    if not is_hub_id(checkpoint):  # a local load's bar would bury the stage's own lines; a download keeps its bar
        hf_logging.disable_progress_bar()
    try:
        with nullcontext() if is_hub_id(checkpoint) else reading(checkpoint):
            auto = AutoModelForSequenceClassification if classifier else AutoModelForMaskedLM
            return auto.from_pretrained(checkpoint, config=hf_config, dtype=torch.float32, output_loading_info=True,
                                        ignore_mismatched_sizes=True)
    except OSError as error:  # a hub id's download (a local directory's errors come out of `reading`)
        raise unreachable_error(checkpoint, error) from error
    finally:
        hf_logging.set_verbosity(verbosity)
        if progress_bars:
            hf_logging.enable_progress_bar()


def rename_hf_lm_head(hf_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The masked-LM head's tensors of a transformers masked LM's state dict, named as in `MaskedLMHead`."""
    head = {}
    for hf_name, tensor in hf_state.items():
        module, kind = hf_name.rsplit(".", 1)
        if module in LM_HEAD_NAMES:
            head[f"{LM_HEAD_NAMES[module]}.{kind}".lstrip(".")] = tensor
    return head


# ---------------------------------------------------------------------------------------------------------------
# Writing Hugging Face checkpoints

def to_hf_config(config: LongformerConfig, **extra):
    """Our encoder's config as a transformers `LongformerConfig` (extra: e.g. a classifier's labels)."""
    from transformers import LongformerConfig as HFLongformerConfig

    hf_offset = roberta_position_offset(config.pad_token_id)  # where transformers' Longformer puts the first token
    return HFLongformerConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads, intermediate_size=config.intermediate_size,
        attention_window=list(config.attention_window), max_position_embeddings=hf_offset + config.max_length,
        type_vocab_size=config.type_vocab_size, pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, layer_norm_eps=config.layer_norm_eps,
        hidden_dropout_prob=config.hidden_dropout, attention_probs_dropout_prob=config.attention_dropout,
        hidden_act=config.hidden_act, **extra)


def to_hf_encoder_state(config: LongformerConfig, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our encoder's tensors as transformers' `LongformerModel` holds them."""
    hf_state = to_hf_state_dict(state)
    # Hugging Face's Longformer counts positions as RoBERTa does: move a table that starts elsewhere (BERT's, at 0)
    # there, with zero rows for padding below it.
    table = state["embeddings.position.weight"]
    hf_offset = roberta_position_offset(config.pad_token_id)
    head = (table[:hf_offset] if config.position_offset == hf_offset
            else table.new_zeros(hf_offset, table.shape[1]))
    hf_state["embeddings.position_embeddings.weight"] = torch.cat([head, table[config.position_offset:]])
    return {k: v.detach().cpu() for k, v in hf_state.items()}


def save_hf(config: LongformerConfig, state: dict[str, Tensor], directory: str | Path,
            tokenizer: str | Path | None = None, tokenizer_max_length: int | None = None) -> None:
    """Write our encoder as a Hugging Face `LongformerModel` directory (config + safetensors), with the tokenizer of
    the checkpoint directory `tokenizer` if given, so that `transformers`' `from_pretrained` loads it."""
    from transformers import LongformerModel as HFLongformerModel

    model = HFLongformerModel(to_hf_config(config), add_pooling_layer=False)
    model.load_state_dict(to_hf_encoder_state(config, state), strict=True)
    model.save_pretrained(directory)
    save_tokenizer(tokenizer, directory, tokenizer_max_length or config.max_length)


def save_hf_masked_lm(config: LongformerConfig, state: dict[str, Tensor], directory: str | Path,
                      tokenizer: str | Path | None = None) -> None:
    """Write our masked LM (state: `encoder.*` and `lm_head.*`) as a Hugging Face `LongformerForMaskedLM` directory,
    with the tokenizer of the checkpoint directory `tokenizer` if given."""
    from transformers import LongformerForMaskedLM as HFLongformerForMaskedLM

    if config.lm_head_act != "gelu":
        raise CheckpointError(f"transformers' Longformer masked-LM head computes gelu; this head computes "
                              f"{config.lm_head_act} (a BERT's hidden_act), so it cannot be written as one")
    encoder = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    hf_state = {f"longformer.{k}": v for k, v in to_hf_encoder_state(config, encoder).items()}
    hf_names = {ours: theirs for theirs, ours in LM_HEAD_NAMES.items() if theirs.startswith("lm_head")}
    for name, tensor in state.items():
        if name.startswith("lm_head."):
            module, _, kind = name.removeprefix("lm_head.").rpartition(".")
            hf_state[f"{hf_names[module]}.{kind}"] = tensor.detach().cpu()
    hf_state["lm_head.decoder.weight"] = hf_state["longformer.embeddings.word_embeddings.weight"]
    hf_state["lm_head.decoder.bias"] = hf_state["lm_head.bias"]
    model = HFLongformerForMaskedLM(to_hf_config(config))
    model.load_state_dict(hf_state, strict=True)
    model.save_pretrained(directory)
    save_tokenizer(tokenizer, directory, config.max_length)


def save_tokenizer(tokenizer: str | Path | None, directory: str | Path, max_length: int) -> None:
    """The tokenizer of the checkpoint directory `tokenizer` (if given) into `directory`, truncating at max_length."""
    if tokenizer is not None:
        hf_tokenizer = load_tokenizer(tokenizer)
        hf_tokenizer.model_max_length = max_length
        hf_tokenizer.save_pretrained(directory)


# ---------------------------------------------------------------------------------------------------------------
# Classifiers: transformers' `LongformerForSequenceClassification`, whose head is dense(hidden -> hidden) -> tanh ->
# dropout -> out_proj on the first token (with dropout before dense too): ours, when head.dim is the hidden size
# and the activation tanh (dropout only acts in training).

HF_HEAD_NAMES = {"classifier.dense": "dense", "classifier.out_proj": "out"}  # theirs -> ours (`head.` in a model)
# RoBERTa-family task models that carry such a head: `from_hf` reads it back.
HF_CLASSIFIERS = ("LongformerForSequenceClassification", "RobertaForSequenceClassification",
                  "XLMRobertaForSequenceClassification", "CamembertForSequenceClassification")


def hf_head_problem(head: HeadConfig, hidden_size: int) -> str | None:
    """Why transformers' Longformer classification head cannot hold `head`; None if it can."""
    reasons = ([f"head.dim is {head.dim}, not the hidden size {hidden_size}"] if head.dim != hidden_size else []) + \
        ([f"head.activation is {head.activation}, not tanh"] if head.activation != "tanh" else [])
    return " and ".join(reasons) or None


def save_hf_classifier(config: LongformerConfig, state: dict[str, Tensor], head: HeadConfig, directory: str | Path,
                       tokenizer: str | Path | None = None, labels: list[str] | None = None,
                       tokenizer_max_length: int | None = None) -> bool:
    """Write our classifier (state: `encoder.*` and `head.*`) as a Hugging Face `LongformerForSequenceClassification`
    directory, labels named by `labels` (default LABEL_0, ...). A head transformers cannot express is left out: the
    directory then holds the encoder alone (`LongformerModel`), with a PartialExportWarning that says why. Returns
    whether the head was written."""
    from transformers import LongformerForSequenceClassification

    encoder = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    problem = hf_head_problem(head, config.hidden_size)
    if problem:
        warnings.warn(f"the transformers directory gets the encoder only: transformers' Longformer classification "
                      f"head is dense(hidden -> hidden) -> tanh -> out_proj, and {problem}", PartialExportWarning,
                      stacklevel=3)
        save_hf(config, encoder, directory, tokenizer, tokenizer_max_length)
        return False
    labels = labels or [f"LABEL_{i}" for i in range(head.num_labels)]
    # classifier_dropout: the head's own dropout, read back by hf_classifier_head (transformers' Longformer trains its
    # head with hidden_dropout_prob; dropout does nothing at inference)
    model = LongformerForSequenceClassification(to_hf_config(
        config, num_labels=head.num_labels, id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)}, classifier_dropout=head.dropout))
    hf_state = {f"longformer.{k}": v for k, v in to_hf_encoder_state(config, encoder).items()}
    hf_state |= {f"{theirs}.{kind}": state[f"head.{ours}.{kind}"].detach().cpu()
                 for theirs, ours in HF_HEAD_NAMES.items() for kind in ("weight", "bias")}
    model.load_state_dict(hf_state, strict=True)
    model.save_pretrained(directory)
    save_tokenizer(tokenizer, directory, tokenizer_max_length or config.max_length)
    return True


def hf_classifier_head(hf_config, hf_state: dict[str, Tensor]) -> tuple[HeadConfig, dict[str, Tensor]]:
    """The classification head of a RoBERTa-family sequence classifier's state dict, as our head config and tensors
    (named as in `ClassificationHead`)."""
    dropout = getattr(hf_config, "classifier_dropout", None)
    head = HeadConfig(dim=hf_config.hidden_size, activation="tanh", num_labels=hf_config.num_labels,
                      dropout=hf_config.hidden_dropout_prob if dropout is None else dropout)
    return head, {f"{ours}.{kind}": hf_state[f"{theirs}.{kind}"]
                  for theirs, ours in HF_HEAD_NAMES.items() for kind in ("weight", "bias")}
