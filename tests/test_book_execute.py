"""book/execute.py: the parallel pre-execution `make book` runs before `jupyter-book build`."""
import importlib.util
from pathlib import Path

import nbformat
import pytest
from jupyter_cache import get_cache

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("book_execute", ROOT / "book" / "execute.py")
bx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bx)


def _config(tmp_path, mode="cache", timeout=60):
    cfg = tmp_path / "_config.yml"
    cfg.write_text(f"execute:\n  execute_notebooks: {mode}\n  timeout: {timeout}\n  allow_errors: false\n")
    return cfg


def _notebook(path, *sources):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_order_puts_chapter_pages_first():
    names = ["nbs/01a_pangu_model.ipynb", "nbs/02_acsl.ipynb", "nbs/00_core_config.ipynb",
             "nbs/00_core.ipynb", "nbs/10_layout_transfer.ipynb", "nbs/00a_dist.ipynb"]
    assert bx.order(names) == ["nbs/02_acsl.ipynb", "nbs/10_layout_transfer.ipynb", "nbs/00_core.ipynb",
                               "nbs/00_core_config.ipynb", "nbs/00a_dist.ipynb", "nbs/01a_pangu_model.ipynb"]


def test_settings_read_the_book_config_and_refuse_a_mode_that_ignores_the_cache(tmp_path):
    assert bx.settings(_config(tmp_path, timeout=123)) == (123, False)
    with pytest.raises(SystemExit, match="execute_notebooks is 'force'.*needs 'cache'"):
        bx.settings(_config(tmp_path, mode="force"))
    assert bx.settings(ROOT / "_config.yml")[0] >= 60  # this book's own config is in cache mode


def test_executes_into_the_cache_the_build_reads_and_fails_clearly(tmp_path, capsys):
    good = _notebook(tmp_path / "01_good.ipynb", "#| export\nimport os\nprint(os.getcwd())", "6 * 7")
    cache_dir = tmp_path / "cache"
    assert bx.main(["--jobs", "2", "--config", str(_config(tmp_path)), "--cache", str(cache_dir),
                    str(good)]) == 0
    # the build matches the notebook as its source-read step leaves it (no `#|` lines) and merges the outputs
    as_built = nbformat.reads(bx.strip_directives(good.read_text()), as_version=4)
    assert as_built.cells[0].source == "import os\nprint(os.getcwd())"
    _, merged = get_cache(str(cache_dir)).merge_match_into_notebook(as_built)
    assert merged.cells[0].outputs[0]["text"].strip() == str(tmp_path)  # ran in the notebook's folder
    assert merged.cells[1].outputs[0]["data"]["text/plain"] == "42"

    bad = _notebook(tmp_path / "02_bad.ipynb", "raise ValueError('boom from the notebook')")
    capsys.readouterr()
    assert bx.main(["--config", str(_config(tmp_path)), "--cache", str(cache_dir), str(bad)]) == 1
    out = capsys.readouterr()
    assert "boom from the notebook" in out.err and "02_bad.ipynb: FAILED" in out.out
    with pytest.raises(KeyError):  # a failed notebook is not cached: the build would not render it
        get_cache(str(cache_dir)).match_cache_notebook(nbformat.reads(bx.strip_directives(bad.read_text()), 4))


def test_refuses_missing_notebooks_and_bad_jobs_before_running(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bx.main(["--config", str(_config(tmp_path)), str(tmp_path / "nope.ipynb")])
    assert "no such notebook" in capsys.readouterr().err
    nb = _notebook(tmp_path / "x.ipynb", "1")
    with pytest.raises(SystemExit):
        bx.main(["--jobs", "0", "--config", str(_config(tmp_path)), str(nb)])
    assert "--jobs must be at least 1" in capsys.readouterr().err
    broken = tmp_path / "broken.ipynb"
    broken.write_text("{not json")
    assert bx.main(["--config", str(_config(tmp_path)), "--cache", str(tmp_path / "c"), str(broken)]) == 1
    out = capsys.readouterr()
    assert "JSONDecodeError" in out.err and "broken.ipynb: FAILED" in out.out


def test_jobs_run_notebooks_at_the_same_time(tmp_path):
    """Two notebooks that each wait for the other's flag file finish only when they run together."""
    wait = ("import pathlib, time\npathlib.Path({me!r}).touch()\nt0 = time.time()\n"
            "while not pathlib.Path({other!r}).exists():\n"
            "    assert time.time() - t0 < 60, 'the other notebook never started'\n    time.sleep(0.05)")
    a, b = str(tmp_path / "a.flag"), str(tmp_path / "b.flag")
    nbs = [_notebook(tmp_path / "01_a.ipynb", wait.format(me=a, other=b)),
           _notebook(tmp_path / "02_b.ipynb", wait.format(me=b, other=a))]
    cache_dir = str(tmp_path / "cache")
    assert bx.main(["--jobs", "2", "--config", str(_config(tmp_path)), "--cache", cache_dir, *map(str, nbs)]) == 0
    for nb in nbs:
        get_cache(cache_dir).match_cache_notebook(nbformat.reads(bx.strip_directives(nb.read_text()), 4))


def test_a_kernel_that_dies_at_start_is_started_again_and_other_errors_are_not(tmp_path, monkeypatch):
    nb = _notebook(tmp_path / "x.ipynb", "1")
    real, calls = bx.single_nb_execution, []

    def dies(times, message):
        def run(*args, **kwargs):
            calls.append(message)
            if len(calls) <= times:
                raise RuntimeError(message)
            return real(*args, **kwargs)
        return run

    monkeypatch.setattr(bx.time, "sleep", lambda s: None)
    monkeypatch.setattr(bx, "single_nb_execution", dies(2, "Kernel died before replying to kernel_info"))
    path, executed, _, err = bx.run_one((str(nb), 60, False))
    assert err is None and len(calls) == 3 and executed.cells[0].outputs[0]["data"]["text/plain"] == "1"

    calls.clear()
    monkeypatch.setattr(bx, "single_nb_execution", dies(3, "Kernel died before replying to kernel_info"))
    assert "kernel_info" in bx.run_one((str(nb), 60, False))[3] and len(calls) == 3  # three starts, then fail

    calls.clear()
    monkeypatch.setattr(bx, "single_nb_execution", dies(1, "Kernel died"))  # died while running: not retried
    _, executed, _, err = bx.run_one((str(nb), 60, False))
    assert executed is None and err == "RuntimeError: Kernel died" and len(calls) == 1
