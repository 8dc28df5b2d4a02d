"""Continued masked-LM pretraining: the second half of the recipe that made the Longformer from RoBERTa, on the
task's own texts.

Texts are joined with separators and cut into sequences of the model's length, so that every position gets a
training signal; 15% of the ordinary tokens are masked (80% mask token, 10% random token, 10% kept), afresh each
epoch; attention is local only, as in the paper's pretraining. The loop is fine-tuning's (`train_to_end`) with the
`MaskedLM` objective; the held-out loss, overall and per 512 positions, is measured before and after.
"""

from __future__ import annotations

import functools
import json
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longformer import weights
from longformer.config import LongformerConfig
from longformer.errors import ConfigError, DataError, written_by
from longformer.hf import load_tokenizer
from longformer.model import LongformerForMaskedLM, LongformerModel
from longformer.pipeline.batching import collate, inference_order
from longformer.pipeline.data import load_tokenized
from longformer.pipeline.distributed import Processes
from longformer.pipeline.inference import evaluating
from longformer.pipeline.precision import autocast, resolve_precision
from longformer.pipeline.params import PretrainParams
from longformer.pipeline.step import NOT_PREDICTED, make_optimizer, masked_lm_loss
from longformer.pipeline.loop import (run_identity, start_run, step_groups, step_on, steps_per_epoch,
                                      train_to_end)

BUCKET = 512  # positions per bucket of the held-out loss (the length BERT and RoBERTa were trained on)
VALIDATION_STREAM = 0  # the masks of the held-out sequences; epoch e draws from stream e + 1
# The held-out masks are the same whatever pretrain.seed and pretrain.mask_prob are, so that experiments differing in
# them are scored on the same predictions (BERT's rate).
VALIDATION_SEED, VALIDATION_MASK_PROB = 0, 0.15


# ---------------------------------------------------------------------------------------------------------------
# Sequences and masks

def pack(token_lists: Sequence[Sequence[int]], length: int, cls_id: int, sep_id: int) -> list[np.ndarray]:
    """Texts' tokens joined by separators and cut into sequences of `length`: [cls] tokens... [sep]. The last one
    may be shorter."""
    parts = [np.append(np.asarray(tokens, dtype=np.int64), sep_id) for tokens in token_lists if len(tokens)]
    stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    body = length - 2
    return [np.concatenate([[cls_id], stream[i:i + body], [sep_id]]) for i in range(0, len(stream), body)]


@dataclass(frozen=True)
class Masking:
    """BERT's masking, deterministic per (seed, stream, sequence): `prob` of the maskable tokens are predicted; of
    those 80% become `mask_token_id`, 10% a random ordinary token, 10% stay. Special tokens are never masked, nor
    drawn as the random token (a drawn pad would shift the positions of every token after it)."""

    prob: float
    mask_token_id: int
    vocab_size: int
    special_ids: tuple[int, ...]
    seed: int

    def __call__(self, ids: Tensor, stream: int, index: int) -> tuple[Tensor, Tensor]:
        """One sequence's (n,) ids -> (inputs, labels): labels are the original ids where predicted, NOT_PREDICTED
        elsewhere. At least one token is predicted where any can be."""
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, stream, index])
                                                      .generate_state(1)[0]))
        maskable = ~torch.isin(ids, torch.tensor(self.special_ids))
        draws = torch.rand(3, len(ids), generator=generator)  # chosen?, what it becomes, a random token
        chosen = (draws[0] < self.prob) & maskable
        if not chosen.any() and maskable.any():
            chosen[maskable.nonzero()[draws[0][maskable].argmin()]] = True
        labels = torch.where(chosen, ids, NOT_PREDICTED)
        random_tokens = self.ordinary_ids[(draws[2] * len(self.ordinary_ids)).long()]
        inputs = torch.where(chosen & (draws[1] < 0.8), self.mask_token_id, ids)
        inputs = torch.where(chosen & (draws[1] >= 0.8) & (draws[1] < 0.9), random_tokens, inputs)
        return inputs, labels

    @functools.cached_property
    def ordinary_ids(self) -> Tensor:
        """The ids a random replacement is drawn from: the vocabulary but the special tokens."""
        ordinary = torch.ones(self.vocab_size, dtype=torch.bool)
        ordinary[list(self.special_ids)] = False
        return ordinary.nonzero().squeeze(1)

    def held_out(self) -> Masking:
        """The held-out sequences' masking: the same for every pretrain.seed and pretrain.mask_prob."""
        return replace(self, prob=VALIDATION_MASK_PROB, seed=VALIDATION_SEED)


def masked_batch(sequences: Sequence[np.ndarray], indices: Sequence[int], stream: int, masking: Masking,
                 pad_token_id: int) -> dict[str, Tensor]:
    """input_ids (B, longest) with the masks of `stream` drawn for sequences `indices`, attention_mask, labels."""
    batch = collate(sequences, [0] * len(sequences), pad_token_id)
    batch["labels"] = torch.full_like(batch["input_ids"], NOT_PREDICTED)
    for row, (sequence, index) in enumerate(zip(sequences, indices)):
        n = len(sequence)
        batch["input_ids"][row, :n], batch["labels"][row, :n] = masking(torch.as_tensor(sequence), stream, index)
    return batch


