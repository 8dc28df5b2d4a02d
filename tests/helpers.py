"""Helpers the tests share: small checkpoints and stage inputs, running stages, comparing gradients. The pipeline
is imported inside the functions that use it, so that the model's tests run where only the library is installed
(e.g. the CUDA parity tests on a GPU machine)."""

import ast
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from longformer.hf import rename_hf_state_dict

ROOT = Path(__file__).resolve().parents[1]

# CPUs' flags (/proc/cpuinfo's names), for deciding as that CPU would
ZEN3 = {"avx2", "fma", "sha_ni"}  # AVX2 only: no bf16 at all on oneDNN
SKYLAKE = {"avx2", "avx512f", "avx512bw", "avx512_vnni"}  # AVX-512 without BF16: oneDNN would emulate it
ZEN4 = SKYLAKE | {"avx512_bf16"}
SAPPHIRE_RAPIDS = SKYLAKE | {"avx512_bf16", "amx_bf16", "amx_tile"}


def imported_modules(path: Path) -> set[str]:
    """The modules a Python file imports, at any level (functions and `if TYPE_CHECKING:` included); `from a import b`
    counts as a and, where b is a module, a.b; `from longformer import Name` as the module that defines Name."""
    import longformer

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            package = ROOT / node.module.replace(".", "/")
            for alias in node.names:
                if (package / f"{alias.name}.py").is_file() or (package / alias.name / "__init__.py").is_file():
                    names.add(f"{node.module}.{alias.name}")
                elif node.module == "longformer" and alias.name in longformer.PUBLIC:
                    names.add(longformer.PUBLIC[alias.name])
    return names


def relative_error(actual: torch.Tensor, reference: torch.Tensor) -> float:
    """|actual - reference| / |reference| (Frobenius norms), in float64; |actual| where the reference is zero."""
    reference = reference.double()
    scale = reference.norm()
    return ((actual.double() - reference).norm() / (scale if scale > 0 else 1)).item()


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
    errors = {k: relative_error(actual[k], g) for k, g in expected.items()}
    assert max(errors.values()) <= 1e-4, sorted(errors.items(), key=lambda kv: -kv[1])[:5]
    for name in expected_key_bias:  # analytically zero on both sides: noise, small next to its layer's weight grads
        layer = name.split(".attn.")[0] + ".attn."
        weight_scale = torch.stack([g.norm() for k, g in expected.items()
                                    if k.startswith(layer) and k.endswith(".weight")]).norm()
        assert max(expected_key_bias[name].norm(), actual_key_bias[name].norm()) <= 1e-6 * weight_scale, name
    if globals_ != "none":
        assert ours.layers[0].attn.key_global.weight.grad.abs().sum() > 0  # the global path is exercised


SHARED_IMDB = ROOT.parent / "shared" / "imdb"


def small_hf_config(**overrides):
    """A small Hugging Face Longformer config with per-layer windows."""
    from transformers import LongformerConfig as HFConfig

    values = dict(vocab_size=120, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                  attention_window=[8, 4, 16], max_position_embeddings=300, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0, pad_token_id=1)
    values.update(overrides)
    return HFConfig(**values)


def prepare_inputs(root: Path, limit: int, val_size: float = 0.1, dropout: float | None = None) -> Path:
    """data/model and data/tokenized as the convert and tokenize stages write them: tiny model, sample reviews."""
    from transformers import AutoTokenizer

    from longformer import weights
    from longformer.hf import convert_hf_checkpoint
    from longformer.pipeline.data import sample_dataset, save_tokenized, tokenize
    from longformer.pipeline.download import download_checkpoint
    from longformer.pipeline.params import DataParams
    from longformer.pipeline.sample import sample_corpus

    download_checkpoint("tiny", root / "checkpoint", sample_corpus())
    if dropout is not None:
        config = json.loads((root / "checkpoint/config.json").read_text())
        config.update(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
        (root / "checkpoint/config.json").write_text(json.dumps(config))
    config, state, lm_head = convert_hf_checkpoint(root / "checkpoint")
    weights.save(root / "data/model", config, state, lm_head=lm_head)
    params = DataParams(max_length=512, limit=limit, val_size=val_size)
    data, summary = tokenize(sample_dataset(), AutoTokenizer.from_pretrained(root / "checkpoint"), params, 1024)
    save_tokenized(data, summary, root / "data/tokenized")
    return root


def stage_workdir(workdir: Path, inputs: Path, params: dict, module: str = "") -> Path:
    """A directory to run stage `module` in: its params.yaml, and the inputs' data/model, data/tokenized and checkpoint
    (as data/checkpoint) as symlinks. For the stages after pretrain, data/pretrained is data/model, as pretrain
    leaves it with no steps."""
    import yaml

    workdir.mkdir(exist_ok=True)
    if not (workdir / "data").exists():
        (workdir / "data").mkdir()
        for name in ("model", "tokenized"):
            (workdir / "data" / name).symlink_to(inputs / "data" / name)
        (workdir / "data/checkpoint").symlink_to(inputs / "checkpoint")
        if module != "stages.pretrain":
            (workdir / "data/pretrained").symlink_to("model")
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    return workdir


def start_stage(module: str, workdir: Path, inputs: Path, params: dict, *args: str):
    """The real stage (`python -m stages.X`) in `workdir` (see stage_workdir), as a process."""
    stage_workdir(workdir, inputs, params, module)
    env = os.environ | {"PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_stage_here(module: str, workdir: Path, inputs: Path, params: dict, *args: str, stdin: str = ""):
    """The stage's command line (`stages.X`'s typer app) in this process, in `workdir`: what `python -m stages.X`
    does once Python has started. Returns typer's result (exit_code, output: stdout and stderr, exception)."""
    import importlib

    from typer.testing import CliRunner

    stage_workdir(workdir, inputs, params, module)
    previous = Path.cwd()
    os.chdir(workdir)
    try:
        return CliRunner().invoke(importlib.import_module(module).cli, list(args), input=stdin,
                                  env={"TQDM_DISABLE": "1"})
    finally:
        os.chdir(previous)


def finish(process) -> str:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    return output


def kill_at_step(process, state: Path, step: int) -> int:
    """kill -9 the training stage `process` once its resume state `state` holds optimizer step >= `step`; returns
    the step the state holds."""
    deadline = time.time() + 300
    while time.time() < deadline:
        if state.is_file() and torch.load(state, weights_only=False)["position"]["step"] >= step:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return torch.load(state, weights_only=False)["position"]["step"]
