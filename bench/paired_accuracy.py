"""Two experiments' test predictions compared review by review: the accuracy difference with its paired standard
error (McNemar), overall and on the reviews longer than a token count.

    dvc exp branch minilm-long-4096 long && git show long:metrics/predictions.csv > long.csv
    dvc exp branch minilm-trunc-512 trunc && git show trunc:metrics/predictions.csv > trunc.csv
    python -m bench.paired_accuracy long.csv trunc.csv --dataset ../shared/imdb --tokenizer data/checkpoint

Both files must hold the same test reviews in the same order (the evaluate stage writes them in the test split's
order, so: the same data.* params). Lengths are counted with the tokenizer of --tokenizer, as the tokenize stage
counts them, on data.dataset's test split taken as the tokenize stage takes it (all of it: data.test_limit 0 or
25000).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from longformer.hf import load_tokenizer
from longformer.pipeline.data import load_raw
from longformer.pipeline.metrics import PairedDifference, read_predictions


def paired(a_right: np.ndarray, b_right: np.ndarray) -> str:
    """`a - b` in accuracy points, with the paired standard error, from per-review correctness."""
    d = PairedDifference.of(a_right, b_right)
    return (f"{d.n} reviews: {d.accuracy_a:.4f} against {d.accuracy_b:.4f}, difference {100 * d.difference:+.2f} "
            f"points (paired standard error {100 * d.standard_error:.2f}, z = {d.z:.1f}); only A right on {d.only_a}, "
            f"only B on {d.only_b}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path, help="predictions.csv of experiment A (actual,predicted)")
    parser.add_argument("b", type=Path, help="predictions.csv of experiment B")
    parser.add_argument("--dataset", help="data.dataset, to split the reviews by length")
    parser.add_argument("--tokenizer", type=Path, default=Path("data/checkpoint"))
    parser.add_argument("--longer-than", type=int, default=512)
    args = parser.parse_args()

    a, b = read_predictions(args.a), read_predictions(args.b)
    if a.shape != b.shape or not (a[:, 0] == b[:, 0]).all():
        raise SystemExit("the two files do not hold the same test reviews in the same order")
    a_right, b_right = a[:, 0] == a[:, 1], b[:, 0] == b[:, 1]
    print("all", paired(a_right, b_right))
    if args.dataset:
        texts = list(load_raw(args.dataset)["test"]["text"])  # a datasets Column is not a list the tokenizer takes
        if len(texts) != len(a):
            raise SystemExit(f"{args.dataset}'s test split has {len(texts)} reviews, the predictions {len(a)}")
        ids = load_tokenizer(args.tokenizer)(texts, add_special_tokens=True, verbose=False)["input_ids"]
        long = np.array([len(x) > args.longer_than for x in ids])
        print(f"over {args.longer_than} tokens", paired(a_right[long], b_right[long]))
        print(f"{args.longer_than} tokens or fewer", paired(a_right[~long], b_right[~long]))


if __name__ == "__main__":
    main()
