"""BERT and RoBERTa checkpoints turned into long Longformers, exactly, and our encoder exported back to transformers.

The oracle is transformers itself: the original BertModel/RobertaModel on the same weights (with a window that
covers the whole input, a Longformer without global tokens is full attention), and transformers' LongformerModel
loading what `save_hf` wrote.
"""

import pytest
import torch
from transformers import AutoModel, AutoTokenizer
from transformers import LongformerModel as HFLongformerModel

from longformer import LongformerClassifier, LongformerModel
from longformer.errors import CheckpointError
from longformer.hf import convert_hf_checkpoint
from longformer.pipeline.data import sample_dataset, tokenize
from longformer.pipeline.download import download_checkpoint, minilm_directory
from longformer.pipeline.params import DataParams
from tests.helpers import assert_same_gradients


def padded_batch(lengths: list[int], vocab: tuple[int, int], pad: int, first: int, seed: int = 0):
    """Rows of the given lengths (the first token `first`, as a tokenizer puts it), right-padded to the longest."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(*vocab, (len(lengths), max(lengths)), generator=gen)
    ids[:, 0] = first
    mask = (torch.arange(ids.shape[1])[None] < torch.tensor(lengths)[:, None]).long()
    ids[mask == 0] = pad
    return ids, mask


def max_error(expected: torch.Tensor, actual: torch.Tensor, mask: torch.Tensor) -> float:
    valid = mask.bool()
    return (expected[valid] - actual[valid]).abs().max().item()


# ---------------------------------------------------------------------------------------------------------------
# Real pretrained weights: all-MiniLM-L6-v2 (a BERT: 6 layers, hidden 384, 12 heads, 512 positions)

@pytest.fixture(scope="module")
def minilm():
    return minilm_directory()


@pytest.fixture(scope="module")
def minilm_bert(minilm):
    return AutoModel.from_pretrained(minilm, add_pooling_layer=False, dtype=torch.float32).eval()


@pytest.mark.parametrize("lengths", [[512, 300, 17], [129, 128, 1], [61]])
def test_minilm_equals_bert(minilm, minilm_bert, lengths):
    """(a) Windows of at least twice the input and no global token: exactly BertModel's attention."""
    ours = LongformerModel.from_hf(minilm, attention_window=1024).eval()
    assert ours.config.position_offset == 0 and ours.config.layer_norm_eps == 1e-12
    assert ours.config.type_vocab_size == 2 and ours.config.pad_token_id == 0
    ids, mask = padded_batch(lengths, (1000, 30000), pad=0, first=101)
    types = (torch.arange(ids.shape[1]) >= ids.shape[1] // 2).long().expand_as(ids)  # both token types in use
    with torch.no_grad():
        expected = minilm_bert(ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        actual = ours(ids, mask, token_type_ids=types)
    assert max_error(expected, actual, mask) <= 1e-5


@pytest.fixture(scope="module")
def long_minilm(minilm):
    return LongformerModel.from_hf(minilm, max_length=4096, attention_window=[256, 512, 128, 512, 64, 512]).eval()


def test_long_minilm_copies_positions_and_projections(minilm, minilm_bert, long_minilm):
    config = long_minilm.config
    assert config.max_length == config.max_position_embeddings == 4096 and config.attention_window[2] == 128
    pretrained = minilm_bert.embeddings.position_embeddings.weight  # (512, 384)
    table = long_minilm.embeddings.position.weight
    for start in range(0, 4096, 512):
        assert torch.equal(table[start:start + 512], pretrained)
    for layer in long_minilm.layers:
        query, key, value = layer.attn.qkv.weight.chunk(3)
        assert torch.equal(layer.attn.query_global.weight, query) and torch.equal(layer.attn.key_global.weight, key)
        assert torch.equal(layer.attn.value_global.weight, value)


@pytest.mark.slow
def test_long_minilm_exported_equals_transformers_longformer(minilm, long_minilm, tmp_path):
    """(b) Our long model, written by save_hf and read by transformers' LongformerModel: the same outputs at 4096
    tokens, windows shorter than the input, a global first token."""
    long_minilm.save_hf(tmp_path, tokenizer=minilm)
    theirs = HFLongformerModel.from_pretrained(tmp_path, add_pooling_layer=False).eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert tokenizer.model_max_length == 4096 and tokenizer("a review")["input_ids"][0] == tokenizer.cls_token_id
    ids, mask = padded_batch([4096, 2999], (1000, 30000), pad=0, first=tokenizer.cls_token_id)
    glob = torch.zeros_like(ids)
    glob[:, 0] = 1
    glob[1, 1000] = 1  # one more global token in the second row
    with torch.no_grad():
        expected = theirs(ids, attention_mask=mask, global_attention_mask=glob).last_hidden_state
        actual = long_minilm(ids, mask, glob)
        assert max_error(expected, actual, mask) <= 1e-5
        # and back: the exported Longformer converts into the same model (positions now RoBERTa's way)
        again = LongformerModel.from_hf(tmp_path).eval()
        assert again.config.max_length == 4096 and again.config.position_offset == 1
        assert max_error(actual, again(ids, mask, glob), mask) <= 1e-5


def test_minilm_through_download_convert_tokenize(tmp_path):
    """model.checkpoint=minilm as the pipeline runs it: its WordPiece tokenizer, [CLS] first, [SEP] last."""
    download_checkpoint("minilm", tmp_path / "checkpoint")
    config, _, _ = convert_hf_checkpoint(tmp_path / "checkpoint", max_length=1024)
    assert config.max_length == 1024 and config.attention_window == [512] * 6
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "checkpoint")
    params = DataParams(max_length=1024, limit=20)
    data, summary = tokenize(sample_dataset(40, 10), tokenizer, params, config.max_length)
    rows = data["train"]["input_ids"]
    assert all(r[0] == tokenizer.cls_token_id and r[-1] == tokenizer.sep_token_id for r in rows)
    assert summary["train"]["tokens_p50_p90_p99_max"][-1] > 512  # reviews past BERT's own 512 positions are kept
    assert max(len(r) for r in rows) <= 1024


# ---------------------------------------------------------------------------------------------------------------
# Small checkpoints that transformers builds and saves: each family of the RoBERTa kind, and BERT

FAMILIES = {
    "roberta": ("RobertaConfig", 1),
    "xlm-roberta": ("XLMRobertaConfig", 1),
    "camembert": ("CamembertConfig", 1),
    "bert": ("BertConfig", 0),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_checkpoint(request, tmp_path_factory):
    import transformers

    config_class, pad = FAMILIES[request.param]
    config = getattr(transformers, config_class)(
        vocab_size=99, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=64 + pad + 1 if pad else 64, type_vocab_size=2, pad_token_id=pad,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=1e-7, hidden_act="gelu")
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp(request.param)
    AutoModel.from_config(config, add_pooling_layer=False).save_pretrained(directory)
    return request.param, directory


def test_small_checkpoints_equal_their_own_model(family_checkpoint):
    """(c) RoBERTa (and its families) and BERT: outputs and gradients equal the original model's."""
    family, directory = family_checkpoint
    pad = FAMILIES[family][1]
    theirs = AutoModel.from_pretrained(directory, add_pooling_layer=False).train()  # dropout 0: training paths
    ours = LongformerModel.from_hf(directory, attention_window=128).train()
    assert ours.config.max_length == 64 and ours.config.position_offset == (pad + 1 if pad else 0)
    ids, mask = padded_batch([64, 33, 5], (3, 99), pad=pad, first=2)
    weights = torch.randn(*ids.shape, 32, generator=torch.Generator().manual_seed(1))
    expected = theirs(ids, attention_mask=mask).last_hidden_state
    actual = ours(ids, mask)
    assert max_error(expected.detach(), actual.detach(), mask) <= 1e-5
    ((expected * weights)[mask.bool()].sum()).backward()
    ((actual * weights)[mask.bool()].sum()).backward()
    assert_same_gradients(theirs, ours, globals_="none")


def test_small_checkpoints_made_long_and_exported(family_checkpoint, tmp_path):
    """Extended past their positions, windows shorter than the input, several global tokens: our model and
    transformers' Longformer on the exported directory agree."""
    family, directory = family_checkpoint
    pad = FAMILIES[family][1]
    ours = LongformerModel.from_hf(directory, max_length=300, attention_window=[8, 4, 16]).eval()
    table = ours.embeddings.position.weight
    offset = ours.config.position_offset
    assert table.shape[0] == offset + 300 and torch.equal(table[offset + 64:offset + 128], table[offset:offset + 64])
    ours.save_hf(tmp_path)
    theirs = HFLongformerModel.from_pretrained(tmp_path, add_pooling_layer=False).eval()
    ids, mask = padded_batch([300, 151, 9], (3, 99), pad=pad, first=2)
    glob = torch.zeros_like(ids)
    glob[:, 0] = 1
    glob[0, [77, 299]] = 1
    with torch.no_grad():
        expected = theirs(ids, attention_mask=mask, global_attention_mask=glob).last_hidden_state
        assert max_error(expected, ours(ids, mask, glob), mask) <= 1e-5


def test_classifier_from_hf_takes_the_same_keywords(family_checkpoint):
    _, directory = family_checkpoint
    model = LongformerClassifier.from_hf(directory, max_length=128, attention_window=16)
    assert model.config.max_length == 128 and model.config.attention_window == [16, 16, 16]


def test_a_longformer_keeps_its_positions(hf_checkpoint):
    """A Longformer checkpoint is used as it is: no more positions than it was trained with; fewer are a cut."""
    with pytest.raises(CheckpointError, match="trained on 298 positions; it cannot take max_length=299"):
        convert_hf_checkpoint(hf_checkpoint, max_length=299)
    config, state, _ = convert_hf_checkpoint(hf_checkpoint, max_length=100)
    full_config, full_state, _ = convert_hf_checkpoint(hf_checkpoint)
    assert config.max_length == 100 and full_config.max_length == 298
    assert torch.equal(state["embeddings.position.weight"], full_state["embeddings.position.weight"][:102])
