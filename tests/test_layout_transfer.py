"""Chapter 10 (layout transfer): GraphWave, retrieval, WL kernel, correspondence, transfer, blending, metrics."""

import json

import networkx as nx
import numpy as np
import pytest

from paperbook.core import resolve
from paperbook.layout_transfer.embed import (cheb_coefficients, default_scales, degree_embedding, graphwave,
                                             heat_cheb_columns, heat_dense, normalized_laplacian)
from paperbook.layout_transfer.retrieve import (Match, greedy_mapping, plant_motifs, precision_recall,
                                                read_matrix_market, retrieve, wl_kernel)
from paperbook.layout_transfer.transfer import (apply_edit, blend, match_nodes, mean_edge_length, procrustes_residual,
                                                readability, similarity_fit, transfer_edit)

from helpers import cli


def test_heat_kernel_by_hand_and_chebyshev_agrees():
    G = nx.path_graph(2)  # L = [[1, -1], [-1, 1]]: eigenvalues 0 and 2
    psi = heat_dense(normalized_laplacian(G), [0.5])[0]
    e = np.exp(-1.0)  # exp(−s·2)
    assert np.allclose(psi, [[(1 + e) / 2, (1 - e) / 2], [(1 - e) / 2, (1 + e) / 2]])
    H = nx.les_miserables_graph()
    L = normalized_laplacian(H)
    cols = np.arange(0, L.shape[0], 7)
    assert np.allclose(heat_cheb_columns(L, 3.0, cols, order=40), heat_dense(L, [3.0])[0][:, cols], atol=1e-8)
    x = np.linspace(-1, 1, 7)  # the coefficients reproduce the function at other points too
    c = cheb_coefficients(1.5, 30)
    assert np.allclose(np.polynomial.chebyshev.chebval(x, c), np.exp(-1.5 * (x + 1)), atol=1e-10)


def test_graphwave_structural_equivalence():
    G = nx.barbell_graph(5, 3)  # two 5-cliques joined by a path of 3
    emb = graphwave(G, method="dense")
    cheb = graphwave(G, method="cheb", order=40)
    assert np.allclose(emb, cheb, atol=1e-6)
    assert np.linalg.norm(emb[0] - emb[12]) < 1e-8  # mirror images
    assert np.linalg.norm(emb[0] - emb[6]) > 0.5  # a clique node and a path node
    with pytest.raises(ValueError, match="'auto', 'dense' or 'cheb'"):
        graphwave(G, method="exact")


def test_graphwave_and_its_scales_by_hand():
    # the path 0 - 1 - 2: normalised Laplacian eigenvalues 0, 1, 2; the scales run from −ln 0.95 / √(1·2) to
    # −ln 0.85 / √2 (the smallest and largest non-zero eigenvalue's geometric mean)
    L = normalized_laplacian(nx.path_graph(3))
    assert np.allclose(default_scales(L, 2), [-np.log(0.95) / np.sqrt(2), -np.log(0.85) / np.sqrt(2)])
    # two nodes: Ψ = [[p, q], [q, p]] with p = (1 + e^{−2s}) / 2, q = (1 − e^{−2s}) / 2; φ_a(t) = mean_m e^{i t Ψ_ma}
    s, t = 0.5, 3.0
    p, q = (1 + np.exp(-2 * s)) / 2, (1 - np.exp(-2 * s)) / 2
    emb = graphwave(nx.path_graph(2), scales=[s], t=[t], method="dense")
    want = [(np.cos(t * p) + np.cos(t * q)) / 2, (np.sin(t * p) + np.sin(t * q)) / 2]
    assert np.allclose(emb, [want, want])
    # with `sample`, φ averages over that many seeded random rows
    G = nx.barbell_graph(5, 3)
    sampled = [graphwave(G, sample=4, seed=k) for k in (0, 1)]
    assert not np.allclose(*sampled) and np.allclose(graphwave(G, sample=99), graphwave(G))


def test_degree_embedding_by_hand():
    # a hub 0 with leaves 1..8; 2 also joined to 1, 3 and 4; 9 hangs off 8. Degrees: 0: 8, 2: 4, 1, 3, 4, 8: 2
    G = nx.Graph([(0, k) for k in range(1, 9)] + [(1, 2), (2, 3), (2, 4), (8, 9)])
    emb = degree_embedding(G, bins=2)  # bins of degree [1, 3) and [3, 9]: log-spaced up to 8 + 1
    # node 1: own degree 2; 1-hop {0, 2} (degrees 8, 4); 2-hop {3, 4, 5, 6, 7, 8} (2, 2, 1, 1, 1, 2)
    assert np.allclose(emb[list(G).index(1)], [np.log1p(2), 0, 2, 6, 0])


