"""Token counts of a fixed sample of real IMDb test reviews: the lengths bench.py's training-step figure runs at.

    python -m bench.imdb_sample 256 bench/results/imdb_lengths.json    # where ../shared/imdb is
    python -m bench.bench --imdb-lengths bench/results/imdb_lengths.json ...   # e.g. on a GPU machine without it
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

IMDB = Path(__file__).resolve().parents[2] / "shared" / "imdb"


def imdb_token_lengths(count: int, seed: int = 0) -> list[int]:
    """Token counts of `count` real IMDb test reviews under a RoBERTa-sized (50k) byte-level BPE.

    The hub's tokenizer is unreachable offline, so one is trained on IMDb's train split (same algorithm and
    vocabulary size as RoBERTa's); only the lengths matter for speed.
    """
    from datasets import load_dataset
    from tokenizers import ByteLevelBPETokenizer

    data = load_dataset("parquet", data_files={"train": str(IMDB / "train.parquet"),
                                               "test": str(IMDB / "test.parquet")})
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(data["train"].shuffle(seed=seed).select(range(10_000))["text"], vocab_size=50265,
                            show_progress=False)
    reviews = data["test"].shuffle(seed=seed).select(range(count))["text"]
    return [min(len(e.ids) + 2, 4096) for e in bpe.encode_batch(reviews)]  # + <s> and </s>


if __name__ == "__main__":
    count, out = int(sys.argv[1]), Path(sys.argv[2])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(imdb_token_lengths(count)) + "\n")
