"""Execute the book's notebooks in parallel into the jupyter-cache that `jupyter-book build` then reads.

Jupyter Book 1.x executes a book's notebooks one after another. `make book` runs this script first:
it executes every notebook it is given, `--jobs` at a time (chapter pages first, the longest),
exactly as myst-nb's cache mode would (the book's source-read step that drops nbdev's `#|` lines,
jupyter-cache's `single_nb_execution`, the timeout and allow_errors of `_config.yml`, each notebook
in its own folder), and stores the executed notebooks in the jupyter-cache. The build that follows
(`execute_notebooks: cache`) finds every notebook there and only renders. A notebook that fails
prints its error and the script exits 1 before the build starts.

    python book/execute.py --jobs 2 --cache _build/.jupyter_cache nbs/*.ipynb

The cache must start empty (`make book` removes it), so that every page comes from this run.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import nbformat
import yaml
from jupyter_cache import get_cache
from jupyter_cache.base import CacheBundleIn
from jupyter_cache.executors.utils import single_nb_execution

HERE = Path(__file__).resolve().parent
CONFIG = HERE.parent / "_config.yml"
sys.path.insert(0, str(HERE / "_ext"))
from paperbook_book import strip_directives  # noqa: E402  (the book's own source-read step)

# Two kernels started together can pick the same TCP port; the loser dies before it replies
# (jupyter/jupyter_client#154). Such a start is tried again; a kernel that dies later is an error.
START_RACE = "before replying to kernel_info"


def settings(config: Path = CONFIG) -> tuple[int, bool]:
    """The book's `execute:` settings this script honours: (timeout, allow_errors).
    Refuses a config whose build would not read the cache."""
    execute = (yaml.safe_load(config.read_text()) or {}).get("execute", {})
    mode = execute.get("execute_notebooks")
    if mode != "cache":
        sys.exit(f"{config}: execute.execute_notebooks is {mode!r}; book/execute.py needs 'cache' "
                 "(with 'force' or 'auto' the build would execute every notebook again)")
    return int(execute.get("timeout", 30)), bool(execute.get("allow_errors", False))


def order(paths: list[str]) -> list[str]:
    """The papers' chapter pages (`01_name` ... `10_name`: the longest runs) first, then the rest, each in
    name order, so that the short notebooks fill in at the end."""
    return sorted(paths, key=lambda p: (re.match(r"(?!00)\d\d_", Path(p).name) is None, Path(p).name))


def run_one(job: tuple[str, int, bool], attempts: int = 3):
    """Execute one notebook in its folder; returns (path, executed notebook, seconds, traceback or None)."""
    path, timeout, allow_errors = job
    for attempt in range(1, attempts + 1):
        try:
            # as the build reads it: without nbdev's `#|` lines (else its cache lookup would miss)
            nb = nbformat.reads(strip_directives(Path(path).read_text()), as_version=4)
            res = single_nb_execution(nb, cwd=str(Path(path).resolve().parent), timeout=timeout,
                                      allow_errors=allow_errors, meta_override=True)
        except Exception as e:  # a cell's error comes back in res.exc_string; this is the kernel or the file
            if attempt == attempts or START_RACE not in str(e):
                return path, None, 0.0, f"{type(e).__name__}: {e}"
            time.sleep(attempt)
            continue
        return path, res.nb, res.time, res.exc_string


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="+")
    ap.add_argument("--jobs", type=int, default=2, help="notebooks executed at once (default 2)")
    ap.add_argument("--config", type=Path, default=CONFIG, help="the book's _config.yml (default: this book's)")
    ap.add_argument("--cache", default="_build/.jupyter_cache",
                    help="jupyter-cache folder (default: the one jupyter-book build reads, _build/.jupyter_cache)")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error(f"--jobs must be at least 1, got {args.jobs}")
    missing = [p for p in args.notebooks if not Path(p).is_file()]
    if missing:
        ap.error(f"no such notebook: {', '.join(missing)}")
    timeout, allow_errors = settings(args.config)
    cache = get_cache(args.cache)
    jobs = [(p, timeout, allow_errors) for p in order(args.notebooks)]
    failed, start = [], time.perf_counter()
    # threads suffice: each notebook runs in its own kernel process; this process only waits and writes the cache
    with ThreadPoolExecutor(min(args.jobs, len(jobs))) as pool:
        futures = [pool.submit(run_one, job) for job in jobs]
        for i, done in enumerate(as_completed(futures), 1):
            path, nb, secs, err = done.result()
            if err is None:
                cache.cache_notebook_bundle(CacheBundleIn(nb, str(Path(path).resolve()),
                                                          data={"execution_seconds": secs}),
                                            check_validity=False, overwrite=True)
            else:
                failed.append(path)
                print(err, file=sys.stderr)
            print(f"[{i}/{len(jobs)}] {path}: {'FAILED' if err else 'executed'} in {secs:.1f} s", flush=True)
    wall = time.perf_counter() - start
    print(f"executed {len(jobs) - len(failed)}/{len(jobs)} notebooks in {wall:.0f} s with {args.jobs} jobs")
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
