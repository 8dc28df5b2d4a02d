"""The masked LM (encoder + head) against transformers' on the same weights: logits, loss, gradients; BERT's and
RoBERTa's heads converted exactly; a new head where a checkpoint ships none; the export that `fill-mask` runs."""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForMaskedLM, BertConfig, BertForMaskedLM, RobertaConfig, RobertaForMaskedLM
from transformers import LongformerForMaskedLM as HFMaskedLM

from longformer import WeightsMismatchError
from longformer.errors import CheckpointError
from longformer.hf import to_hf_state_dict
from longformer.model import LongformerForMaskedLM
from longformer.pipeline.step import NOT_PREDICTED, masked_lm_loss
from tests.helpers import grads, relative_error, small_hf_config
from tests.test_parity import make_batch


@pytest.fixture(scope="module")
def hf_masked_lm_checkpoint(tmp_path_factory):
    """A random small Longformer with a masked-LM head, per-layer windows 8/4/16, saved by transformers; the head's
    bias and LayerNorm are randomised, so that a misplaced tensor shows."""
    torch.manual_seed(0)
    model = HFMaskedLM(small_hf_config())
    with torch.no_grad():
        for tensor in (model.lm_head.bias, model.lm_head.layer_norm.weight, model.lm_head.layer_norm.bias):
            tensor.normal_(0, 0.5)
    directory = tmp_path_factory.mktemp("hf_masked_lm")
    model.save_pretrained(directory)
    return directory


def masked_labels(ids: torch.Tensor, mask: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """About a quarter of the real tokens predicted; NOT_PREDICTED elsewhere (padding included)."""
    chosen = (torch.rand(ids.shape, generator=torch.Generator().manual_seed(seed)) < 0.25) & mask.bool()
    return torch.where(chosen, ids, NOT_PREDICTED)


@pytest.mark.parametrize("globals_", ["none", "several"])
@pytest.mark.parametrize("n", [9, 61])
def test_logits_and_loss_match_transformers(hf_masked_lm_checkpoint, n, globals_, path):
    hf = HFMaskedLM.from_pretrained(hf_masked_lm_checkpoint).eval()
    ours = LongformerForMaskedLM.from_hf(hf_masked_lm_checkpoint).eval()
    ids, mask, glob = make_batch(n, globals_)
    labels = masked_labels(ids, mask)
    expected = hf(input_ids=ids, attention_mask=mask, global_attention_mask=glob, labels=labels)
    logits = ours(ids, mask, glob)
    valid = mask.bool()
    assert (logits[valid] - expected.logits[valid]).abs().max() <= 1e-5
    predict = labels.ne(NOT_PREDICTED)
    assert (ours(ids, mask, glob, predict=predict) - expected.logits[predict]).abs().max() <= 1e-5
    loss = F.cross_entropy(ours(ids, mask, glob, predict=predict), labels[predict])
    assert abs(loss.item() - expected.loss.item()) <= 1e-5

    expected.loss.backward()
    loss.backward()
    theirs = grads(hf)
    ours_grads = grads(ours)
    encoder = {f"longformer.{k}": v for k, v in to_hf_state_dict(
        {k.removeprefix("encoder."): v for k, v in ours_grads.items() if k.startswith("encoder.")}).items()}
    head = {"lm_head.dense.weight": "lm_head.dense.weight", "lm_head.dense.bias": "lm_head.dense.bias",
            "lm_head.layer_norm.weight": "lm_head.norm.weight", "lm_head.layer_norm.bias": "lm_head.norm.bias",
            "lm_head.bias": "lm_head.bias"}
    compared = encoder | {theirs_name: ours_grads[ours_name] for theirs_name, ours_name in head.items()}
    errors = {}
    for name, actual in compared.items():
        reference = theirs[name]
        if name.endswith(("key.bias", "key_global.bias")):  # softmax ignores a key bias: its gradient is noise
            continue
        errors[name] = relative_error(actual, reference)
    assert max(errors.values()) <= 1e-4, sorted(errors.items(), key=lambda kv: -kv[1])[:5]
    # the tied decoder: the word embeddings' gradient has both the input's and the output's part
    assert errors["longformer.embeddings.word_embeddings.weight"] <= 1e-4


def test_masked_lm_loss_reads_only_the_predicted_tokens(hf_masked_lm_checkpoint):
    ours = LongformerForMaskedLM.from_hf(hf_masked_lm_checkpoint).eval()
    ids, mask, _ = make_batch(30, "none")
    labels = masked_labels(ids, mask)
    predict = labels.ne(NOT_PREDICTED)
    expected = F.cross_entropy(ours(ids, mask)[predict], labels[predict])
    actual = masked_lm_loss(ours, {"input_ids": ids, "attention_mask": mask, "labels": labels})
    assert torch.allclose(actual, expected, atol=1e-6)


@pytest.mark.parametrize("activation", ["gelu", "relu"])  # BERT's head computes hidden_act, RoBERTa's gelu always
@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_bert_and_roberta_heads_convert_exactly(family, activation, tmp_path):
    torch.manual_seed(1)
    shape = dict(vocab_size=150, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=66 if family == "roberta" else 64, hidden_act=activation)
    model = (RobertaForMaskedLM(RobertaConfig(**shape, pad_token_id=1)) if family == "roberta"
             else BertForMaskedLM(BertConfig(**shape)))
    with torch.no_grad():
        head = model.lm_head if family == "roberta" else model.cls.predictions
        head.bias.normal_(0, 0.5)
    model.save_pretrained(tmp_path)
    model.eval()
    ours = LongformerForMaskedLM.from_hf(tmp_path).eval()
    n = 64  # the checkpoint's own length
    ids = torch.randint(3, 150, (2, n), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 40:] = 0
    ids[mask == 0] = model.config.pad_token_id
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).logits
        actual = ours(ids, mask)
    assert (actual[mask.bool()] - expected[mask.bool()]).abs().max() <= 1e-5
    if ours.config.lm_head_act != "gelu":  # transformers' Longformer head cannot compute it: said, not written
        with pytest.raises(CheckpointError, match="masked-LM head computes gelu; this head computes relu"):
            ours.save_hf(tmp_path / "exported")
        assert not (tmp_path / "exported").exists()


