"""The README's layout table is the tree: each folder's row names every module in it, and only modules that exist.
Every `dvc exp run -S group.key=value` in the README and docs/ sets a parameter that exists, to a valid value."""

import copy
import re

import pytest
import yaml

from longformer.pipeline.params import _Yaml12Loader, parse_params
from tests.helpers import ROOT


def layout_rows() -> dict[str, set[str]]:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Layout"):]
    rows = re.findall(r"^\| `([\w/]+)/` \| (.*) \|$", table, re.M)
    return {folder: set(re.findall(r"`(\w+\.py)`", text)) for folder, text in rows}


def test_the_layout_table_names_every_module_of_each_folder():
    rows = layout_rows()
    assert {"longformer", "longformer/kernels", "longformer/pipeline", "stages", "bench"} <= set(rows)
    for folder, named in rows.items():
        if folder in ("tests",):
            continue
        modules = {p.name for p in (ROOT / folder).glob("*.py") if p.name != "__init__.py"}
        assert named == modules, (folder, sorted(named - modules), sorted(modules - named))


def documented_experiments() -> list[tuple[str, list[tuple[str, str]]]]:
    """(file, [(group.key, value), ...]) for each `dvc exp run` in the README and docs/, continuation lines joined."""
    commands = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text().replace("\\\n", " ")
        for line in re.findall(r"^dvc exp run .*$", text, re.M):
            commands.append((path.name, re.findall(r"-S ([\w.]+)=(\S+)", line)))
    return commands


def with_overrides(shipped: dict, overrides: list[tuple[str, str]]) -> dict:
    """A copy of the params with each `group.key` set to its value, read as DVC reads it (YAML 1.2)."""
    params = copy.deepcopy(shipped)
    for key, value in overrides:
        group, name = key.split(".")
        params[group][name] = yaml.load(value, Loader=_Yaml12Loader)
    return params


@pytest.mark.parametrize("where, overrides", documented_experiments())
def test_documented_experiments_set_valid_params(where, overrides):
    """As `dvc exp run` applies them to the shipped params.yaml: each alternative of a queued grid (`a,b`) in turn,
    the others at their first."""
    shipped = yaml.load((ROOT / "params.yaml").read_text(), Loader=_Yaml12Loader)
    firsts = [(key, values.split(",")[0]) for key, values in overrides]
    for key, values in overrides:
        group, name = key.split(".")
        assert name in shipped[group], f"{where}: -S {key}: no such parameter"
        for value in values.split(","):
            parse_params(with_overrides(shipped, firsts + [(key, value)]))


def test_the_readme_is_a_guide_of_at_most_300_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


def test_the_performance_table_is_the_one_its_json_files_give():
    """The README's performance table is what `bench.readme_table` prints for the files its command names."""
    from bench.readme_table import table

    readme = (ROOT / "README.md").read_text()
    command = readme[readme.index("-m bench.readme_table"):].split("```")[0].replace("\\\n", " ")
    files = [ROOT / name for name in command.split()[2:]]  # after "-m bench.readme_table"
    assert files and all(path.is_file() for path in files), files
    assert table(files) in readme
