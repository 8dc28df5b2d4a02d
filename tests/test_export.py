"""The classifier where users deploy it: the ONNX file on onnxruntime against our model at every length, and the
transformers directory (`save_hf` / `from_hf`) against our model, through transformers' own classes and pipeline."""

import random
import warnings

import numpy as np
import pytest
import torch

from longformer import HeadConfig, LongformerClassifier, LongformerConfig
from longformer.errors import PartialExportWarning
from longformer.onnx import OnnxClassifier, export_onnx
from tests.helpers import SHARED_IMDB

pytestmark = pytest.mark.slow  # every ONNX export traces the model (~15 s)

WINDOWS = [8, 4, 256]  # full windows per layer: blocks of 4, 2 and (the most an exported block takes) 64 queries
CONFIG = dict(vocab_size=120, hidden_size=32, num_layers=3, num_heads=4, intermediate_size=64,
              attention_window=WINDOWS, max_position_embeddings=202, pad_token_id=1)  # 200 tokens at most


def random_ids(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A right-padded batch of random reviews of the given lengths: <s> ... </s>, ids above the specials."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.full((len(lengths), max(lengths)), CONFIG["pad_token_id"], dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, n in enumerate(lengths):
        input_ids[i, :n] = torch.randint(5, CONFIG["vocab_size"], (n,), generator=generator)
        input_ids[i, 0], input_ids[i, n - 1] = 0, 2
        attention_mask[i, :n] = 1
    return input_ids, attention_mask


@pytest.fixture(scope="module")
def relu_classifier() -> LongformerClassifier:
    """A head transformers cannot express (relu, dim 24): the ONNX file still holds all of it."""
    torch.manual_seed(0)
    return LongformerClassifier(LongformerConfig(**CONFIG), HeadConfig(dim=24, activation="relu", num_labels=3)).eval()


@pytest.fixture(scope="module")
def onnx_classifier(relu_classifier, tmp_path_factory) -> OnnxClassifier:
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(relu_classifier, path)
    assert not relu_classifier.training
    return OnnxClassifier(path)


def test_onnx_equals_ours_at_every_length(relu_classifier, onnx_classifier):
    """One file, every length from 1 token to the maximum: under, at and over each layer's window, many windows."""
    max_length = relu_classifier.config.max_length
    worst = 0.0
    with torch.no_grad():
        for n in range(1, max_length + 1):
            input_ids, attention_mask = random_ids([n], seed=n)
            ours = relu_classifier(input_ids, attention_mask).numpy()
            worst = max(worst, float(np.abs(onnx_classifier.logits(input_ids, attention_mask) - ours).max()))
    assert worst <= 1e-4


@pytest.mark.parametrize("lengths", [[1, 2], [200, 1, 17, 9, 100], [7, 8, 16, 15, 33], [64, 200]])
def test_onnx_equals_ours_in_padded_batches(relu_classifier, onnx_classifier, lengths):
    input_ids, attention_mask = random_ids(lengths, seed=len(lengths))
    with torch.no_grad():
        ours = relu_classifier(input_ids, attention_mask).numpy()
    theirs = onnx_classifier.logits(input_ids, attention_mask)
    assert theirs.shape == (len(lengths), 3)
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-4)
    for i, n in enumerate(lengths):  # padding changes nothing: each review alone gives its row
        alone = onnx_classifier.logits(input_ids[i:i + 1, :n], attention_mask[i:i + 1, :n])
        np.testing.assert_allclose(alone[0], theirs[i], rtol=0, atol=1e-5)


def test_a_head_transformers_cannot_express_exports_the_encoder_with_a_warning(relu_classifier, tmp_path):
    from transformers import AutoConfig, LongformerModel

    with pytest.warns(PartialExportWarning, match="head.dim is 24, not the hidden size 32 and head.activation is "
                                                  "relu, not tanh"):
        assert relu_classifier.save_hf(tmp_path) is False
    assert AutoConfig.from_pretrained(tmp_path).architectures == ["LongformerModel"]
    encoder = LongformerModel.from_pretrained(tmp_path).eval()
    input_ids, attention_mask = random_ids([37, 20])
    with torch.no_grad():
        global_mask = torch.zeros_like(input_ids)
        global_mask[:, 0] = 1
        theirs = encoder(input_ids, attention_mask=attention_mask, global_attention_mask=global_mask)
        ours = relu_classifier.encoder(input_ids, attention_mask, global_mask)
    np.testing.assert_allclose(theirs.last_hidden_state[attention_mask.bool()], ours[attention_mask.bool()],
                               rtol=0, atol=1e-5)


