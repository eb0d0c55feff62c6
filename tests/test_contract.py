"""The chapter contract and the library's shape, checked for every registered chapter."""

import json
import subprocess
import sys

import pytest

from paperbook.core import chapters, get_chapter, resolve

NAMES = list(chapters())


def _cells(path):
    return json.loads(path.read_text())["cells"]


@pytest.mark.parametrize("name", NAMES)
def test_chapter_declaration(name, root):
    ch = get_chapter(name)
    assert ch.name == name and ch.summary and ch.paper
    assert (root / "nbs" / ch.notebook).is_file()
    assert f"nbs/{ch.notebook[:-6]}" in (root / "_toc.yml").read_text(), "chapter missing from _toc.yml"


@pytest.mark.parametrize("name", NAMES)
def test_every_preset_resolves_also_with_its_smoke_cut(name):
    ch = get_chapter(name)
    for preset in ch.presets:
        cfg = resolve(name, preset)
        assert cfg.world_size >= 1
        resolve(name, preset, dict(ch.smoke))  # the cut to a few steps keeps the preset's processes
    if "gpu-1" in ch.presets:  # what benchmarks/gpu_smoke.py runs
        resolve(name, "gpu-1", {**ch.smoke, "nnodes": 1, "nproc_per_node": 1})


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


def test_the_book_has_its_chapters_and_no_registry_map():
    import paperbook.core as core

    assert {"example", "pangu-alpha", "acsl", "colormap", "iwls2020"} <= set(NAMES)
    assert not hasattr(core, "CHAPTERS")
    assert NAMES == sorted(NAMES, key=lambda n: get_chapter(n).notebook)  # book order


TEMP_CHAPTER = """
from dataclasses import dataclass
from paperbook.core import BaseConfig, Chapter, Result, claim

@dataclass(kw_only=True)
class Config(BaseConfig):
    n: int = 3

def experiment(cfg, info):
    return Result(metrics={"n": cfg.n, "world": info.world_size},
                  claims=[claim("n is small", paper="-", values={cfg.seed: cfg.n}, rule=lambda v: v < 10)])

CHAPTER = Chapter(name="tmp-chapter", title="T", summary="a chapter added outside the package",
                  paper="-", config=Config, presets={"cpu-toy": Config()}, notebook="99_tmp.ipynb",
                  experiment=experiment)
"""


@pytest.fixture
def temp_package(root):
    "A temporary sub-package of paperbook/ (removed afterwards): how a new chapter is added."
    import os
    import shutil

    made = []

    def make(files: dict[str, str]) -> str:
        name = f"_tmp_chapter_{os.getpid()}_{len(made)}"
        pkg = root / "paperbook" / name
        pkg.mkdir()
        made.append(pkg)
        for fname, text in {"__init__.py": "", **files}.items():
            (pkg / fname).write_text(text)
        return name

    yield make
    for pkg in made:
        shutil.rmtree(pkg, ignore_errors=True)