def test_wl_kernel_by_hand():
    path, star = nx.path_graph(3), nx.star_graph(2)  # both a–b–c shapes: isomorphic
    labels = {0: "x", 1: "y", 2: "x"}
    assert wl_kernel(path, labels, path, labels) == pytest.approx(1.0)
    # star 0–1, 0–2 labelled centre y: the same labelled graph as the path with its centre y
    assert wl_kernel(path, labels, star, {0: "y", 1: "x", 2: "x"}) == pytest.approx(1.0)
    # all labels x vs the path: h=0 features {x:3} vs {x:2, y:1}; h=1 disjoint → (3·2)/sqrt((9+5)(5+3))
    other = {v: "x" for v in path}
    f_self = 9 + (4 + 1)  # {x:3}² + h=1 {(x,(x,)):2, (x,(x,x)):1}
    f_lab = 5 + 5  # {x:2, y:1} + h=1 {(x,(y,)):2, (y,(x,x)):1}
    assert wl_kernel(path, other, path, labels) == pytest.approx(6 / np.sqrt(f_self * f_lab))


def test_greedy_mapping_and_scores():
    sim = np.array([[0.9, 0.8], [0.95, 0.1], [0.2, 0.3]])
    assert greedy_mapping(sim, ["a", "b", "c"], ["X", "Y"]) == {"b": "X", "a": "Y"}
    found = [Match([1, 2, 3], {}, 1.0), Match([7, 8], {}, 0.5)]
    assert precision_recall(found, [[1, 2, 3, 4], [10, 11]]) == (0.5, 0.5)
    assert precision_recall([], [[1]]) == (0.0, 0.0)


def test_retrieval_finds_planted_copies_better_than_chance():
    G, inst = plant_motifs(backbone=80, copies=3, kinds=("wheel",), seed=3)
    found = retrieve(G, graphwave(G), inst[0][1], k=200, eps=0.95, size=(5, 19))
    p, r = precision_recall(found, [inst[1][1], inst[2][1]])
    assert p >= 0.5 and r == 1.0
    with pytest.raises(ValueError, match="connected"):
        retrieve(G, graphwave(G), [inst[0][1][1], inst[0][1][5]])
    with pytest.raises(ValueError, match="not in it: \\[9999\\]"):
        retrieve(G, graphwave(G), [0, 9999])
    with pytest.raises(ValueError, match="unknown motif"):
        plant_motifs(kinds=("clique",))


def test_similarity_fit_recovers_a_transform():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 2))
    R = np.array([[0.0, -1.0], [1.0, 0.0]])
    s, Rf, t = similarity_fit(x, 3 * x @ R.T + [1, 2])
    assert s == pytest.approx(3) and np.allclose(Rf, R) and np.allclose(t, [1, 2])
    assert procrustes_residual(x, x[::-1]) > 0.1  # a permutation is not a similarity


def test_isomorphic_copy_takes_the_exemplars_edited_shape_exactly():
    G = nx.disjoint_union(nx.wheel_graph(7), nx.wheel_graph(7))
    rng = np.random.default_rng(2)
    pos = {v: rng.normal(size=2) for v in G}
    ex, tg = list(range(7)), list(range(7, 14))
    unit = mean_edge_length(G, pos)
    after = apply_edit("radial", G, pos, ex, unit)
    sim = np.ones((7, 7))  # no help from embeddings: the isomorphism decides
    m = match_nodes(G, sim, ex, tg)
    assert all(G.has_edge(m[a], m[b]) for a, b in G.subgraph(tg).edges)
    moved = transfer_edit(G, pos, {v: pos[v] for v in ex}, after, tg, m, unit=unit)
    assert procrustes_residual(np.array([after[m[v]] for v in tg]), np.array([moved[v] for v in tg])) < 1e-9
    assert readability(G, moved, tg)["crosslessness"] == 1.0


def test_non_isomorphic_target_gets_an_edge_preserving_match():
    G = nx.disjoint_union(nx.path_graph(6), nx.path_graph(7))  # the target has one node more
    ex, tg = list(range(6)), list(range(6, 13))
    rng = np.random.default_rng(0)
    sim = rng.random((7, 6))  # uninformative similarities
    m = match_nodes(G, sim, ex, tg)
    kept = sum(1 for a, b in G.subgraph(tg).edges if a in m and b in m and G.has_edge(m[a], m[b]))
    assert kept >= 4  # of the exemplar's 5 edges; random assignments keep about 1


