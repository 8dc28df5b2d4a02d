"""dvc.yaml's deps are what each stage runs: every file of this project that its script imports, directly or
through other modules (function-level imports included), so that editing code re-runs the stages it can change.
A folder in deps covers every file below it."""

from pathlib import Path

import yaml

from tests.helpers import ROOT, imported_modules


def project_imports(script: Path) -> set[str]:
    """Paths (relative to the root) of the project's modules that running `script` can import."""
    seen: set[str] = set()
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


def test_every_stage_depends_on_the_code_it_runs():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    missing = {}
    for name, stage in stages.items():
        script = stage["cmd"].split("-m ")[1].split()[0].replace(".", "/") + ".py"
        deps = stage["deps"]
        needed = project_imports(ROOT / script) | {script}
        uncovered = [path for path in needed if not any(path == dep or path.startswith(dep + "/") for dep in deps)]
        if uncovered:
            missing[name] = sorted(uncovered)
    assert not missing, f"dvc.yaml deps lack code the stages run: {missing}"
