"""The `paperbook` command: list, run, plan, batch, and bad arguments."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from paperbook.cli import plan_info
from paperbook.core import parse_sets

from helpers import ENV, cli


def test_list():
    r = cli("list")
    assert r.returncode == 0, r.stderr
    assert "example" in r.stdout and "cpu-toy" in r.stdout and "node-8" in r.stdout


def test_run_writes_metrics_and_prints_table(tmp_path):
    r = cli("run", "example", "--set", "repeats=50", "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert rec["config"]["repeats"] == 50 and rec["environment"]["preset"] == "cpu-toy"
    assert len(rec["reproduction"]) == 4
    assert "holds" in r.stdout and "RMS error" in r.stdout


def test_plan_prints_launch_lines():
    r = cli("plan", "example", "--preset", "node-8")
    assert r.returncode == 0, r.stderr
    assert "world_size       8" in r.stdout
    assert "torchrun --standalone --nproc_per_node=8 -m paperbook.cli run example --preset node-8" in r.stdout
    r = cli("plan", "example", "--set", "nnodes=4", "--set", "nproc_per_node=8")
    assert "srun --nodes=4" in r.stdout and "--nnodes=4" in r.stdout and "world_size       32" in r.stdout


def test_the_planned_command_lines_run_with_the_overrides(root, tmp_path):
    # a value with a space and brackets must reach the run whole; the papermill line must carry the overrides
    info = plan_info("example", "cpu-toy", parse_sets(["repeats=7", "sizes=[64, 256]"]))
    assert info["launch"] == "paperbook run example --preset cpu-toy --set repeats=7 --set 'sizes=[64, 256]'"
    launch = shlex.split(info["launch"])
    r = cli(*launch[1:], "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    want = {"repeats": 7, "sizes": [64, 256]}.items()
    assert want <= json.loads((tmp_path / "run/metrics.json").read_text())["config"].items()
    papermill = shlex.split(info["papermill"])
    assert papermill[:4] == ["papermill", "nbs/00b_example.ipynb", "out.ipynb", "-p"]
    out = tmp_path / "pm"
    out.mkdir()
    r = subprocess.run([sys.executable, "-m", "papermill", papermill[1], str(out / "out.ipynb"), *papermill[3:],
                        "--cwd", "nbs", "--no-progress-bar"], cwd=root, capture_output=True, text=True,
                       env={**ENV, "PAPERBOOK_RUN_DIR": str(out)}, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert want <= json.loads((out / "metrics.json").read_text())["config"].items()
    assert "overrides" not in plan_info("example", "cpu-toy")["papermill"]


@pytest.mark.parametrize("args, words", [
    (["run", "nope"], "unknown chapter 'nope'; allowed:"),
    (["run", "example", "--preset", "gpu-2"], "unknown preset 'gpu-2' for chapter 'example'; allowed: cpu-toy"),
    (["run", "example", "--set", "repeat=3"], "unknown override 'repeat'; allowed keys:"),
    (["run", "example", "--set", "repeats=many"], "override 'repeats' expects int, got 'many'"),
    (["run", "example", "--set", "repeats"], "--set expects key=value"),
    (["run", "example", "--set", "num_samples=1000"], "multiple of block_size"),
    (["plan", "example", "--preset", "x"], "unknown preset 'x'"),
    (["batch", "--chapters", "example", "--presets", "gpu-9"], "unknown preset 'gpu-9'"),
    (["batch", "--chapters", "example", "--seeds", "one"], "invalid int value: 'one'"),
    (["batch", "--chapters", "example", "--jobs", "0"], "--jobs must be >= 1"),
    (["batch", "--chapters", "example", "--executor", "slurm"], "sbatch"),
    (["batch", "--chapters", "example", "--executor", "mpi"], "invalid choice: 'mpi'"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments_one_line_exit_2_nothing_written(tmp_path, args, words):
    out = tmp_path / "out"
    r = cli(*args, "--out", out) if args[0] in ("run", "batch") else cli(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert words in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not out.exists()


def test_batch_local_two_seeds(tmp_path):
    out = tmp_path / "runs"
    r = cli("batch", "--chapters", "example", "--presets", "cpu-toy", "--seeds", "0", "1", "--jobs", "2",
            "--set", "repeats=50", "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    for seed in (0, 1):
        d = out / "example" / "cpu-toy" / f"seed{seed}"
        rec = json.loads((d / "metrics.json").read_text())
        assert rec["config"]["seed"] == seed and rec["config"]["repeats"] == 50
        assert (d / "00b_example.ipynb").is_file()
    csv = (out / "results.csv").read_text()
    assert csv.count("example,cpu-toy,") == 8  # 4 claims x 2 seeds
    assert "path" not in csv.splitlines()[0].split(",") and str(tmp_path) not in csv  # no machine's own paths
    md = (out / "results.md").read_text()
    assert md.startswith("| chapter | preset | claim |") and "2/2" in md
    assert "2 of 2 jobs ok" in r.stdout


def test_batch_through_submitit(tmp_path):
    pytest.importorskip("submitit")
    out = tmp_path / "runs"
    r = cli("batch", "--chapters", "example", "--seeds", "3", "--executor", "submitit-local",
            "--set", "repeats=20", "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((out / "example/cpu-toy/seed3/metrics.json").read_text())["config"]["seed"] == 3


def test_papermill_bad_override_fails_before_compute(root, tmp_path):
    pm = pytest.importorskip("papermill")
    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(str(root / "nbs/00b_example.ipynb"), str(tmp_path / "out.ipynb"),
                            parameters={"overrides": '{"repeat": 5}'}, cwd=str(root / "nbs"), progress_bar=False,
                            kernel_name="python3")
    assert "unknown override 'repeat'" in str(e.value)
    nb = json.loads((tmp_path / "out.ipynb").read_text())
    ran = [c for c in nb["cells"] if c["cell_type"] == "code" and c.get("execution_count")]
    # it stops at the cell right after the parameters: no experiment cell ran
    assert ran and all("result = experiment(" not in "".join(c["source"]) for c in ran)


def test_run_refuses_an_out_that_is_a_file_and_prints_on_rank_0_only(tmp_path, capsys, monkeypatch):
    from paperbook.cli import main

    (tmp_path / "f").write_text("x")
    assert main(["run", "example", "--set", "repeats=5", "--out", str(tmp_path / "f")]) == 2
    assert "--out " in capsys.readouterr().err and (tmp_path / "f").read_text() == "x"
    monkeypatch.setenv("RANK", "1")
    assert main(["run", "example", "--set", "repeats=5", "--out", str(tmp_path / "r1")]) == 0
    assert capsys.readouterr().out == ""  # rank 1 prints nothing (rank 0 prints the table)
    monkeypatch.setenv("RANK", "0")
    assert main(["run", "example", "--set", "repeats=5", "--out", str(tmp_path / "r0")]) == 0
    out = capsys.readouterr().out
    assert "holds" in out and f"wrote {tmp_path / 'r0' / 'metrics.json'}" in out and "`" not in out


def test_plan_batch_expands_all_splits_the_cores_and_names_a_missing_notebook(tmp_path, monkeypatch, root):
    import os

    from paperbook.cli import plan_batch
    from paperbook.core import chapters

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    todo = plan_batch(["all"], ["cpu-toy"], [0, 1], out=tmp_path, nbs=root / "nbs", sets={"seed": 5}, jobs=3,
                      timeout=77)
    assert [j["chapter"] for j in todo] == [c for c in chapters() for _ in (0, 1)]
    j = todo[1]
    assert (j["seed"], j["overrides"], j["threads"], j["timeout"]) == (1, {"seed": 1}, 2, 77)  # 8 cores // 3 jobs
    assert j["out"] == str(tmp_path / j["chapter"] / "cpu-toy" / "seed1")
    assert plan_batch(["example"], ["cpu-toy"], [0], out=tmp_path, nbs=root / "nbs", jobs=16)[0]["threads"] == 1
    with pytest.raises(ValueError, match="notebook .*00b_example.ipynb of chapter 'example' not found; pass --nbs"):
        plan_batch(["example"], ["cpu-toy"], [0], out=tmp_path, nbs=tmp_path)


def test_a_failed_job_is_reported_and_the_batch_exits_1(tmp_path, capsys, monkeypatch):
    import paperbook.cli as pcli

    def fake(job):  # the first seed writes its metrics, the second fails
        if job["seed"] == 0:
            return job | {"status": "ok", "error": ""}
        return job | {"status": "failed", "error": "boom"}

    monkeypatch.setattr(pcli, "run_batch", lambda todo, **kw: [fake(j) for j in todo])
    code = pcli.main(["batch", "--chapters", "example", "--seeds", "0", "1", "--out", str(tmp_path / "b")])
    out, err = capsys.readouterr()
    assert code == 1 and "1 of 2 jobs ok" in out and "FAILED example cpu-toy seed1: boom" in err
    (tmp_path / "file").write_text("x")
    assert pcli.main(["batch", "--chapters", "example", "--out", str(tmp_path / "file")]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err


def test_a_notebook_that_writes_no_metrics_or_raises_is_a_failed_job(tmp_path, monkeypatch):
    import papermill

    from paperbook.cli import _execute

    for key in ("PAPERBOOK_RUN_DIR", "PAPERBOOK_PROGRESS", "OMP_NUM_THREADS"):  # _execute sets them: restored after
        monkeypatch.setenv(key, "")
    job = {"notebook": str(tmp_path / "nb.ipynb"), "out": str(tmp_path / "o"), "preset": "cpu-toy",
           "overrides": {}, "threads": 1, "timeout": 10}
    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: None)
    assert _execute(job) == job | {"status": "failed", "error": "no metrics.json written"}

    def boom(*a, **k):
        raise RuntimeError("Traceback ...\nValueError: unknown override 'x'\n")

    monkeypatch.setattr(papermill, "execute_notebook", boom)
    assert _execute(job)["error"] == "ValueError: unknown override 'x'"  # the last line of the error
    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: (tmp_path / "o/metrics.json").write_text("{}"))
    assert _execute(job)["status"] == "ok"


def test_slurm_batches_go_through_submitit_with_the_jobs_partition_and_timeout(tmp_path, monkeypatch):
    # no Slurm here: a stand-in for submitit records what run_batch asks of it
    import types

    from paperbook.cli import run_batch

    asked = {}

    class Done:
        def __init__(self, job):
            self.job = job

        def result(self):
            return self.job | {"status": "ok", "error": ""}

    class Executor:
        def __init__(self, folder, cluster=None):
            asked["made"] = (Path(folder), cluster)

        def update_parameters(self, **kw):
            asked["params"] = kw

        def map_array(self, fn, jobs):
            asked["fn"] = fn.__name__
            return [Done(j) for j in jobs]

    fake = types.SimpleNamespace(AutoExecutor=Executor, LocalExecutor=lambda folder: Executor(folder, "local"))
    monkeypatch.setitem(sys.modules, "submitit", fake)
    todo = [{"chapter": "example", "preset": "cpu-toy", "seed": s, "timeout": 150} for s in (0, 1)]
    done = run_batch(todo, out=tmp_path, jobs=3, executor="slurm", partition="gpu")
    assert [j["seed"] for j in done] == [0, 1] and asked["fn"] == "_execute"
    assert asked["made"] == (tmp_path / "_submitit", "slurm")
    assert asked["params"] == {"timeout_min": 2, "slurm_array_parallelism": 3, "slurm_partition": "gpu"}
    assert not (tmp_path / "results.csv").exists()  # no job wrote metrics: no table
    run_batch(todo, out=tmp_path, jobs=3, executor="slurm")
    assert asked["params"] == {"timeout_min": 2, "slurm_array_parallelism": 3}  # no partition: Slurm's default
    run_batch([j | {"timeout": 30} for j in todo], out=tmp_path, jobs=3, executor="submitit-local")
    assert asked["made"][1] == "local" and asked["params"] == {"timeout_min": 1}  # at least a minute


def test_a_batch_job_runs_its_notebook_with_its_folder_threads_and_parameters(tmp_path, monkeypatch):
    import os

    import papermill

    from paperbook.cli import _execute

    for key in ("PAPERBOOK_RUN_DIR", "PAPERBOOK_PROGRESS", "OMP_NUM_THREADS"):  # _execute sets them: restored after
        monkeypatch.setenv(key, "")
    seen = {}

    def record(nb, out, **kw):
        seen.update(nb=nb, out=out, kw=kw, env={k: os.environ[k] for k in ("PAPERBOOK_RUN_DIR", "PAPERBOOK_PROGRESS",
                                                                           "OMP_NUM_THREADS")})
        (tmp_path / "o/metrics.json").write_text("{}")

    monkeypatch.setattr(papermill, "execute_notebook", record)
    (tmp_path / "nbs").mkdir()
    monkeypatch.chdir(tmp_path)  # a relative --out: the notebook runs in nbs/, so it gets the absolute folder
    job = {"notebook": str(tmp_path / "nbs/ch.ipynb"), "out": "o", "preset": "gpu-1",
           "overrides": {"seed": 4}, "threads": 3, "timeout": 10}
    assert _execute(job)["status"] == "ok"
    assert seen["env"] == {"PAPERBOOK_RUN_DIR": str((tmp_path / "o").resolve()), "PAPERBOOK_PROGRESS": "0",
                           "OMP_NUM_THREADS": "3"}
    assert (seen["nb"], seen["out"]) == (job["notebook"], "o/ch.ipynb")
    assert seen["kw"]["parameters"] == {"preset": "gpu-1", "overrides": {"seed": 4}}
    assert seen["kw"]["cwd"] == str(tmp_path / "nbs") and seen["kw"]["execution_timeout"] == 10


def test_two_processes_are_launched_by_torchrun_and_a_chapter_adds_its_own_plan():
    two = plan_info("example", "cpu-toy", {"nproc_per_node": 2})
    assert two["launch"] == ("torchrun --standalone --nproc_per_node=2 -m paperbook.cli run example --preset cpu-toy "
                             "--set nproc_per_node=2") and "papermill" not in two
    pangu = plan_info("pangu-alpha", "cpu-toy")  # chapter 1 adds its mesh and per-rank memory lines
    assert pangu["mesh"].endswith("= 1") and pangu["rank_0"].startswith("the whole model")


def test_run_prints_the_chapters_report_and_the_run_stamp(tmp_path, capsys, monkeypatch):
    from dataclasses import replace

    import paperbook.cli as pcli

    example = pcli.get_chapter("example")
    monkeypatch.setattr(pcli, "get_chapter", lambda name: replace(example, report=lambda r: "REPORT: per family"))
    monkeypatch.delenv("RANK", raising=False)
    assert pcli.main(["run", "example", "--set", "repeats=5"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "REPORT: per family" in out
    assert out[-1].startswith("paperbook example · preset cpu-toy · device ")  # the stamp, last without --out


def test_the_books_notebooks_are_found_beside_the_package_from_any_folder(root, tmp_path, monkeypatch):
    from paperbook.cli import default_nbs

    monkeypatch.chdir(tmp_path)  # no nbs/ here: the checkout's own
    assert default_nbs() == root / "nbs"
