"""One optimizer step, as training takes it and `bench/` times it (torch only: importable without the pipeline's
other dependencies)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from longformer import kernels


def warmup_then_linear_decay(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """The learning rate's factor at each optimizer step (for LambdaLR): up linearly, then down linearly to 0."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return factor


def make_optimizer(model: nn.Module, lr: float, weight_decay: float = 0.0, eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases and LayerNorm weights (the 1-d tensors). Fused: one kernel over all the
    tensors, where the default (foreach) makes several passes; on the CPU that is a sizeable part of a training
    step on a short review."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, eps=eps, fused=True)


class NonFiniteLossError(FloatingPointError):
    """A NaN or infinite loss: training stops before its gradients touch the weights."""

    def __init__(self, loss: float):
        super().__init__(f"the loss is {loss}")
        self.loss = loss


LossFunction = Callable[[nn.Module, dict[str, Tensor]], Tensor]
NOT_PREDICTED = -100  # a masked-LM label that no loss reads (transformers' and cross_entropy's ignore_index)


def classification_loss(label_smoothing: float = 0.0) -> LossFunction:
    """Cross-entropy of `model(input_ids, attention_mask)`'s logits (B, classes) against the batch's labels (B,)."""
    def loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
        logits = model(batch["input_ids"], batch["attention_mask"])
        return F.cross_entropy(logits.float(), batch["labels"], label_smoothing=label_smoothing)
    return loss


def masked_lm_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Cross-entropy of the predicted tokens (labels (B, n) other than NOT_PREDICTED) only: the model computes the
    vocabulary's logits for those alone, (P, vocab)."""
    predict = batch["labels"].ne(NOT_PREDICTED)
    logits = model(batch["input_ids"], batch["attention_mask"], predict=predict)
    return F.cross_entropy(logits.float(), batch["labels"][predict])


def optimizer_step(model: nn.Module, batches: Sequence[dict[str, Tensor]], optimizer: torch.optim.Optimizer,
                   scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                   loss_of: LossFunction = classification_loss(), max_grad_norm: float | None = None,
                   autocast: Callable[[], AbstractContextManager] = nullcontext) -> float:
    """Forward and backward over `batches` (input_ids, attention_mask, labels), their gradients accumulated, then
    one optimizer (and scheduler) step. `loss_of(model, batch)` runs the model (under `autocast`); under
    DistributedDataParallel the gradients are averaged over the processes once, at the last batch. Returns the
    mean loss; raises NonFiniteLossError (before any backward) on a NaN or infinite one."""
    total = 0.0
    with kernels.casts_kept():  # the weights' bf16 copies, made once for all the batches (the weights change below)
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            with nullcontext() if last or not isinstance(model, DistributedDataParallel) else model.no_sync():
                with autocast():
                    loss = loss_of(model, batch)
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(loss.item())
                (loss / len(batches)).backward()
            total += loss.item() / len(batches)
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total
