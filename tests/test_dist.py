"""paperbook.dist under torchrun (gloo on the CPU): results equal the single-process ones."""

import json
import os
import sys

import numpy as np
import pytest

from helpers import ENV, cli, torchrun

pytestmark = pytest.mark.dist
SCRIPT = __file__.replace("test_dist.py", "dist_scripts/ddp_equivalence.py")


def test_ddp_two_processes_equal_one(tmp_path):
    import subprocess

    one = subprocess.run([sys.executable, SCRIPT, tmp_path / "one.json"], capture_output=True, text=True, env=ENV)
    assert one.returncode == 0, one.stderr
    two = torchrun(2, SCRIPT, tmp_path / "two.json")
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert (a["world"], b["world"]) == (1, 2)
    assert len(a["params"]) == len(b["params"]) > 0
    for p, q in zip(a["params"], b["params"]):
        np.testing.assert_allclose(p, q, atol=1e-6)  # fp32, same seed and global batch
    assert b["mean_rank"] == 0.5 and b["sum_ones"] == 2.0
    assert two.stdout.count("done") == 1  # print0 prints on rank 0 only


def test_example_chapter_under_torchrun_equals_single_process(tmp_path):
    single = cli("run", "example", "--preset", "cpu-dist", "--set", "nproc_per_node=1", "--out", tmp_path / "one")
    assert single.returncode == 0, single.stderr
    dist = torchrun(2, "-m", "paperbook.cli", "run", "example", "--preset", "cpu-dist", "--out", tmp_path / "two")
    assert dist.returncode == 0, dist.stderr[-3000:]
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert b["environment"]["world_size"] == 2
    pi = lambda rec: [v["pi_hat"] for v in rec["metrics"]["per_seed"].values()]
    assert len(pi(a)) == 3 and pi(a) == pi(b)  # identical on every seed, not just close
    assert all(r["holds"] for r in b["reproduction"])


