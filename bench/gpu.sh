#!/usr/bin/env bash
# The README's GPU figures in one go: parity on CUDA, then the bench in bf16 autocast, base (with and without
# gradient checkpointing; IMDb steps at batch 1 and 8) and large at 4096 tokens, then where a batch-1 step's time
# goes (step_profile.py). Results go to OUT_DIR (default bench/results).
#
#   python -m bench.imdb_sample 256 bench/results/imdb_lengths.json   # once, where ../shared/imdb is
#   bench/gpu.sh [OUT_DIR]
set -euo pipefail
out=${1:-bench/results}
python=${PYTHON:-python}
lengths=bench/results/imdb_lengths.json
imdb=(--imdb-reviews 0)
[[ -f $lengths ]] && imdb=(--imdb-lengths "$lengths")
bench=("$python" -m bench.bench --device cuda --dtype bf16 --repeats 5)
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # longformer/, for bench.py (GPU machines have no install of it)

"$python" -m pytest tests/test_parity.py -k cuda -q -p no:cacheprovider
"${bench[@]}" "${imdb[@]}" --checkpointing --out "$out/gpu_base_checkpointing.json"
"${bench[@]}" "${imdb[@]}" --imdb-batch-size 8 --checkpointing --lengths 4096 --out "$out/gpu_base_checkpointing_batch8.json"
"${bench[@]}" "${imdb[@]}" --out "$out/gpu_base.json"
"${bench[@]}" --imdb-reviews 0 --large --checkpointing --lengths 4096 --out "$out/gpu_large_checkpointing.json"
"${bench[@]}" --imdb-reviews 0 --large --lengths 4096 --out "$out/gpu_large.json"
"$python" -m bench.step_profile --tokens 300 | tee "$out/gpu_step_profile.txt"  # host time against GPU time, batch 1