def test_tanh_head_round_trip_through_transformers(tmp_path, monkeypatch):
    """save_hf -> transformers' LongformerForSequenceClassification gives our logits, with our label names;
    from_hf reads the trained head back, loading the checkpoint once."""
    from transformers import LongformerForSequenceClassification

    from longformer import hf

    loads = []
    monkeypatch.setattr(hf, "load_hf_model", lambda *args, real=hf.load_hf_model: loads.append(args) or real(*args))

    torch.manual_seed(1)
    ours = LongformerClassifier(LongformerConfig(**CONFIG), HeadConfig(dim=0, dropout=0.2)).eval()
    assert ours.head_config.dim == 32  # 0: the hidden size
    with warnings.catch_warnings():
        warnings.simplefilter("error", PartialExportWarning)
        assert ours.save_hf(tmp_path, labels=["negative", "positive"]) is True
    theirs = LongformerForSequenceClassification.from_pretrained(tmp_path).eval()
    assert theirs.config.id2label == {0: "negative", 1: "positive"}
    input_ids, attention_mask = random_ids([61, 3, 17, 1])
    with torch.no_grad():
        expected = ours(input_ids, attention_mask)
        torch.testing.assert_close(theirs(input_ids, attention_mask=attention_mask).logits, expected, rtol=0,
                                   atol=1e-5)
        again = LongformerClassifier.from_hf(tmp_path).eval()
        assert again.head_config == ours.head_config and len(loads) == 1
        torch.testing.assert_close(again(input_ids, attention_mask), expected, rtol=0, atol=1e-6)
        fresh = LongformerClassifier.from_hf(tmp_path, HeadConfig(dim=8))  # asking for a head: a new one
        assert fresh.head.dense.weight.shape == (8, 32)


@pytest.mark.skipif(not SHARED_IMDB.is_dir(), reason="needs ../shared/imdb")
def test_minilm_classifier_in_transformers_pipeline_on_real_reviews(tmp_path):
    """All-MiniLM-L6-v2 made long, exported: transformers' text-classification pipeline labels real IMDb reviews,
    several over 512 tokens, as our `classify` (what `python -m stages.predict` runs) does."""
    from transformers import AutoTokenizer, pipeline

    from longformer.pipeline.data import load_raw
    from longformer.pipeline.download import minilm_directory
    from longformer.pipeline.predict import classify

    minilm = minilm_directory()
    torch.manual_seed(0)
    ours = LongformerClassifier.from_hf(minilm, HeadConfig(dim=0), max_length=1024)
    ours.save(tmp_path / "train")
    ours.save_hf(tmp_path / "hf", tokenizer=minilm, labels=["negative", "positive"])

    test = load_raw(str(SHARED_IMDB))["test"]
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    rows = random.Random(0).sample(range(len(test)), 400)
    lengths = {i: len(tokenizer(test[i]["text"])["input_ids"]) for i in rows}
    long_ones = [i for i in rows if lengths[i] > 512][:3]
    short_ones = [i for i in rows if lengths[i] <= 512][:3]
    assert len(long_ones) == 3 and any(lengths[i] > 1024 for i in rows)  # whole and truncated long reviews
    texts = [test[i]["text"] for i in long_ones + short_ones] + [test[max(rows, key=lengths.get)]["text"]]

    expected = classify(tmp_path / "train", minilm, texts, max_length=1024, batch_size=4, precision="fp32")  # exact
    hf_pipeline = pipeline("text-classification", model=str(tmp_path / "hf"), truncation=True)
    outputs = hf_pipeline(texts, top_k=None)
    theirs = np.array([[next(o["score"] for o in out if o["label"] == name) for name in ("negative", "positive")]
                       for out in outputs])
    np.testing.assert_allclose(theirs, expected, rtol=0, atol=1e-5)
    assert (theirs.argmax(1) == expected.argmax(1)).all()


