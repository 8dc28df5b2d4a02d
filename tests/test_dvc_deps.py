"""dvc.yaml's code deps are exactly what each stage runs: every file of this project that its script imports,
directly or through other modules (function-level imports included), and nothing more. A missing dep leaves a stage
up to date after a change that alters its output; a superfluous one re-runs it (on real IMDb, for hours) after a
change that cannot."""

from pathlib import Path

import pytest
import yaml

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
