"""The README's performance table, from `bench.bench`'s JSON files: ours against `transformers`, forward+backward of
one base-shaped step, as each file measured it.

    python -m bench.readme_table bench/results/2026-12-07-zen4-cpu-fp32.json bench/results/2026-12-07-zen4-cpu-bf16.json

Two speed-ups: as measured (each model with glibc's default allocator: at 4096 tokens `transformers` spends much of
its step in page faults on fresh memory), and with freed memory kept for reuse on both (`keep_freed_memory()`, as
the train and evaluate stages run ours), the fair one. The bench measures the second at its longest length only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.harness import cpu_label


def table(files: list[Path]) -> str:
    """A markdown table: a row per file and length."""
    lines = ["| CPU | precision | tokens | transformers | ours | speed-up | freed memory kept on both | memory (ours / "
             "transformers) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for path in files:
        report = json.loads(path.read_text())
        setup = report["setup"]
        rows = {(r["model"], r["tokens"]): r for r in report["lengths"]}
        kept = {(r["model"], r["tokens"]): r["forward_backward_s"] for r in report.get("freed_memory_kept", [])}
        for tokens in setup["lengths"]:
            theirs, ours = rows[("transformers", tokens)], rows[("ours", tokens)]
            fair = (f"{kept[('transformers', tokens)] / kept[('ours', tokens)]:.2f}x"
                    if ("ours", tokens) in kept else "")
            lines.append(f"| {cpu_label(setup['cpu_kind'])} | {setup['dtype']} | {tokens} | "
                         f"{theirs['forward_backward_s']:.2f} s | {ours['forward_backward_s']:.2f} s | "
                         f"{theirs['forward_backward_s'] / ours['forward_backward_s']:.2f}x | {fair} | "
                         f"{ours['forward_backward_peak_mb'] / theirs['forward_backward_peak_mb']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", type=Path, nargs="+", help="bench.bench's JSON files, one row group each")
    print(table(parser.parse_args().files))


if __name__ == "__main__":
    main()