FAULTS = """
import resource, torch
from paperbook.dist import reuse_freed_memory

def faults(n=8, numel=16 * 2**20):  # a 64 MiB tensor made and dropped n times, after n to settle
    for i in range(2 * n):
        if i == n:
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.empty(numel).fill_(1.0)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / n

before = faults()
print(reuse_freed_memory(), before, faults())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page-fault counts and glibc's mallopt: Linux")
def test_reuse_freed_memory_stops_the_page_faults_of_a_repeated_large_tensor():
    import platform
    import subprocess

    r = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True, env=ENV)  # a fresh process
    assert r.returncode == 0, r.stderr
    applied, before, after = r.stdout.split()
    assert applied == str(platform.libc_ver()[0] == "glibc")
    if applied == "True":
        assert float(before) >= 16  # 64 MiB in pages of 4 KiB (16,384) or of 2 MiB (32) are faulted in each time
        assert float(after) * 10 <= float(before)


def test_a_chapters_thread_count_never_exceeds_omp_num_threads(monkeypatch):
    # `paperbook batch` and parallel test runners set OMP_NUM_THREADS to share the cores; a chapter that asks for
    # two threads must then get one, or two processes × two threads oversubscribe a two-core machine.
    import torch

    from paperbook.dist import threads

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with threads(2):
        assert torch.get_num_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with threads(2):
        assert torch.get_num_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    with threads(2):
        assert torch.get_num_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "two")
    with pytest.raises(ValueError, match="OMP_NUM_THREADS"):
        with threads(2):
            pass
    assert torch.get_num_threads() == before


def test_batch_shares_blocks_and_generators_by_hand():
    import torch

    from paperbook.dist import DistInfo, block_generator, my_blocks, rank_slice, share_of_mean

    info = lambda r, w: DistInfo(rank=r, world_size=w, local_rank=r, device=torch.device("cpu"), backend="gloo")
    # 10 items over 3 ranks: 0-2, 3-5, 6-9; together every item once
    assert [rank_slice(10, info(r, 3)) for r in range(3)] == [slice(0, 3), slice(3, 6), slice(6, 10)]
    assert rank_slice(10, None) == slice(0, 10)
    # a rank's sum of 6 over a global batch of 3: 2, times the world of 2 that DDP's average divides by
    six = torch.tensor(6.0)
    assert share_of_mean(six, 3, info(0, 2)).item() == 4.0 and share_of_mean(six, 3, None).item() == 2.0
    assert [list(my_blocks(7, info(r, 3))) for r in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]
    draw = lambda seed, block: torch.rand(3, generator=block_generator(seed, block)).tolist()
    assert draw(1, 2) == draw(1, 2) and draw(1, 2) != draw(1, 3) and draw(1, 2) != draw(2, 2)


def test_a_world_of_one_needs_no_process_group(monkeypatch, capsys):
    import torch

    from paperbook.dist import (DistInfo, all_reduce_mean, all_reduce_sum, distributed, init_distributed, print0,
                                wrap_ddp)

    for name in ("WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    info = init_distributed("cpu")
    assert (info.rank, info.world_size, info.local_rank, info.device, info.backend) == (0, 1, 0,
                                                                                        torch.device("cpu"), None)
    assert info.is_main and not DistInfo(1, 2, 1, torch.device("cpu"), "gloo").is_main
    with distributed("cpu") as again:
        assert again == info
    x = {"loss": 2.5, "grad": torch.tensor([1.0, -1.0])}
    assert all_reduce_sum(x) == x and all_reduce_mean(3.0) == 3.0  # nothing to reduce over
    model = torch.nn.Linear(2, 2)
    assert wrap_ddp(model, info) is model  # no DistributedDataParallel around a world of one
    print0("only", "me")
    assert capsys.readouterr().out == "only me\n"
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="environment variable WORLD_SIZE='two' is not an integer"):
        init_distributed("cpu")


def test_thread_ceiling_by_hand(monkeypatch):
    from paperbook.dist import thread_ceiling

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert (thread_ceiling(4), thread_ceiling(0)) == (4, 1)  # at least one thread
    monkeypatch.setenv("OMP_NUM_THREADS", "0")  # not a positive ceiling: ignored
    assert thread_ceiling(4) == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert (thread_ceiling(4), thread_ceiling(2)) == (3, 2)


def test_under_torchrun_each_local_process_takes_its_share_of_the_cores(monkeypatch):
    # WORLD_SIZE 4 with 2 processes on this node and 8 cores: 4 threads each (at most OMP_NUM_THREADS when set)
    import os
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from paperbook.dist import DistInfo, init_distributed

    calls = []
    monkeypatch.setattr(dist, "is_initialized", lambda: bool(calls))
    monkeypatch.setattr(dist, "init_process_group", lambda backend, timeout: calls.append((backend, timeout)))
    monkeypatch.setattr(dist, "get_rank", lambda: 3)
    monkeypatch.setattr(dist, "get_world_size", lambda: 4)
    monkeypatch.setattr(dist, "get_backend", lambda: "gloo")
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setenv("WORLD_SIZE", "4"), monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2"), monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        info = init_distributed("cpu", timeout_s=7)
        assert info == DistInfo(3, 4, 1, torch.device("cpu"), "gloo") and calls == [("gloo", timedelta(seconds=7))]
        assert torch.get_num_threads() == 4
        calls.clear()
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        init_distributed("cpu")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_process_group_of_one_is_joined_and_reduces_in_double_precision(tmp_path, monkeypatch):
    import torch
    import torch.distributed as dist

    from paperbook.dist import all_reduce_mean, all_reduce_sum, init_distributed

    for name in ("WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert init_distributed("cpu").backend == "gloo"  # a group someone else started is used, not ignored
        assert all_reduce_sum(1.0 + 1e-9) == 1.0 + 1e-9  # a Python number goes over the wire as float64
        assert all_reduce_mean({"x": 3.0, "t": torch.tensor([2.0])}) == {"x": 3.0, "t": torch.tensor([2.0])}
    finally:
        dist.destroy_process_group()


def test_threads_leave_other_devices_alone_and_restore_the_count(monkeypatch):
    import torch

    from paperbook.dist import threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        with threads(1, "cuda"):  # the CPU's thread count is not the GPU's business
            assert torch.get_num_threads() == 3
        with threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_an_empty_environment_variable_is_not_a_number(monkeypatch):
    from paperbook.dist import init_distributed

    monkeypatch.setenv("WORLD_SIZE", "")
    with pytest.raises(ValueError, match="WORLD_SIZE='' is not an integer"):
        init_distributed("cpu")


@pytest.mark.parametrize("device, forked", [("cpu", True), ("meta", False)])  # meta: as a parent that holds a GPU
def test_process_map_runs_the_jobs_in_workers_and_returns_them_in_order(monkeypatch, device, forked):
    import helpers
    from paperbook.dist import process_map

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(helpers, "MARK", True, raising=False)
    jobs = [(k, 0.6 if k == 0 else 0.1) for k in range(6)]  # the first job finishes last
    out = process_map(helpers.pid_after, jobs, workers=2, device=device)
    assert [x for x, *_ in out] == list(range(6))
    pids = {pid for _, pid, _, _ in out}
    assert len(pids) == 2 and os.getpid() not in pids
    assert {(mark, n) for *_, mark, n in out} == {(forked, 1)}  # forked or spawned; one thread each
    one = process_map(helpers.pid_after, [(0, 0.0)], workers=2, threads_per_worker=2)  # threads: a CPU setting
    assert one == [(0, os.getpid(), True, 2)]  # a single job runs here, on the threads asked for
    monkeypatch.setenv("PAPERBOOK_PROGRESS", "1")
    bars = process_map(helpers.env, [("PAPERBOOK_PROGRESS",)] * 2, workers=2, device=device)
    assert bars == ["0", "0"] and os.environ["PAPERBOOK_PROGRESS"] == "1"  # workers draw no bars; ours still does


def test_process_map_keeps_within_omp_num_threads(monkeypatch):
    # under `paperbook batch` or a parallel test run the cores are taken: the jobs run here, one after another
    import helpers
    from paperbook.dist import process_map

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(helpers, "MARK", True, raising=False)
    assert process_map(helpers.pid_after, [(1, 0.0), (2, 0.0)], workers=2) == [(k, os.getpid(), True, 1)
                                                                              for k in (1, 2)]
    assert process_map(pow, [(5,), (6,)], shared=(2,), workers=2) == [32, 64]  # here: shared arguments first
    monkeypatch.setenv("OMP_NUM_THREADS", "4")  # two workers of two threads fit; three would not
    out = process_map(helpers.pid_after, [(k, 0.3) for k in range(4)], workers=3, threads_per_worker=2)
    assert len({pid for _, pid, _, _ in out}) == 2 and {n for *_, n in out} == {2}
    assert process_map(pow, [(5,), (6,)], shared=(2,), workers=2) == [32, 64]  # in two workers: the same