# ---------------------------------------------------------------------------------------------------------------
# The objective

@dataclass
class MaskedLM:
    """Pretraining's objective for the loop: shuffled packed sequences, fresh masks each epoch, the masked tokens'
    cross-entropy; the lowest held-out loss picks the best weights."""

    sequences: list[np.ndarray]
    val_sequences: list[np.ndarray]
    masking: Masking
    pad_token_id: int
    batch_size: int
    metric: ClassVar[str] = "loss"
    higher_is_better: ClassVar[bool] = False
    predictions: ClassVar[None] = None  # a loss per token, no prediction per sequence

    def __post_init__(self) -> None:
        self.loss = masked_lm_loss

    def batches(self, epoch: int) -> list[list[int]]:
        order = np.random.default_rng([self.masking.seed, epoch]).permutation(len(self.sequences)).tolist()
        return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def collate(self, batch: list[int], epoch: int) -> dict[str, Tensor]:
        return masked_batch([self.sequences[i] for i in batch], batch, epoch + 1, self.masking, self.pad_token_id)

    def validate(self, model: nn.Module, procs: Processes, precision: str) -> dict:
        return held_out_loss(model, self.val_sequences, self.masking.held_out(), self.batch_size, self.pad_token_id,
                             procs, precision)


def held_out_loss(model: nn.Module, sequences: list[np.ndarray], masking: Masking, batch_size: int,
                  pad_token_id: int, procs: Processes = Processes(), precision: str = "fp32") -> dict:
    """The masked-LM loss of `sequences` under their fixed validation masks: {"loss": all predicted tokens',
    "by_position": {"0-511": ..., "512-1023": ..., ...}}, each the mean over the predicted tokens there; the model
    run in `precision` (resolved)."""
    buckets = -(-max(len(s) for s in sequences) // BUCKET)
    sums, counts = torch.zeros(buckets, dtype=torch.float64), torch.zeros(buckets, dtype=torch.float64)
    with evaluating(model) as device:
        for batch in inference_order([len(s) for s in sequences], batch_size, procs.rank, procs.world):
            tensors = masked_batch([sequences[i] for i in batch], batch, VALIDATION_STREAM, masking, pad_token_id)
            predict = tensors["labels"].ne(NOT_PREDICTED)
            with autocast(device, precision):
                logits = model(tensors["input_ids"].to(device), tensors["attention_mask"].to(device),
                               predict=predict.to(device))
            losses = F.cross_entropy(logits.float(), tensors["labels"][predict].to(device), reduction="none").cpu()
            bucket = predict.nonzero()[:, 1] // BUCKET  # boolean indexing is row-major, as nonzero
            sums.index_add_(0, bucket, losses.double())
            counts.index_add_(0, bucket, torch.ones_like(losses, dtype=torch.float64))
    sums, counts = (torch.stack(parts).sum(0) for parts in zip(*procs.gather((sums, counts))))
    return {"loss": (sums.sum() / counts.sum()).item(),
            "by_position": {f"{b * BUCKET}-{(b + 1) * BUCKET - 1}": (sums[b] / counts[b]).item()
                            for b in range(buckets) if counts[b]}}


def warm_up_head(model: LongformerForMaskedLM, objective: MaskedLM, params: PretrainParams, precision: str) -> None:
    """`params.head_warmup_steps` optimizer steps of a new head alone at `params.head_warmup_lr`, the encoder frozen,
    on epoch 0's first batches: so that "before" measures the encoder, not a random head."""
    frozen = [p for p in model.encoder.parameters() if p.requires_grad]
    optimizer = make_optimizer(model.lm_head, params.head_warmup_lr, params.weight_decay, params.adam_eps)
    groups = step_groups(objective.batches(0), params.grad_accum, Processes())  # the same on every process
    device = next(model.parameters()).device
    try:
        for p in frozen:
            p.requires_grad_(False)
        for step in range(params.head_warmup_steps):
            batches = [objective.collate(batch, 0) for batch in groups[step % len(groups)]]
            step_on(device, precision, model, batches, optimizer, None, objective.loss, params.max_grad_norm)
    finally:
        for p in frozen:
            p.requires_grad_(True)


# ---------------------------------------------------------------------------------------------------------------
# The stage's work

def sequence_length(params: PretrainParams, config: LongformerConfig) -> int:
    if params.max_length > config.max_length:
        raise ConfigError(f"pretrain.max_length={params.max_length} is beyond what the model takes "
                          f"({config.max_length} tokens): lower it (0 = the model's length)")
    return params.max_length or config.max_length


def packed_split(tokenizer, data_dir: Path, split: str, length: int) -> list[np.ndarray]:
    """The texts of a split of the tokenize stage's output, packed; an error if it has no text."""
    texts = [text for text in load_tokenized(data_dir, split)["text"] if text and text.strip()]
    tokens = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"] if texts else []
    sequences = pack(tokens, length, tokenizer.cls_token_id, tokenizer.sep_token_id)
    if not sequences:
        raise DataError(f"the {split} split of {data_dir} has no text to pretrain on")
    return sequences


def skip(model_dir: Path, out_dir: Path, metrics_file: Path, metrics_dir: Path) -> None:
    """pretrain.steps = 0: the converted encoder goes on unchanged."""
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.copytree(model_dir, out_dir)
    shutil.rmtree(metrics_dir, ignore_errors=True)
    curve = metrics_dir / "plots/metrics/train/loss.tsv"  # the loss curve of no steps: DVC warns of an empty folder
    curve.parent.mkdir(parents=True)
    curve.write_text("step\tloss\n")
    metrics_file.write_text(json.dumps({"steps": 0}) + "\n")
    (metrics_dir / "metrics.json").write_text(json.dumps({"steps": 0}) + "\n")


def pretrain(model_dir: str | Path, tokenizer_dir: str | Path, data_dir: str | Path, out_dir: str | Path,
             metrics_file: str | Path, metrics_dir: str | Path, params: PretrainParams, precision: str = "auto",
             resume_dir: str | Path = ".resume/pretrain") -> dict:
    """Continue masked-LM training of the encoder in model_dir on the training split's texts, in `precision`
    (train.precision); the weights with the lowest held-out loss go to out_dir (the encoder as fine-tuning loads it,
    the head beside it), the held-out loss before and after to metrics_file. Resumable as `train` is."""
    model_dir, tokenizer_dir, data_dir, out_dir, metrics_file, metrics_dir = map(
        Path, (model_dir, tokenizer_dir, data_dir, out_dir, metrics_file, metrics_dir))
    with written_by("convert"):
        encoder, lm_head = LongformerModel.load(model_dir), weights.load_lm_head(model_dir)
    length = sequence_length(params, encoder.config)
    with written_by("download"):
        tokenizer = load_tokenizer(tokenizer_dir)
    sequences, val_sequences = (packed_split(tokenizer, data_dir, split, length) for split in ("train", "validation"))
    procs = Processes.from_env()
    torch.manual_seed(params.seed)  # the same new head on every process
    model = LongformerForMaskedLM.from_encoder(encoder, lm_head).to(procs.device)
    model.encoder.gradient_checkpointing = params.gradient_checkpointing
    masking = Masking(params.mask_prob, tokenizer.mask_token_id, len(tokenizer), tuple(tokenizer.all_special_ids),
                      params.seed)
    objective = MaskedLM(sequences, val_sequences, masking, encoder.config.pad_token_id, params.batch_size)
    identity = pretrain_identity(params, procs.world, {"model": model_dir, "tokenizer": tokenizer_dir,
                                                       "data": data_dir})
    run = start_run(model, params, params.steps, steps_per_epoch(len(sequences), params, procs), identity,
                    resolve_precision(precision, procs.device), Path(resume_dir), metrics_dir, procs)
    if not run.resume({"params": "the pretrain.* params or train.nproc", "model": f"the model in {model_dir}",
                       "tokenizer": f"the tokenizer in {tokenizer_dir}", "data": f"the tokenized data in {data_dir}"}):
        if lm_head is None:
            if procs.main:
                print(f"{model_dir} has no masked-LM head (its checkpoint ships the encoder only): a new head, tied to "
                      f"the word embeddings, trains alone for {params.head_warmup_steps} steps (lr "
                      f"{params.head_warmup_lr}) before the held-out loss is first measured", file=sys.stderr)
            warm_up_head(model, objective, params, run.precision)
        run.notes["before"] = objective.validate(model, procs, run.precision)
    first_step = run.position.step
    train_to_end(run, objective, params, out_dir)
    run.finish(out_dir)
    after = {name.removeprefix("val_"): run.best.metrics[name] for name in ("val_loss", "val_by_position")}
    result = {"before": run.notes["before"], "after": after, "steps": params.steps,
              "best_step": run.best.metrics["step"], "sequence_length": length, "train_sequences": len(sequences),
              "precision": run.precision}
    if procs.main:
        metrics_file.parent.mkdir(parents=True, exist_ok=True)
        metrics_file.write_text(json.dumps(result, indent=2) + "\n")
    return result | {"tokens_trained": tokens_trained(params, params.steps - first_step, procs.world, length)}


def pretrain_identity(params: PretrainParams, processes: int, inputs: dict[str, Path]) -> dict[str, str]:
    """What a pretraining run is (see `run_identity`): its params, its number of processes (which lays out its
    batches) and its inputs."""
    return run_identity([asdict(params), {"processes": processes}], inputs)


def tokens_trained(params: PretrainParams, steps: int, processes: int, length: int) -> int:
    """The tokens `steps` optimizer steps take, on all processes together (the last sequence of the split may be
    shorter: a bound within one sequence a step)."""
    return steps * params.batch_size * params.grad_accum * processes * length
