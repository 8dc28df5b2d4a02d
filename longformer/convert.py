"""Hugging Face checkpoints <-> our model: the only module that imports `transformers`.

* `download_checkpoint`: a hub id, a local directory or `tiny` -> a directory in Hugging Face layout
  (config, weights, tokenizer).
* `convert_hf_checkpoint`: such a checkpoint -> our config + state dict (renamed, q/k/v fused).
Saving and loading our own format lives in `longformer.checkpoint`.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor

from longformer.config import LongformerConfig
from longformer.model import CheckpointMismatchError

TINY = "tiny"
CONFIG_FILE = "config.json"

# Hugging Face name -> our name (applied after stripping a leading "longformer.").
RENAMES = [
    (r"embeddings\.word_embeddings\.", "embeddings.word."),
    (r"embeddings\.position_embeddings\.", "embeddings.position."),
    (r"embeddings\.token_type_embeddings\.", "embeddings.token_type."),
    (r"embeddings\.LayerNorm\.", "embeddings.norm."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)_global\.", r"layers.\1.attn.\2_global."),
    (r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.", r"layers.\1.attn.\2."),  # fused below
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.attn_out."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"layers.\1.attn_norm."),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.ffn_in."),
    (r"encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.ffn_out."),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"layers.\1.ffn_norm."),
]
# Present in Hugging Face checkpoints, unused by the encoder.
IGNORED = re.compile(r"^(pooler\.|lm_head\.|embeddings\.position_ids$)")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be found or read."""


def rename_hf_state_dict(hf_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename Hugging Face `LongformerModel` tensors to ours and fuse query/key/value into `qkv`."""
    state: dict[str, Tensor] = {}
    for name, tensor in hf_state.items():
        name = name.removeprefix("longformer.")
        if IGNORED.match(name):
            continue
        for pattern, replacement in RENAMES:
            new_name, hits = re.subn(f"^{pattern}", replacement, name)
            if hits:
                state[new_name] = tensor
                break
        else:
            raise CheckpointMismatchError(f"checkpoint tensor {name!r} has no counterpart in our model")
    for qkv_prefix in sorted({k.rsplit(".", 2)[0] for k in state if re.search(r"\.attn\.query\.", k)}):
        for kind in ("weight", "bias"):
            parts = [state.pop(f"{qkv_prefix}.{p}.{kind}") for p in ("query", "key", "value")]
            state[f"{qkv_prefix}.qkv.{kind}"] = torch.cat(parts, dim=0)
    return state


def _is_hub_id(checkpoint: str) -> bool:
    return not Path(checkpoint).exists() and checkpoint.count("/") == 1 and not checkpoint.startswith((".", "/"))


def _unreachable(checkpoint: str, error: Exception) -> CheckpointError:
    return CheckpointError(
        f"could not fetch {checkpoint!r} from the Hugging Face hub ({type(error).__name__}: {error}). "
        "Without network access, download it on a machine that has it "
        f"(`hf download {checkpoint} --local-dir DIR`) and set model.checkpoint to that local directory."
    )


def convert_hf_checkpoint(checkpoint: str | Path) -> tuple[LongformerConfig, dict[str, Tensor]]:
    """A hub id or local Hugging Face directory -> our config and state dict (every tensor accounted for)."""
    from transformers import LongformerModel as HFLongformerModel

    checkpoint = str(checkpoint)
    if not _is_hub_id(checkpoint) and not (Path(checkpoint) / CONFIG_FILE).is_file():
        raise CheckpointError(f"{checkpoint!r} is neither a Hugging Face hub id nor a directory with a {CONFIG_FILE}")
    try:
        # Mismatched shapes are reported in `info` (and refused below) instead of a bare error.
        hf_model, info = HFLongformerModel.from_pretrained(checkpoint, add_pooling_layer=False,
                                                           output_loading_info=True, ignore_mismatched_sizes=True)
    except OSError as error:
        if _is_hub_id(checkpoint):
            raise _unreachable(checkpoint, error) from error
        raise CheckpointError(f"could not read the checkpoint in {checkpoint!r}: {error}") from error
    problems = [f"missing tensors: {', '.join(sorted(info['missing_keys']))}"] if info.get("missing_keys") else []
    problems += [f"{name}: checkpoint {tuple(found)} vs config {tuple(wanted)}"
                 for name, found, wanted in sorted(info.get("mismatched_keys") or [])]
    if problems:
        raise CheckpointMismatchError(f"checkpoint {checkpoint!r} does not match its config.json: " + "; ".join(problems))
    config = LongformerConfig.from_hf_dict(hf_model.config.to_dict())
    return config, rename_hf_state_dict(hf_model.state_dict())


def download_checkpoint(checkpoint: str, out_dir: str | Path, sample_texts: Iterable[str] = ()) -> None:
    """Hub id / local directory / `tiny` -> `out_dir` with config, weights and tokenizer (HF layout)."""
    from transformers import AutoTokenizer
    from transformers import LongformerModel as HFLongformerModel

    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    if checkpoint == TINY:
        build_tiny_checkpoint(out_dir, sample_texts)
        return
    if Path(checkpoint).is_dir():
        shutil.copytree(checkpoint, out_dir)
        return
    if not _is_hub_id(checkpoint):
        raise CheckpointError(f"model.checkpoint {checkpoint!r} is not '{TINY}', a local directory, "
                              "nor a hub id like 'allenai/longformer-base-4096'")
    try:
        model = HFLongformerModel.from_pretrained(checkpoint, add_pooling_layer=False)
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
