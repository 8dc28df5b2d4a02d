"""Continued masked-LM pretraining: packed sequences, masks, the held-out loss by position, the stage end to end
(resume after kill -9, a new head, skipping), and its bad input."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from longformer.model import LongformerForMaskedLM
from longformer.pipeline.distributed import Processes
from longformer.pipeline.params import PretrainParams
from longformer.pipeline.pretrain import (BUCKET, Masking, MaskedLM, held_out_loss, pack, pretrain_identity,
                                          tokens_trained, warm_up_head)
from longformer.pipeline.step import NOT_PREDICTED
from tests.helpers import finish, kill_at_step, prepare_inputs, run_stage_here, start_stage

SPECIALS = (0, 1, 2, 3)  # <s>, <pad>, </s>, <mask>
MASKING = Masking(prob=0.15, mask_token_id=3, vocab_size=1000, special_ids=SPECIALS, seed=0)


def test_pack_joins_texts_with_separators_into_full_sequences():
    sequences = pack([[10, 11, 12], [], [13, 14], [15]], length=5, cls_id=0, sep_id=2)
    # stream: 10 11 12 </s> 13 14 </s> 15 </s>; three tokens between <s> and </s>
    assert [s.tolist() for s in sequences] == [[0, 10, 11, 12, 2], [0, 2, 13, 14, 2], [0, 2, 15, 2, 2]]
    assert pack([[], []], 8, 0, 2) == []


def masked(n: int = 20000, stream: int = 1, index: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.randint(4, 1000, (n,), generator=torch.Generator().manual_seed(index))
    ids[::50] = 2  # separators among the text
    ids[0] = 0
    return (ids, *MASKING(ids, stream, index))


def test_masking_follows_bert_and_never_touches_special_tokens():
    ids, inputs, labels = masked()
    predicted = labels.ne(NOT_PREDICTED)
    special = torch.isin(ids, torch.tensor(SPECIALS))
    assert not predicted[special].any() and torch.equal(inputs[special], ids[special])
    assert torch.equal(labels[predicted], ids[predicted]) and torch.equal(inputs[~predicted], ids[~predicted])
    assert predicted.sum() / (~special).sum() == pytest.approx(0.15, abs=0.01)
    became_mask = inputs[predicted].eq(3).float().mean()
    kept = inputs[predicted].eq(ids[predicted]).float().mean()
    assert became_mask == pytest.approx(0.8, abs=0.02) and kept == pytest.approx(0.1 + 0.1 / 1000, abs=0.02)


def test_a_random_replacement_is_never_a_special_token():
    """Of the predicted tokens 10% become a random token: an ordinary one, never a pad (which would shift the position
    of every token after it) nor another special token."""
    ids = torch.randint(4, 10, (200_000,), generator=torch.Generator().manual_seed(0))
    masking = Masking(prob=0.5, mask_token_id=3, vocab_size=10, special_ids=SPECIALS, seed=0)
    inputs, labels = masking(ids, 1, 0)
    replaced = labels.ne(NOT_PREDICTED) & inputs.ne(3) & inputs.ne(ids)
    assert replaced.sum() > 3000  # about 0.5 x 0.1 x 5/6 of them: a draw of a special token would show
    assert not torch.isin(inputs, torch.tensor(SPECIALS[:3])).any()
    assert set(inputs[replaced].tolist()) == set(range(4, 10))


def test_held_out_masks_do_not_depend_on_the_seed_or_the_mask_rate():
    """Experiments that differ in pretrain.seed or pretrain.mask_prob are scored on the same held-out predictions."""
    sequences = [np.zeros(900, dtype=np.int64), np.zeros(300, dtype=np.int64)]  # CountingModel's: all label 0
    objectives = [MaskedLM(sequences, sequences, Masking(prob, 1, 2, (1,), seed), 1, 2)
                  for prob, seed in ((0.15, 0), (0.3, 7))]
    losses = [objective.validate(CountingModel(), Processes(), "fp32") for objective in objectives]
    assert losses[0] == losses[1]
    assert not torch.equal(*(objective.collate([0], 0)["labels"] for objective in objectives))  # training's differ


def test_pretraining_identity_counts_the_processes(tmp_path):
    """A state saved by a run of one process never resumes a run of two: they lay out their batches differently."""
    params = PretrainParams()
    identities = [pretrain_identity(params, processes, {"data": tmp_path}) for processes in (1, 2, 1)]
    assert identities[0] == identities[2] != identities[1]


def test_tokens_trained_counts_this_runs_steps_on_every_process():
    params = PretrainParams(batch_size=4, grad_accum=2)
    assert tokens_trained(params, steps=5, processes=2, length=128) == 5 * 4 * 2 * 2 * 128


def test_a_new_head_warms_up_alone(hf_checkpoint):
    """warm_up_head trains the head (its held-out loss falls) and leaves every tensor of the encoder as it was."""
    torch.manual_seed(0)
    model = LongformerForMaskedLM.from_hf(hf_checkpoint)
    rng = np.random.default_rng(0)
    sequences = [np.concatenate([[0], rng.integers(4, 40, 60), [2]]) for _ in range(8)]  # a small vocabulary
    objective = MaskedLM(sequences, sequences, Masking(0.15, 3, 120, SPECIALS, 0), 1, 4)
    encoder = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    head = {k: v.clone() for k, v in model.lm_head.state_dict().items()}
    before = objective.validate(model, Processes(), "fp32")["loss"]
    warm_up_head(model, objective, PretrainParams(head_warmup_steps=8, head_warmup_lr=1e-2), "fp32")
    assert all(torch.equal(v, encoder[k]) for k, v in model.encoder.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())  # the encoder is trainable again
    assert not torch.equal(model.lm_head.dense.weight, head["dense.weight"])
    assert objective.validate(model, Processes(), "fp32")["loss"] < before - 0.1


def test_masks_are_deterministic_and_fresh_each_epoch():
    _, inputs, labels = masked(stream=1)
    _, again_inputs, again_labels = masked(stream=1)
    assert torch.equal(inputs, again_inputs) and torch.equal(labels, again_labels)
    _, next_epoch_inputs, next_epoch_labels = masked(stream=2)
    assert not torch.equal(labels, next_epoch_labels)
    other_seed = Masking(0.15, 3, 1000, SPECIALS, seed=1)
    assert not torch.equal(labels, other_seed(masked()[0], 1, 0)[1])


def test_a_short_sequence_gets_at_least_one_prediction():
    ids = torch.tensor([0, 57, 2])
    for index in range(20):
        _, labels = MASKING(ids, 1, index)
        assert labels.tolist() == [NOT_PREDICTED, 57, NOT_PREDICTED]


class CountingModel(torch.nn.Module):
    """Logits that make every predicted token's loss its position, so a bucket's mean is its positions' mean."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask, predict):
        positions = predict.nonzero()[:, 1].double()
        logits = torch.zeros(len(positions), 2, dtype=torch.float64)
        logits[:, 1] = positions  # label 0 (all tokens are 0 below): loss = log(1 + e^p), ~ p for large p
        return logits


