"""Helpers the parity tests share: gradients of two models compared under one naming."""

import torch

from longformer.convert import rename_hf_state_dict


def grads(model) -> dict[str, torch.Tensor]:
    return {k: p.grad if p.grad is not None else torch.zeros_like(p) for k, p in model.named_parameters()}


def split_key_bias(grads: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Move the key biases out of a gradient dict.

    A key bias adds the same q.b to all of a query's scores, which softmax ignores: its exact gradient is
    zero and any implementation returns rounding noise (~1e-10), so relative errors on it are meaningless.
    """
    rest, key_bias = dict(grads), {}
    for name in list(rest):
        if name.endswith("attn.qkv.bias"):
            query, key, value = rest[name].chunk(3)
            rest[name] = torch.cat([query, value])
            key_bias[name] = key
        elif name.endswith("attn.key_global.bias"):
            key_bias[name] = rest.pop(name)
    return rest, key_bias


def assert_same_gradients(hf, ours, globals_: str) -> None:
    expected, expected_key_bias = split_key_bias(rename_hf_state_dict(grads(hf)))
    actual, actual_key_bias = split_key_bias(grads(ours))
    errors = {k: ((actual[k] - g).norm() / g.norm()).item() if g.norm() > 0 else actual[k].norm().item()
              for k, g in expected.items()}
    assert max(errors.values()) <= 1e-4, sorted(errors.items(), key=lambda kv: -kv[1])[:5]
    for name in expected_key_bias:  # analytically zero on both sides: noise, small next to its layer's weight grads
        layer = name.split(".attn.")[0] + ".attn."
        weight_scale = torch.stack([g.norm() for k, g in expected.items()
                                    if k.startswith(layer) and k.endswith(".weight")]).norm()
        assert max(expected_key_bias[name].norm(), actual_key_bias[name].norm()) <= 1e-6 * weight_scale, name
    if globals_ != "none":
        assert ours.layers[0].attn.key_global.weight.grad.abs().sum() > 0  # the global path is exercised
