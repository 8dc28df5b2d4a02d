"""Outputs and gradients of one attention layer (minilm's shape and the tiny model's two windows, 700 tokens, two sequences, <s> global, padding), bf16
autocast and fp32, with and without attention dropout: saved to argv[1], or compared with argv[2]'s."""
import sys, torch
from longformer import kernels
from longformer.attention import AttentionMasks
torch.set_num_threads(2)
n = 700
results = {}
for dim, heads, one_sided in ((384, 12, 256), (64, 4, 32), (64, 4, 64)):
  for dtype in ("bf16", "fp32"):
    for p in (0.0, 0.1):
        torch.manual_seed(0)
        x = torch.randn(2, n, dim, requires_grad=True)
        w = (torch.randn(3 * dim, dim) * 0.05).requires_grad_()
        b = (torch.randn(3 * dim) * 0.05).requires_grad_()
        mask = torch.ones(2, n, dtype=torch.long); mask[1, 500:] = 0
        glob = torch.zeros(2, n, dtype=torch.long); glob[:, 0] = 1
        masks = AttentionMasks.build(mask, glob)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            out = kernels.banded_attention(x, w, b, masks.band, masks.global_index, masks.global_present, heads, one_sided, p)
        out.float().square().sum().backward()
        results[f"{dim}-{one_sided}-{dtype}-{p}"] = [out.float(), x.grad, w.grad, b.grad]
if sys.argv[1] == "save":
    torch.save(results, sys.argv[2])
else:
    theirs = torch.load(sys.argv[2])
    for key, tensors in results.items():
        diffs = [((a - b).abs().max() / b.abs().max()).item() for a, b in zip(tensors, theirs[key])]
        print(key, "bit-identical" if all(torch.equal(a, b) for a, b in zip(tensors, theirs[key])) else
              "max relative differences (out, x, w, b): " + ", ".join(f"{d:.1e}" for d in diffs))
