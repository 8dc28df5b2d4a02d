"""The README's layout table is the tree: each folder's row names every module in it, and only modules that exist."""

import re

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
