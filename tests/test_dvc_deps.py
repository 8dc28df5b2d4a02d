"""dvc.yaml's deps are exactly what each stage runs and reads: every file of this project that its script imports,
directly or through other modules (function-level imports included), and every param it uses or prints, and nothing
more. A missing dep leaves a stage up to date after a change that alters its output; a superfluous one re-runs it (on
real IMDb, for hours) after a change that cannot."""

import ast
import dataclasses
import inspect
import textwrap
from pathlib import Path

import pytest
import yaml

from longformer.pipeline.params import Params
from tests.helpers import ROOT, imported_modules

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
CODE = ("stages/", "longformer/")  # deps under these are code; the rest are data


def project_imports(script: Path) -> set[str]:
    """Paths (relative to the root) of the project's files that running `script` can import, and the script."""
    seen = {str(script.relative_to(ROOT))}
    todo = [script]
    while todo:
        for name in imported_modules(todo.pop()):
            parts = name.split(".")
            if parts[0] != "longformer":
                continue
            # importing a.b runs a/__init__.py, then a/b.py (or a/b/__init__.py)
            for depth in range(1, len(parts) + 1):
                base = ROOT.joinpath(*parts[:depth])
                module = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
                relative = str(module.relative_to(ROOT))
                if module.is_file() and relative not in seen:
                    seen.add(relative)
                    todo.append(module)
    return seen


def code_run_by(stage: str) -> set[str]:
    return project_imports(ROOT / (STAGES[stage]["cmd"].split("-m ")[1].split()[0].replace(".", "/") + ".py"))


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_stage_depends_on_exactly_the_code_it_runs(stage):
    listed = {dep for dep in STAGES[stage]["deps"] if dep.startswith(CODE)}
    assert not any((ROOT / dep).is_dir() for dep in listed), "a folder of code is more than a stage runs"
    needed = code_run_by(stage)
    assert not needed - listed, f"{stage}: dvc.yaml lacks code the stage runs"
    assert not listed - needed, f"{stage}: dvc.yaml lists code the stage never runs"


GROUPS = {f.name: f.default_factory for f in dataclasses.fields(Params)}  # group -> its dataclass


def fields_read_by(group: str, method: str) -> set[str]:
    """The params a group's method reads (`self.x`), as group.x."""
    source = textwrap.dedent(inspect.getsource(getattr(type(GROUPS[group]()), method)))
    return {f"{group}.{node.attr}" for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"}


def params_read_by(stage: str) -> set[str]:
    """The params a stage's script reads from `load_params(...)`: `group.key`, a whole `group` handed on, or every group
    where the whole Params is handed on; a group's method counts the fields it reads."""
    script = ROOT / (STAGES[stage]["cmd"].split("-m ")[1].split()[0].replace(".", "/") + ".py")
    tree = ast.parse(script.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    loaded = {node for node in ast.walk(tree) if isinstance(node, ast.Call) and getattr(node.func, "id", "") ==
              "load_params"}
    roots = {parents[call].targets[0].id: "" for call in loaded if isinstance(parents[call], ast.Assign)}
    read: set[str] = set()

    def path_of(node: ast.AST) -> str | None:  # "", "group" or "group.key" for an expression on the params
        if node in loaded:
            return ""
        if isinstance(node, ast.Name) and node.id in roots:
            return roots[node.id]
        if isinstance(node, ast.Attribute):
            base = path_of(node.value)
            return None if base is None else f"{base}.{node.attr}".lstrip(".")
        return None

    for node in ast.walk(tree):
        path = path_of(node)
        parent = parents.get(node)
        if path is None or (isinstance(parent, ast.Attribute) and path_of(parent) is not None):
            continue  # not the params, or not the whole of a chain
        if isinstance(parent, ast.Assign) and isinstance(parent.targets[0], ast.Name):
            roots[parent.targets[0].id] = path  # an alias: read where it is used
            continue
        group, _, key = path.partition(".")
        if key and key not in {f.name for f in dataclasses.fields(GROUPS[group]())}:  # a method
            read |= fields_read_by(group, key)
        else:
            read |= {path} if path else set(GROUPS)
    return read


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_stage_depends_on_exactly_the_params_it_reads(stage):
    declared = set(STAGES[stage].get("params", []))
    read = params_read_by(stage)
    covered = {name for name in read if name in declared or name.split(".")[0] in declared}
    assert read == covered, f"{stage}: dvc.yaml lacks params the stage reads: {sorted(read - covered)}"
    used = {name for name in declared if any(r == name or r.startswith(f"{name}.") or name.startswith(f"{r}.")
                                             for r in read)}
    assert declared == used, f"{stage}: dvc.yaml lists params the stage never reads: {sorted(declared - used)}"


def test_the_params_reader_sees_every_way_a_stage_reads_them():
    assert params_read_by("convert") == {"model.max_length", "model.attention_window"}  # through a method
    assert params_read_by("tokenize") == {"data", "data.dataset"}  # through an alias
    assert params_read_by("export") == set(GROUPS)  # the whole params: the card prints every one
    assert params_read_by("evaluate") == {"train.nproc", "evaluate.batch_size", "train.precision"}
    assert params_read_by("baseline") == set()


def test_editing_the_training_loop_leaves_the_stages_before_training_up_to_date():
    for stage in ("download", "convert", "tokenize", "baseline"):
        assert not {"longformer/pipeline/train.py", "longformer/pipeline/step.py"} & code_run_by(stage), stage
    assert "longformer/pipeline/train.py" in code_run_by("train")


def test_editing_the_attention_kernel_leaves_download_tokenize_and_baseline_up_to_date():
    for stage in ("download", "tokenize", "baseline"):
        assert not {p for p in code_run_by(stage) if p.startswith("longformer/kernels/")}, stage
        assert "longformer/attention.py" not in code_run_by(stage), stage
    assert "longformer/kernels/banded.py" in code_run_by("train")


def test_download_needs_neither_datasets_nor_scikit_learn():
    third_party = {name.split(".")[0] for path in code_run_by("download") for name in imported_modules(ROOT / path)}
    assert not {"datasets", "sklearn"} & third_party