def test_a_checkpoint_without_a_head_gets_a_new_tied_one(hf_checkpoint):
    """all-MiniLM-L6-v2 ships the encoder only; so does this small Longformer."""
    from longformer.hf import convert_hf_checkpoint

    assert convert_hf_checkpoint(hf_checkpoint)[2] is None
    torch.manual_seed(0)
    model = LongformerForMaskedLM.from_hf(hf_checkpoint)
    assert model.lm_head.dense.weight.std().item() == pytest.approx(0.02, rel=0.2)  # BERT's and RoBERTa's init
    assert not model.lm_head.bias.any() and not model.lm_head.dense.bias.any()
    hidden = torch.randn(5, 32)
    head = model.lm_head
    expected = head.norm(F.gelu(head.dense(hidden))) @ model.encoder.embeddings.word.weight.T + head.bias
    assert torch.allclose(head(hidden, model.encoder.embeddings.word.weight), expected, atol=1e-6)


def test_minilm_has_no_head_and_gets_one():
    """all-MiniLM-L6-v2 ships no masked-LM head: the masked LM made from it gets a new one (BERT's initialisation),
    tied to its own word embeddings, which predicts over the whole vocabulary."""
    from longformer.hf import convert_hf_checkpoint
    from longformer.pipeline.download import minilm_directory

    config, state, lm_head = convert_hf_checkpoint(minilm_directory())
    assert lm_head is None and config.vocab_size == 30522
    torch.manual_seed(0)
    model = LongformerForMaskedLM.from_hf(minilm_directory()).eval()
    head, words = model.lm_head, model.encoder.embeddings.word.weight
    assert torch.equal(words, state["embeddings.word.weight"])
    assert head.dense.weight.std().item() == pytest.approx(0.02, rel=0.1) and not head.bias.any()
    ids = torch.tensor([[101, 1996, 3185, 2001, 103, 102]])  # [CLS] the movie was [MASK] [SEP]
    with torch.no_grad():
        logits = model(ids, predict=ids.eq(103))
        hidden = model.encoder(ids)[0, 4]
    assert logits.shape == (1, 30522)
    torch.testing.assert_close(logits[0], head.norm(F.gelu(head.dense(hidden))) @ words.T, rtol=0, atol=1e-5)


def test_save_and_load_keep_the_head(hf_masked_lm_checkpoint, tmp_path):
    from longformer import LongformerModel

    ours = LongformerForMaskedLM.from_hf(hf_masked_lm_checkpoint)
    ours.save(tmp_path / "mlm")
    loaded = LongformerForMaskedLM.load(tmp_path / "mlm")
    for name, tensor in ours.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    LongformerModel.load(tmp_path / "mlm")  # the encoder alone, as fine-tuning reads it
    (tmp_path / "mlm/lm_head.safetensors").unlink()
    with pytest.raises(WeightsMismatchError, match="without a masked-LM head"):
        LongformerForMaskedLM.load(tmp_path / "mlm")


def test_a_head_of_the_wrong_shape_names_its_tensors(hf_masked_lm_checkpoint):
    ours = LongformerForMaskedLM.from_hf(hf_masked_lm_checkpoint)
    head = {k: v for k, v in ours.lm_head.state_dict().items()}
    head["bias"] = torch.zeros(7)
    del head["norm.weight"]
    with pytest.raises(WeightsMismatchError, match=r"masked-LM head.*norm\.weight.*bias: checkpoint \(7,\)"):
        LongformerForMaskedLM.from_encoder(ours.encoder, head)


def test_export_loads_in_transformers_and_fills_masks(tmp_path):
    """minilm made long (1024 tokens) with a new head, written by save_hf: transformers' LongformerForMaskedLM
    gives the same logits, and the fill-mask pipeline runs on the directory with its tokenizer."""
    from transformers import pipeline

    from longformer.pipeline.download import minilm_directory

    torch.manual_seed(0)
    ours = LongformerForMaskedLM.from_hf(minilm_directory(), max_length=1024, attention_window=[64, 128] * 3).eval()
    ours.save_hf(tmp_path / "hf", tokenizer=minilm_directory())
    theirs = AutoModelForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    assert type(theirs).__name__ == "LongformerForMaskedLM"
    ids = torch.randint(1000, 30000, (2, 700), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 500:] = 0
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask).logits
        actual = ours(ids, mask)
    assert (actual[mask.bool()] - expected[mask.bool()]).abs().max() <= 5e-5  # logits up to ~7
    filled = pipeline("fill-mask", model=str(tmp_path / "hf"))("the movie was [MASK] and long.")
    assert len(filled) == 5 and all("[MASK]" not in f["sequence"] for f in filled)
