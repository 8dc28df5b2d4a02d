"""Classifier behaviour, conversion round trips and clear errors for bad checkpoints."""

import json

import pytest
import torch
from transformers import LongformerModel as HFModel

from longformer import HeadConfig, LongformerClassifier, LongformerConfig, LongformerModel, WeightsMismatchError
from longformer import weights
from longformer.errors import CheckpointError
from longformer.hf import convert_hf_checkpoint
from tests.helpers import small_hf_config


def test_classifier_padded_batch_equals_one_by_one(hf_checkpoint):
    torch.manual_seed(0)
    model = LongformerClassifier.from_hf(hf_checkpoint, HeadConfig(dim=16, dropout=0.1, activation="tanh")).eval()
    lengths = [5, 23, 12]
    rows = [torch.randint(3, 120, (n,), generator=torch.Generator().manual_seed(n)) for n in lengths]
    ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=1)
    mask = (torch.arange(ids.shape[1])[None] < torch.tensor(lengths)[:, None]).long()
    with torch.no_grad():
        batched = model(ids, mask)
        single = torch.cat([model(r[None]) for r in rows])
        torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)


def test_gradient_checkpointing_replays_attention_dropout():
    """Layer checkpointing recomputes each layer in backward; with attention dropout on, it must draw the same masks
    (the RNG state is restored), so the gradients are those of the plain run, and dropout does change them."""
    config = LongformerConfig.from_hf_dict(small_hf_config(attention_probs_dropout_prob=0.3,
                                                           hidden_dropout_prob=0.1).to_dict())
    torch.manual_seed(0)
    model = LongformerModel(config).train()
    ids = torch.randint(3, 120, (2, 41))
    glob = torch.zeros_like(ids)
    glob[:, 0] = 1

    def gradients(checkpointing: bool, seed: int) -> dict[str, torch.Tensor]:
        model.zero_grad()
        model.gradient_checkpointing = checkpointing
        torch.manual_seed(seed)
        model(ids, global_attention_mask=glob).square().sum().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    plain, checkpointed = gradients(False, 1), gradients(True, 1)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)
    assert not torch.equal(gradients(False, 2)["layers.0.attn.qkv.weight"], plain["layers.0.attn.qkv.weight"])


def test_config_reads_hf_json_with_int_window(tmp_path):
    hf = small_hf_config(attention_window=6, num_hidden_layers=2, layer_norm_eps=1e-7)
    (tmp_path / "config.json").write_text(hf.to_json_string())
    config = LongformerConfig.from_json(tmp_path / "config.json")
    assert config.attention_window == [6, 6] and config.layer_norm_eps == 1e-7 and config.max_length == 298
    with pytest.raises(ValueError, match="even"):
        LongformerConfig(num_layers=1, attention_window=5)


def test_converted_round_trip(hf_checkpoint, tmp_path):
    config, state, _ = convert_hf_checkpoint(hf_checkpoint)
    weights.save(tmp_path, config, state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = LongformerModel.load(tmp_path).eval()
    direct = LongformerModel.from_hf(hf_checkpoint).eval()
    ids = torch.randint(3, 120, (2, 30))
    with torch.no_grad():
        assert torch.equal(loaded(ids), direct(ids))


def test_too_long_input_is_a_clear_error(hf_checkpoint):
    model = LongformerModel.from_hf(hf_checkpoint)
    with pytest.raises(ValueError, match="at most 298"):
        model(torch.full((1, 299), 5))


def test_checkpoint_with_missing_tensor_names_it(hf_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    state = load_file(hf_checkpoint / "model.safetensors")
    del state["encoder.layer.1.attention.self.key_global.weight"]
    save_file(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text((hf_checkpoint / "config.json").read_text())
    with pytest.raises(WeightsMismatchError, match=r"encoder\.layer\.1\.attention\.self\.key_global\.weight"):
        convert_hf_checkpoint(tmp_path)


def test_checkpoint_with_mismatched_shapes_is_a_clear_error(hf_checkpoint, tmp_path):
    config = json.loads((hf_checkpoint / "config.json").read_text())
    config["intermediate_size"] = 48
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes((hf_checkpoint / "model.safetensors").read_bytes())
    with pytest.raises(WeightsMismatchError, match="intermediate"):
        convert_hf_checkpoint(tmp_path)


def test_loading_a_mismatched_state_dict_names_keys(hf_checkpoint, tmp_path):
    config, state, _ = convert_hf_checkpoint(hf_checkpoint)
    state["extra.weight"] = torch.zeros(1)
    state.pop("layers.0.ffn_in.bias")
    state["layers.1.ffn_in.weight"] = torch.zeros(3, 3)
    weights.save(tmp_path, config, state)
    with pytest.raises(WeightsMismatchError) as error:
        LongformerModel.load(tmp_path)
    text = str(error.value)
    assert "missing keys (1): layers.0.ffn_in.bias" in text and "unexpected keys (1): extra.weight" in text
    assert "layers.1.ffn_in.weight: checkpoint (3, 3)" in text


def test_hub_id_offline_says_how_to_fix():
    with pytest.raises(CheckpointError, match="local directory"):
        convert_hf_checkpoint("allenai/longformer-base-4096")


@pytest.mark.slow
def test_base_shaped_model_runs_4096_tokens(tmp_path):
    """The base shape (12 layers, hidden 768, window 512, 4098 positions), random weights built locally."""
    torch.manual_seed(0)
    hf_config = small_hf_config(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                intermediate_size=3072, attention_window=512, max_position_embeddings=4098)
    HFModel(hf_config, add_pooling_layer=False).save_pretrained(tmp_path)
    model = LongformerModel.from_hf(tmp_path).eval()
    assert model.config.max_length == 4096 and sum(p.numel() for p in model.parameters()) > 140e6
    ids = torch.randint(3, 50265, (1, 4096))
    glob = torch.zeros_like(ids)
    glob[:, 0] = 1
    with torch.no_grad():
        out = model(ids, global_attention_mask=glob)
    assert out.shape == (1, 4096, 768) and torch.isfinite(out).all()