# ---------------------------------------------------------------------------------------------------------------
# The model card says what the export holds and how it was made.

SUMMARY = {"max_length": 200, **{split: {"reviews": 10, "truncated": 1} for split in ("train", "validation", "test")}}
SOURCE = {"model_type": "bert", "vocab_size": 120, "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4,
          "intermediate_size": 64, "max_position_embeddings": 64}  # the downloaded checkpoint's config.json
PRETRAINED = {"steps": 48, "sequence_length": 200, "best_step": 40, "precision": "bf16",
              "before": {"loss": 6.754}, "after": {"loss": 5.389}}


def card(classifier: LongformerClassifier, pretrained: dict, head_written: bool, precision: str = "bf16") -> str:
    from longformer.pipeline.export import model_card
    from longformer.pipeline.params import Params

    metrics = {"accuracy": 0.9, "f1": 0.9, "loss": 0.3, "reviews": 10, "precision": precision}
    return model_card(classifier, Params(), SOURCE, SUMMARY, metrics, pretrained, head_written,
                      {"git": "abc", "dvc.lock": "def"})


def test_a_card_without_the_head_calls_the_directory_an_encoder(relu_classifier):
    text = card(relu_classifier, {"steps": 0}, head_written=False)
    assert "pipeline_tag: feature-extraction" in text and "- text-classification" not in text
    assert 'pipeline("text-classification"' not in text
    assert "holds the **encoder only**" in text and "`../model.onnx` is the whole classifier" in text


def test_a_card_with_the_head_is_a_classifier(tmp_path):
    classifier = LongformerClassifier(LongformerConfig(**CONFIG), HeadConfig(dim=0))
    text = card(classifier, {"steps": 0}, head_written=True)
    assert "pipeline_tag: text-classification" in text and 'pipeline("text-classification"' in text


def test_the_card_says_how_the_base_model_was_pretrained_and_the_precision_of_the_metrics(relu_classifier):
    text = " ".join(card(relu_classifier, PRETRAINED, head_written=False).split())
    assert "its 64 position embeddings copied over and over up to 200 positions" in text
    assert "Then 48 steps of masked-LM pretraining on the training texts" in text
    assert "held-out masked-LM loss 6.7540 -> 5.3890" in text and "No masked-LM pretraining" not in text
    assert "the classifier computing in bf16" in text
    skipped = " ".join(card(relu_classifier, {"steps": 0}, head_written=False, precision="fp32").split())
    assert "No masked-LM pretraining after the conversion" in skipped and "computing in fp32" in skipped


def test_onnx_equals_ours_past_the_length_it_was_traced_at_and_refuses_longer_input(tmp_path):
    """Traced at 19 tokens (2 x the largest window + 3), the graph serves every length up to the model's 600; longer
    input gets a clear error, not onnxruntime's."""
    from longformer.errors import DataError
    from longformer.onnx import example_length

    torch.manual_seed(2)
    config = LongformerConfig(**CONFIG | {"attention_window": [8, 4, 8], "max_position_embeddings": 602})
    classifier = LongformerClassifier(config, HeadConfig(dim=16, activation="relu")).eval()
    assert example_length(classifier) == 19
    export_onnx(classifier, tmp_path / "model.onnx")
    session = OnnxClassifier(tmp_path / "model.onnx")
    assert session.max_length == 600
    for lengths in ([20, 7], [64, 63], [333, 1, 200], [600, 599]):
        input_ids, attention_mask = random_ids(lengths, seed=lengths[0])
        with torch.no_grad():
            ours = classifier(input_ids, attention_mask).numpy()
        np.testing.assert_allclose(session.logits(input_ids, attention_mask), ours, rtol=0, atol=1e-4)
    input_ids, attention_mask = random_ids([601])
    with pytest.raises(DataError, match="input has 601 tokens; this model takes at most 600"):
        session.logits(input_ids, attention_mask)
