"""Time the IWLS 2020 chapter's `full` preset: every available benchmark function with the portfolio.

    python benchmarks/iwls_full.py [--jobs 2] [--functions ex00 ex01 ...] [--source auto|real|generated]

Prints the wall time, seconds per function (wall and per process) and the reproduction table.
Asserts nothing: timings depend on the machine.
"""

import argparse
import os
import time

os.environ.setdefault("PAPERBOOK_PROGRESS", "1")

from paperbook.core import resolve, text_table  # noqa: E402
from paperbook.iwls.chapter import family_table, make_claims, resolve_functions, run_all  # noqa: E402

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--functions", nargs="*", default=None)
    p.add_argument("--source", choices=("auto", "real", "generated"), default="auto",
                   help="the contest's functions (real) or generated circuits; auto: real where the data are found")
    a = p.parse_args()
    overrides = {"jobs": a.jobs, "source": a.source} | ({"functions": a.functions} if a.functions else {})
    cfg = resolve("iwls2020", "full", overrides)
    names, source = resolve_functions(cfg)
    t = time.perf_counter()
    df = run_all(cfg)
    wall = time.perf_counter() - t
    port = df[df.learner == "portfolio"]
    print(f"{len(names)} {source} functions, {a.jobs} processes: {wall:.0f} s wall, "
          f"{wall / len(names):.1f} s per function (wall), {port.seconds.mean():.1f} s per function per process")
    print(family_table(df).to_string())
    print(text_table(make_claims(df, cfg)))
