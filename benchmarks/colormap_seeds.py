"""Chapter 4 at `cpu-toy` over several seeds: how stable are the claims, and where does the time go?

    python benchmarks/colormap_seeds.py [--seeds 0 1 2] [--set key=value ...]

Each seed draws its own held-out colormap families, corpus and initialisation. Prints the order-free ΔE00
of every method on unseen colormaps, the accuracy of the discrete/continuous classifier and of always answering
the majority kind, the claims paired over the seeds and the time of each stage. Asserts nothing (timings vary
with the machine).
"""

import argparse
import os
import tempfile
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    os.environ.setdefault("PAPERBOOK_PROGRESS", "0")  # the table is the output

    from paperbook.colormap import chapter
    from paperbook.core import resolve, seed_everything

    overrides = dict(kv.split("=", 1) for kv in args.set)
    rows, runs = {}, []
    with tempfile.TemporaryDirectory() as cache:  # a cold cache: rendering is timed too
        for seed in args.seeds:
            cfg = resolve("colormap", "cpu-toy", {**overrides, "seed": seed, "cache": cache})
            seed_everything(seed)
            t = {"start": time.perf_counter()}
            data = chapter.build_corpora(cfg)
            t["render"] = time.perf_counter()
            models = chapter.train_models(cfg, data["train"])
            t["train"] = time.perf_counter()
            clf = chapter.fit_classifier(data["train"])
            results = chapter.evaluate(cfg, data, models, clf)
            t["evaluate"] = time.perf_counter()
            unseen = results["unseen"]
            rows[seed] = {m: float(np.mean(v["order_free"])) for m, v in unseen["methods"].items()}
            rows[seed]["kind accuracy (%)"] = 100 * unseen["kind_accuracy"]
            rows[seed]["majority kind accuracy (%)"] = 100 * unseen["majority_kind_accuracy"]
            runs.append({"seed": seed, "results": results})
            print(f"seed {seed}: render {t['render'] - t['start']:.1f} s, train (both nets) "
                  f"{t['train'] - t['render']:.1f} s, evaluate {t['evaluate'] - t['train']:.1f} s", flush=True)
    methods = list(rows[args.seeds[0]])
    print("\nunseen colormaps, order-free mean ΔE00 (lower is better)")
    print(f"{'method':40s}" + "".join(f"{'seed ' + str(s):>10s}" for s in args.seeds) + f"{'mean':>10s}")
    for m in methods:
        vals = [rows[s][m] for s in args.seeds]
        print(f"{m:40s}" + "".join(f"{v:10.2f}" for v in vals) + f"{np.mean(vals):10.2f}")
    print("\nclaims, paired over these seeds (k/n: seeds in the claimed direction)")
    for row in chapter.make_claims(runs, cfg):
        print(f"  {row['k_of_n']}  {'holds' if row['holds'] else 'fails'}  {row['claim']}")


if __name__ == "__main__":
    main()
