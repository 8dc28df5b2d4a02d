"""The package's layers: the kernels import nothing of the model; the model library needs only torch and
safetensors and never imports the pipeline; no module of the package imports itself back through others, not even
for annotations; and no function of the library is longer than a screen."""

import ast
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT, imported_modules

LIBRARY = sorted(p for p in (ROOT / "longformer").rglob("*.py") if "pipeline" not in p.relative_to(ROOT).parts)


def test_the_model_library_runs_without_the_pipelines_dependencies():
    """`import longformer` and a forward and backward, with transformers, DVC, datasets, scikit-learn, numpy, yaml,
    typer and tqdm made unimportable."""
    script = """
import importlib.util
import sys
BLOCKED = {"transformers", "tokenizers", "huggingface_hub", "datasets", "dvc", "dvclive", "sklearn", "numpy", "yaml",
           "typer", "tqdm", "pandas", "pyarrow"}

class Block:  # finds the blocked modules, and fails to load them as if they were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return importlib.util.spec_from_loader(name, self)

    def create_module(self, spec):
        raise ModuleNotFoundError(f"{spec.name} is blocked")

    def exec_module(self, module):
        pass

sys.meta_path.insert(0, Block())
import torch
from longformer import HeadConfig, LongformerClassifier, LongformerConfig, kernels

config = LongformerConfig(vocab_size=50, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                          attention_window=[4, 8], max_position_embeddings=40)
model = LongformerClassifier(config, HeadConfig(dim=8))
model(torch.randint(3, 50, (2, 21))).sum().backward()
with kernels.disabled():
    model(torch.randint(3, 50, (2, 21))).sum().backward()
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_the_library_never_imports_the_pipeline():
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in imported_modules(p) if m.startswith("longformer.pipeline"))
                 for p in LIBRARY}
    assert not {k: v for k, v in offenders.items() if v}


def test_the_kernels_import_nothing_of_the_model():
    kernels = sorted((ROOT / "longformer/kernels").rglob("*.py"))
    offenders = {str(p.relative_to(ROOT)): sorted(m for m in imported_modules(p) if m.startswith("longformer.")
                                                  and not m.startswith("longformer.kernels"))
                 for p in kernels}
    assert not {k: v for k, v in offenders.items() if v}


def test_no_function_in_the_library_is_over_60_lines():
    long = [f"{p.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for p in sorted((ROOT / "longformer").rglob("*.py")) for node in ast.walk(ast.parse(p.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60]
    assert not long


def test_no_import_cycle_in_the_package():
    """Function-level imports count, and so do imports for annotations only (under TYPE_CHECKING)."""
    modules = {module_name(p): p for p in (ROOT / "longformer").rglob("*.py")}
    graph = {name: {m for m in imported_modules(path) if m in modules and m != name} for name, path in modules.items()}
    graph = {name: deps - {package_of(name)} for name, deps in graph.items()}  # a module's own package runs first
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        assert name not in trail, " -> ".join(trail[trail.index(name):] + [name])
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, trail + [name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(name: str) -> str:
    return name.rsplit(".", 1)[0]