def test_held_out_loss_is_the_mean_per_bucket_of_512_positions():
    masking = Masking(0.3, mask_token_id=1, vocab_size=2, special_ids=(1,), seed=0)
    sequences = [np.zeros(1100, dtype=np.int64), np.zeros(600, dtype=np.int64)]
    result = held_out_loss(CountingModel(), sequences, masking, batch_size=2, pad_token_id=1)
    assert list(result["by_position"]) == ["0-511", "512-1023", "1024-1535"]
    assert 530 < result["by_position"]["512-1023"] < 1000 and result["by_position"]["1024-1535"] > 1024
    assert result["by_position"]["0-511"] < BUCKET
    assert min(result["by_position"].values()) < result["loss"] < max(result["by_position"].values())


# ---------------------------------------------------------------------------------------------------------------
# The stage

PRETRAIN = dict(steps=12, batch_size=4, max_length=256, eval_every=4, resume_every=3, lr=1e-3,
                head_warmup_steps=3)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    return prepare_inputs(tmp_path_factory.mktemp("inputs"), limit=120)


def pretrain_stage(workdir: Path, inputs: Path, pretrain: dict = PRETRAIN):
    return start_stage("stages.pretrain", workdir, inputs, {"pretrain": pretrain})


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(inputs, tmp_path):
    output = finish(pretrain_stage(tmp_path / "straight", inputs))
    result = json.loads((tmp_path / "straight/metrics/pretrain.json").read_text())
    assert result["after"]["loss"] < result["before"]["loss"] and result["steps"] == 12, output
    assert "tokens/s" in output and not (tmp_path / "straight/.resume/pretrain").exists()

    killed = tmp_path / "killed"
    process = pretrain_stage(killed, inputs)
    steps_done = kill_at_step(process, killed / ".resume/pretrain/state.pt", 6)
    assert 6 <= steps_done < 12
    output = finish(pretrain_stage(killed, inputs))
    assert f"resuming an interrupted run from .resume/pretrain/state.pt: optimizer step {steps_done}" in output
    for name in ("model.safetensors", "lm_head.safetensors"):
        expected, actual = (load_file(run / "data/pretrained" / name) for run in (tmp_path / "straight", killed))
        assert all(torch.equal(actual[k], v) for k, v in expected.items()), name
    assert (killed / "metrics/pretrain.json").read_text() == (tmp_path / "straight/metrics/pretrain.json").read_text()
    for curve in ("train/loss", "val/loss", "val/by_position/0-511"):
        assert ((killed / f"metrics/pretrain/plots/metrics/{curve}.tsv").read_text()
                == (tmp_path / f"straight/metrics/pretrain/plots/metrics/{curve}.tsv").read_text())


