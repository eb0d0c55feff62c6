"""The chapter contract and the library's shape, checked for every registered chapter."""

import json
import subprocess
import sys

import pytest

from paperbook.core import CHAPTERS, get_chapter, resolve

NAMES = list(CHAPTERS)


def _cells(path):
    return json.loads(path.read_text())["cells"]


@pytest.mark.parametrize("name", NAMES)
def test_chapter_declaration(name, root):
    ch = get_chapter(name)
    assert ch.name == name and ch.summary and ch.paper
    assert (root / "nbs" / ch.notebook).is_file()
    assert f"nbs/{ch.notebook[:-6]}" in (root / "_toc.yml").read_text(), "chapter missing from _toc.yml"


@pytest.mark.parametrize("name", NAMES)
def test_every_preset_resolves(name):
    ch = get_chapter(name)
    for preset in ch.presets:
        cfg = resolve(name, preset)
        assert cfg.world_size >= 1


ROOT_NBS = __import__("pathlib").Path(__file__).resolve().parents[1] / "nbs"
PARAM_NOTEBOOKS = sorted({get_chapter(n).notebook for n in NAMES}
                         | {p.name for p in ROOT_NBS.glob("[0-9][0-9]*.ipynb") if not p.name.startswith("00")})


@pytest.mark.parametrize("notebook", PARAM_NOTEBOOKS)
def test_one_parameters_cell_with_preset_and_overrides(notebook, root):
    cells = [c for c in _cells(root / "nbs" / notebook) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1
    ns: dict = {}
    exec("".join(cells[0]["source"]), ns)  # the cell holds two literals and nothing else
    assert {k for k in ns if not k.startswith("__")} == {"preset", "overrides"}
    assert ns["preset"] == "cpu-toy" and ns["overrides"] == {}


def test_notebooks_committed_without_outputs(root):
    for nb in sorted((root / "nbs").glob("*.ipynb")):
        for c in _cells(nb):
            assert not c.get("outputs"), f"{nb.name}: outputs are produced by runs, not committed (make export)"


def test_import_pulls_in_no_notebook_tooling():
    code = ("import sys, paperbook, paperbook.core, paperbook.dist, paperbook.cli\n"
            "bad = [m for m in ('IPython', 'ipykernel', 'jupyter_client', 'papermill', 'nbformat', 'sphinx', "
            "'myst_nb', 'nbdev') if m in sys.modules]\n"
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_library_has_no_hard_coded_cuda(root):
    for py in (root / "paperbook").rglob("*.py"):
        text = py.read_text()
        assert ".cuda()" not in text, py