def test_readability_by_hand():
    G = nx.Graph([(0, 1), (2, 3)])
    crossing = {0: np.array([0, 0]), 1: np.array([1, 1]), 2: np.array([0, 1]), 3: np.array([1, 0])}
    r = readability(G, crossing, [0, 1, 2, 3])
    assert r["crosslessness"] == 0.0 and r["edge uniformity"] == pytest.approx(1.0)
    star = nx.star_graph(4)
    even = {0: np.zeros(2), **{i: np.array([np.cos(i * np.pi / 2), np.sin(i * np.pi / 2)]) for i in range(1, 5)}}
    assert readability(star, even, list(star))["minimum angle"] == pytest.approx(1.0)
    # three leaves at 0°, 90° and 180°, at distances 1, 1, 2: the centre's smallest gap is 90° against the ideal 120°
    # (1 - 30/120 = 0.75); the lengths' std / mean is sqrt(2/9) / (4/3), so the uniformity is 1 - sqrt(2)/4
    tee = {0: np.zeros(2), 1: np.array([1.0, 0]), 2: np.array([0, 1.0]), 3: np.array([-2.0, 0])}
    r = readability(nx.star_graph(3), tee, [0, 1, 2, 3])
    assert r["minimum angle"] == pytest.approx(0.75) and r["edge uniformity"] == pytest.approx(1 - np.sqrt(2) / 4)


def test_blending_moves_only_the_neighbourhood():
    G = nx.path_graph(12)
    pos = {v: np.array([float(v), 0.0]) for v in G}
    moved = {**pos, 0: np.array([-3.0, 0.0])}
    out = blend(G, moved, {0}, hops=2, unit=1.0)
    assert np.allclose(out[0], [-3, 0]) and all(np.allclose(out[v], pos[v]) for v in range(3, 12))
    assert out[1][0] < 1.0  # node 1 followed node 0


def test_edits_and_errors():
    W = nx.wheel_graph(9)
    pos = {v: np.random.default_rng(v).normal(size=2) for v in W}
    radial = apply_edit("radial", W, pos, list(W), 1.0)
    r = [np.linalg.norm(radial[v] - radial[0]) for v in range(1, 9)]
    assert np.allclose(r, r[0]) and readability(W, radial, list(W))["crosslessness"] == 1.0
    with pytest.raises(ValueError, match="unknown edit 'spiral'"):
        apply_edit("spiral", W, pos, list(W), 1.0)


def test_matrix_market_reader(tmp_path):
    p = tmp_path / "g.mtx"
    p.write_text("%%MatrixMarket matrix coordinate real symmetric\n3 3 3\n1 1 4.0\n2 1 1.0\n3 2 1.0\n")
    G = read_matrix_market(p)
    assert sorted(G.edges) == [(0, 1), (1, 2)]
    (tmp_path / "bad.mtx").write_text("not a matrix\n")
    with pytest.raises(ValueError, match="not a readable Matrix Market file"):
        read_matrix_market(tmp_path / "bad.mtx")


@pytest.mark.parametrize("overrides, words", [
    ({"graph.kinds": ["clique"]}, "unknown motif"),
    ({"edit.kind": "spiral"}, "unknown edit 'spiral'"),
    ({"retrieval.eps": 1.5}, r"retrieval.eps must lie in \(0, 1\], got 1.5"),
    ({"retrieval.size_min": 3}, "size_min must be below retrieval.size_max; got 3"),
    ({"graph.copies": 1}, "graph.copies must be >= 2, got 1"),
    ({"graph.backbone": 9}, "graph.backbone must be >= 10, got 9"),
    ({"seeds": 1}, "seeds must be >= 2"),
])
def test_config_errors(overrides, words):
    with pytest.raises(ValueError, match=words):
        resolve("layout-transfer", "cpu-toy", overrides)


def test_the_chapter_runs_small(tmp_path):
    from paperbook.layout_transfer.chapter import CHAPTER

    text = lambda v: json.dumps(list(v)) if isinstance(v, tuple) else v
    sets = [a for k, v in CHAPTER.smoke.items() for a in ("--set", f"{k}={text(v)}")]
    r = cli("run", "layout-transfer", *sets, "--out", tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads((tmp_path / "metrics.json").read_text())
    assert len(rec["reproduction"]) == 6 and set(rec["metrics"]["0"]["retrieval"]) == {"GraphWave", "degree histogram"}
