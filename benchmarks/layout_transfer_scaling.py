"""Time each stage of chapter 10's pipeline against graph size: GraphWave (exact eigendecomposition
below 2,000 nodes, Chebyshev polynomials on a sample of 2,000 columns above), retrieval (with a nearest-neighbour index
above 2,000 nodes), correspondence and transfer, blending. Prints a table; asserts nothing.

    python benchmarks/layout_transfer_scaling.py [--sizes 500 2000 10000]
"""

import argparse
import time

import networkx as nx
import numpy as np

from paperbook.layout_transfer.embed import graphwave
from paperbook.layout_transfer.retrieve import cosine, plant_motifs, retrieve
from paperbook.layout_transfer.transfer import apply_edit, blend, match_nodes, mean_edge_length, transfer_edit


def main(sizes):
    print(f"{'nodes':>7} {'graphwave':>10} {'layout':>8} {'retrieve':>9} {'transfer':>9} {'blend':>7} found")
    for n in sizes:
        G, inst = plant_motifs(backbone=n, copies=max(3, n // 500), kinds=("wheel",), seed=0)
        t = [time.perf_counter()]
        emb = graphwave(G, sample=2000 if G.number_of_nodes() > 2000 else None)
        t.append(time.perf_counter())
        pos = {v: np.asarray(p) for v, p in nx.spring_layout(G, seed=0, iterations=30).items()}
        t.append(time.perf_counter())
        index = None
        if G.number_of_nodes() > 2000:
            from sklearn.neighbors import NearestNeighbors

            index = NearestNeighbors().fit(cosine(emb))
        ex = inst[0][1]
        found = retrieve(G, emb, ex, k=200, eps=0.95, size=(5, 19), index=index)
        t.append(time.perf_counter())
        unit = mean_edge_length(G, pos)
        after = apply_edit("radial", G, pos, ex, unit)
        E = cosine(emb)
        new = dict(pos)
        for m in found[:10]:
            new.update(transfer_edit(G, pos, {v: pos[v] for v in ex}, after, m.nodes,
                                     match_nodes(G, E[m.nodes] @ E[ex].T, ex, m.nodes), unit=unit))
        t.append(time.perf_counter())
        blend(G, new, set(ex).union(*[m.nodes for m in found[:10]]), unit=unit)
        t.append(time.perf_counter())
        d = np.diff(t)
        times = " ".join(f"{x:>{w}.2f}s" for x, w in zip(d, (9, 7, 8, 8, 6)))
        print(f"{G.number_of_nodes():>7} {times} {len(found)}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[300, 1000, 3000])
    main(ap.parse_args().sizes)
