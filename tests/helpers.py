"""Small helpers shared by the tests."""

import os
import subprocess
import sys

ENV = {**os.environ, "PAPERBOOK_PROGRESS": "0", "OMP_NUM_THREADS": "1"}


def cli(*args, cwd=None, timeout=600, env_extra=None) -> subprocess.CompletedProcess:
    "Run `python -m paperbook.cli ARGS` (with `env_extra` added to the environment) and capture its output."
    return subprocess.run([sys.executable, "-m", "paperbook.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env={**ENV, **(env_extra or {})}, timeout=timeout)


def torchrun(nproc: int, *args, timeout=300) -> subprocess.CompletedProcess:
    "Run `torchrun --standalone --nproc_per_node=N ARGS` on the CPU (gloo)."
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)


def one_and_two_processes(script, tmp_path) -> tuple[dict, dict]:
    "Run a dist script (which writes JSON to its argv[1]) on 1 and on 2 processes; return both records."
    import json

    records = []
    for n in (1, 2):
        out = tmp_path / f"world{n}.json"
        r = torchrun(n, script, out)
        assert r.returncode == 0, r.stderr[-2000:]
        records.append(json.loads(out.read_text()))
    assert records[1]["world"] == 2
    return records[0], records[1]


def pid_after(x, wait: float) -> tuple:
    """For `process_map`'s tests: `x` back after `wait` seconds, with this process's id, whether it holds the mark a
    test sets on this module at run time (a forked worker does, a spawned one does not) and its torch threads."""
    import time

    import torch

    time.sleep(wait)
    return x, os.getpid(), hasattr(sys.modules[__name__], "MARK"), torch.get_num_threads()


def env(name: str) -> str | None:
    "For `process_map`'s tests: an environment variable as this process sees it."
    return os.environ.get(name)