@pytest.mark.slow
def test_a_model_without_a_head_gets_one_warmed_up_first(inputs, tmp_path):
    headless = tmp_path / "headless"
    shutil.copytree(inputs, headless, symlinks=True)
    (headless / "data/model/lm_head.safetensors").unlink()
    output = finish(pretrain_stage(tmp_path / "run", headless, PRETRAIN | {"steps": 2, "eval_every": 0}))
    assert "has no masked-LM head" in output and "trains alone for 3 steps (lr 0.001)" in output
    encoder_before = load_file(headless / "data/model/model.safetensors")
    after = load_file(tmp_path / "run/data/pretrained/model.safetensors")
    assert not torch.equal(after["layers.0.ffn_in.weight"], encoder_before["layers.0.ffn_in.weight"])
    assert (tmp_path / "run/data/pretrained/lm_head.safetensors").is_file()


def test_no_steps_passes_the_converted_model_on(inputs, tmp_path):
    result = run_stage_here("stages.pretrain", tmp_path, inputs, {"pretrain": {"steps": 0}})
    assert result.exit_code == 0, result.output
    for name in ("config.json", "model.safetensors", "lm_head.safetensors"):
        assert (tmp_path / "data/pretrained" / name).read_bytes() == (inputs / "data/model" / name).read_bytes()
    assert json.loads((tmp_path / "metrics/pretrain.json").read_text()) == {"steps": 0}
    assert (tmp_path / "metrics/pretrain/plots/metrics/train/loss.tsv").read_text() == "step\tloss\n"  # not empty


def fails_cleanly(workdir: Path, inputs: Path, pretrain: dict) -> str:
    result = run_stage_here("stages.pretrain", workdir, inputs, {"pretrain": pretrain})
    assert result.exit_code == 1 and "Traceback" not in result.output and result.output.count("error: ") == 1, \
        result.output
    assert not (workdir / "data/pretrained").exists() and not (workdir / "metrics").exists()
    return result.output


def test_a_sequence_longer_than_the_model_is_refused(inputs, tmp_path):
    output = fails_cleanly(tmp_path, inputs, {"max_length": 2048})
    assert "pretrain.max_length=2048 is beyond what the model takes (1024 tokens)" in output


def test_a_training_split_without_text_is_refused(inputs, tmp_path):
    from datasets import load_from_disk

    data = tmp_path / "inputs"
    shutil.copytree(inputs, data)
    train = load_from_disk(str(inputs / "data/tokenized/train"))
    shutil.rmtree(data / "data/tokenized/train")
    train.map(lambda row: {"text": " "}).save_to_disk(str(data / "data/tokenized/train"))  # blank reviews only
    output = fails_cleanly(tmp_path / "run", data, {"steps": 2})
    assert "the train split of data/tokenized has no text to pretrain on" in output


def test_a_head_of_the_wrong_shape_is_named(inputs, tmp_path):
    data = tmp_path / "inputs"
    shutil.copytree(inputs, data, symlinks=True)
    head = load_file(data / "data/model/lm_head.safetensors")
    head["bias"] = torch.zeros(5)
    save_file(head, data / "data/model/lm_head.safetensors")
    output = fails_cleanly(tmp_path / "run", data, {"steps": 2})
    assert "the masked-LM head do not match the model" in output and "bias: checkpoint (5,)" in output