def _cli(*args, cwd):
    env = {**__import__("os").environ, "PAPERBOOK_PROGRESS": "0"}
    return subprocess.run([sys.executable, "-m", "paperbook.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def test_a_chapter_added_as_a_package_is_listed_and_runs_without_editing_core(temp_package, tmp_path):
    temp_package({"chapter.py": TEMP_CHAPTER})
    listed = _cli("list", cwd=tmp_path)
    assert listed.returncode == 0 and "tmp-chapter" in listed.stdout and "example" in listed.stdout, listed.stderr
    ran = _cli("run", "tmp-chapter", "--set", "n=4", "--out", tmp_path / "out", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    rec = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert rec["metrics"] == {"n": 4, "world": 1} and rec["reproduction"][0]["k_of_n"] == "1/1"
    bad = _cli("run", "tmp-chapter", "--set", "m=4", cwd=tmp_path)
    assert bad.returncode == 2 and "unknown override 'm'" in bad.stderr


def test_an_unimportable_chapter_is_reported_not_fatal(temp_package, tmp_path):
    name = temp_package({"chapter.py": "import a_module_that_is_not_installed\n"})
    bare = temp_package({"chapter.py": "X = 1  # declares no CHAPTER\n"})
    r = _cli("list", cwd=tmp_path)
    assert r.returncode == 0 and "example" in r.stdout
    assert f"paperbook.{name}.chapter" in r.stdout and "a_module_that_is_not_installed" in r.stdout
    assert f"paperbook.{bare}.chapter" in r.stdout and "AttributeError" in r.stdout
    r = _cli("run", "no-such-chapter", cwd=tmp_path)
    assert r.returncode == 2 and "unknown chapter 'no-such-chapter'" in r.stderr
    assert "a_module_that_is_not_installed" in r.stderr


def _import_edges(root):
    "module -> modules it imports (module level and inside functions), over paperbook/."
    import ast

    pkg = root / "paperbook"
    mods = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
            for p in pkg.rglob("*.py") if p.name != "_modidx.py"}
    edges = {m: set() for m in mods}
    for m, p in mods.items():
        base = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(p.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                src = node.module or ""
                if node.level:
                    parts = base.split(".")
                    src = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                names = [f"{src}.{a.name}" if f"{src}.{a.name}" in mods else src for a in node.names]
            for t in names:
                while t not in mods and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in mods and t != m:
                    edges[m].add(t)
    return edges


def test_the_import_graph_has_no_cycle(root):
    edges = _import_edges(root)
    assert "paperbook.pangu.train" in edges["paperbook.pangu.distributed"]  # the reader sees real edges
    state = {}

    def visit(m, path):
        state[m] = "open"
        for t in sorted(edges[m]):
            assert state.get(t) != "open", "import cycle: " + " -> ".join(path + [t])
            if t not in state:
                visit(t, path + [t])
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])


NOTEBOOKS = sorted(ROOT_NBS.glob("*.ipynb"))


@pytest.mark.parametrize("notebook", [p.name for p in NOTEBOOKS])
def test_code_fits_the_widened_column(notebook, root):
    "Code lines stay within 120 characters (the book's theme is widened to show them without scrolling)."
    long = [line for c in _cells(root / "nbs" / notebook) if c["cell_type"] == "code"
            for line in "".join(c["source"]).splitlines() if len(line) > 120]
    assert not long, long


@pytest.mark.parametrize("notebook", [p.name for p in NOTEBOOKS])
def test_pages_cite_public_sources_not_this_repository(notebook, root):
    for c in _cells(root / "nbs" / notebook):
        if c["cell_type"] == "markdown":
            assert "shared/" not in "".join(c["source"]), "point readers at PAPERBOOK_DATA / arXiv, not ../shared"


@pytest.mark.parametrize("name", NAMES)
def test_the_declaration_and_config_are_glue_on_the_page(name, root):
    "A chapter page shows the paper before its configuration: the CHAPTER and Config cells are hidden."
    cells = _cells(root / "nbs" / get_chapter(name).notebook)
    for marker in ("CHAPTER = Chapter(", "class Config(BaseConfig)"):
        (cell,) = [c for c in cells if marker in "".join(c["source"])]
        tags = cell.get("metadata", {}).get("tags", [])
        assert {"hide-input", "remove-cell", "remove-input"} & set(tags), (name, marker)


def test_every_bibliography_entry_has_author_title_and_year(root):
    # the book builds with warnings as errors: an entry without an author fails `make book` only at its end
    import re

    text = (root / "book" / "references.bib").read_text()
    entries = re.split(r"\n(?=@)", text.strip())
    assert len(entries) >= 10
    missing = [(e.split(",")[0], f) for e in entries for f in ("author", "title", "year")
               if not re.search(rf"^\s*{f}\s*=", e, re.M)]
    assert not missing, f"bibliography entries lacking fields: {missing}"
    keys = [e.split("{", 1)[1].split(",")[0] for e in entries]
    assert len(keys) == len(set(keys)), "duplicate bibliography keys"


def _third_party_imports(package) -> set[str]:
    "Top-level names of the modules a package imports (anywhere in it), less the standard library and paperbook."
    import ast

    names = set()
    for p in package.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"paperbook"}


EXTRA = {"active_fluid": "ecoli"}  # a chapter package whose extra has another name than the package's


@pytest.mark.parametrize("package", sorted(p.parent.name for p in (ROOT_NBS.parent / "paperbook").glob("*/chapter.py")))
def test_a_chapter_declares_what_it_imports(package, root):
    "Every third-party module a chapter imports is a core dependency or in the chapter's extra (pyproject.toml)."
    import importlib.metadata
    import re
    import tomllib

    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    norm = lambda req: re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", req)[0]).lower()
    extra = EXTRA.get(package, package.replace("_", "-"))
    declared = {norm(r) for r in project["dependencies"] + project["optional-dependencies"].get(extra, [])}
    dists = importlib.metadata.packages_distributions()
    missing = {m: dists.get(m) for m in _third_party_imports(root / "paperbook" / package)
               if not {norm(d) for d in dists.get(m, [m])} & declared}
    assert not missing, f"paperbook.{package} imports {missing} (module: distributions), not in its extra {extra!r}"


def test_the_wheel_holds_every_chapter(tmp_path, root):
    "Built as a wheel and installed away from the checkout, the package finds every chapter and runs one."
    import os
    import shutil

    src = tmp_path / "src"  # a copy of what the wheel is built from: the build writes nothing into the checkout
    shutil.copytree(root / "paperbook", src / "paperbook",  # not a temporary chapter another worker is testing
                    ignore=shutil.ignore_patterns("__pycache__", "_tmp_chapter_*"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(root / f, src / f)
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", str(src), "-w", str(tmp_path)], check=True)
    site = tmp_path / "site"
    subprocess.run(pip + ["install", "--no-deps", "--target", str(site), *map(str, tmp_path.glob("*.whl"))], check=True)
    code = ("import paperbook, paperbook.core as c; print(paperbook.__file__); print(' '.join(sorted(c.chapters())));"
            "r = c.get_chapter('example').run(c.resolve('example', 'cpu-toy', {'repeats': 5, 'device': 'cpu'}));"
            "print(len(r.claims)); from paperbook.core.records import _git_commit; print(_git_commit())")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(site), "PAPERBOOK_PROGRESS": "0"})
    assert r.returncode == 0, r.stderr[-2000:]
    where, names, claims, commit = r.stdout.split("\n")[:4]
    assert where.startswith(str(site)), where  # the wheel's copy, not the checkout's
    assert names.split() == sorted(NAMES) and int(claims) >= 1
    assert commit == "None"  # installed outside any git checkout: no commit to name
