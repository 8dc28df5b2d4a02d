"""Profile the offline default's fine-tuning micro-batch: the tiny model, 8 reviews, bf16 autocast (auto here), dropout."""
import sys, time, torch
from longformer import LongformerClassifier, LongformerModel, HeadConfig
P, prec = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
model = LongformerClassifier.from_encoder(LongformerModel.load(P + "/data/pretrained"), HeadConfig(dim=0)).train()
lengths = [336, 410, 520, 640, 700, 788, 850, 910]
n = 1024
ids = torch.randint(5, 800, (8, n)); mask = torch.zeros(8, n, dtype=torch.long)
for i, l in enumerate(lengths): mask[i, :l] = 1
glob = torch.zeros_like(ids); glob[:, 0] = 1
def step():
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
        logits = model(ids, attention_mask=mask, global_attention_mask=glob)
    torch.nn.functional.cross_entropy(logits.float(), torch.zeros(8, dtype=torch.long)).backward()
for _ in range(3): step()
t = time.perf_counter()
for _ in range(20): step()
print(f"{prec}: {(time.perf_counter() - t) / 20 * 1000:.1f} ms per micro-batch of 8 (padded to {n})")
with torch.profiler.profile() as prof:
    for _ in range(5): step()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
