"""The offline sample: synthetic reviews whose label is decided by a few words that can sit anywhere, some only past
512 tokens; and the text the tiny checkpoint's tokenizer is trained on. Plain Python: the download stage needs it
without the data libraries."""

from __future__ import annotations

import random


NEUTRAL = ("the a an this that film movie story plot scene actor actress director camera music script cast "
           "character ending minute hour time year night city house road friend family father mother brother "
           "sister police doctor teacher war train ship island village letter dream secret money game song "
           "and but or so then while after before when where because although with without about over under "
           "into through again later finally suddenly slowly quickly almost only also very quite rather more "
           "is was are were has had does did will would can could should may might seems looks feels turns "
           "goes comes makes takes gives finds tells shows leaves meets runs walks talks waits opens closes "
           "first second third last next other same different old new young long short big small early late "
           "red blue green dark bright quiet loud cold warm open closed inside outside north south east west "
           "he she they we it his her their our its who what which one two three four five six ten hundred").split()
POSITIVE = "wonderful brilliant superb delightful masterpiece moving excellent charming gripping beautiful".split()
NEGATIVE = "awful boring dreadful terrible tedious clumsy dull painful pointless annoying".split()


def sample_review(rng: random.Random) -> tuple[str, int]:
    """One review: neutral filler with a few words of one polarity; in some long ones only past ~600 words."""
    label = rng.randint(0, 1)
    num_words = rng.randint(30, 400) if rng.random() < 0.6 else rng.randint(400, 900)
    words = [rng.choice(NEUTRAL) for _ in range(num_words)]
    cues = POSITIVE if label else NEGATIVE
    start = 600 if num_words > 700 and rng.random() < 0.3 else 0  # the decisive words only past 512 tokens
    for _ in range(max(2, num_words // 50)):
        words.insert(rng.randint(start, len(words)), rng.choice(cues))
    return " ".join(words).capitalize() + ".", label


def sample_splits(num_train: int = 3000, num_test: int = 1000,
                  seed: int = 0) -> dict[str, tuple[list[str], list[int]]]:
    """{"train": (texts, labels), "test": (texts, labels)}."""
    rng = random.Random(seed)
    splits = {}
    for split, count in (("train", num_train), ("test", num_test)):
        texts, labels = zip(*(sample_review(rng) for _ in range(count)))
        splits[split] = list(texts), list(labels)
    return splits


def sample_corpus() -> list[str]:
    """Text for the tiny checkpoint's tokenizer: the sample's words, so it covers them."""
    rng = random.Random(1)
    return [" ".join(NEUTRAL + POSITIVE + NEGATIVE)] * 4 + [sample_review(rng)[0] for _ in range(200)]
