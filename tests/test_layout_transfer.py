"""Chapter 10 (layout transfer): GraphWave, retrieval, WL kernel, correspondence, transfer, blending, metrics."""

import json
from itertools import combinations

import networkx as nx
import numpy as np
import pytest

from paperbook.core import resolve
from paperbook.layout_transfer.embed import (cheb_coefficients, default_scales, degree_embedding, graphwave,
                                             heat_cheb_columns, heat_dense, normalized_laplacian)
from paperbook.layout_transfer.retrieve import (MOTIFS, Match, cosine, greedy_mapping, plant_motifs, precision_recall,
                                                read_matrix_market, retrieve, wl_kernel)
from paperbook.layout_transfer.transfer import (apply_edit, blend, edge_agreement, improve_by_swaps, match_nodes,
                                                mean_edge_length, procrustes_residual, readability, similarity_fit,
                                                stress_majorize, transfer_edit)

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
    assert np.abs(graphwave(G, method="cheb", order=2) - emb).max() > 0.05  # the order reaches the expansion
    assert np.linalg.norm(emb[0] - emb[12]) < 1e-8  # mirror images
    assert np.linalg.norm(emb[0] - emb[6]) > 0.5  # a clique node and a path node
    with pytest.raises(ValueError, match="'auto', 'dense' or 'cheb'"):
        graphwave(G, method="exact")
    with pytest.raises(ValueError, match="at least two nodes, got 1"):
        graphwave(nx.path_graph(1))


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
    # neighbours' labels are a multiset: the order in which edges were added must not matter
    a, b = nx.Graph([(0, 1), (0, 2)]), nx.Graph([(0, 2), (0, 1)])
    star_labels = {0: "c", 1: "a", 2: "b"}
    assert wl_kernel(a, star_labels, b, star_labels) == pytest.approx(1.0)


def test_cosine_standardises_columns_then_rows():
    # columns as z-scores (mean 2, sd sqrt(2/3); mean 200, sd 81.6): (-1.22, -1.22), (0, 1.22), (1.22, 0); the
    # constant column is dropped; then each row has length 1
    emb = np.array([[1.0, 100, 5], [2, 300, 5], [3, 200, 5]])
    r = np.sqrt(0.5)
    assert np.allclose(cosine(emb), [[-r, -r], [0, 1], [1, 0]])
    assert np.allclose(cosine(emb, standardize=False)[0], np.array([1, 100, 5]) / np.sqrt(1 + 100 ** 2 + 25))


def test_planted_copies_hang_on_the_backbone_by_one_edge():
    G, inst = plant_motifs(backbone=30, copies=2, kinds=("wheel", "ladder"), m=2, seed=1)
    motif_edges = 2 * (MOTIFS["wheel"]().number_of_edges() + MOTIFS["ladder"]().number_of_edges())
    assert G.number_of_edges() == (30 - 2) * 2 + motif_edges + 4  # BA: (n - m)·m edges; one link per copy
    assert nx.is_connected(G) and [k for k, _ in inst] == ["wheel", "wheel", "ladder", "ladder"]


def test_greedy_mapping_and_scores():
    sim = np.array([[0.9, 0.8], [0.95, 0.1], [0.2, 0.3]])
    assert greedy_mapping(sim, ["a", "b", "c"], ["X", "Y"]) == {"b": "X", "a": "Y"}
    found = [Match([1, 2, 3], {}, 1.0), Match([7, 8], {}, 0.5)]
    assert precision_recall(found, [[1, 2, 3, 4], [10, 11]]) == (0.5, 0.5)
    assert precision_recall([], [[1]]) == (0.0, 0.0)
    assert precision_recall([Match([1, 2], {}, 1.0)], [[1, 2, 3, 4]]) == (1.0, 1.0)  # Jaccard 2/4 = 0.5 is a hit
    assert precision_recall([Match([1], {}, 1.0)], []) == (0.0, 1.0)  # nothing to find: recall 1


def test_retrieval_finds_planted_copies_better_than_chance():
    G, inst = plant_motifs(backbone=80, copies=3, kinds=("wheel",), seed=3)
    found = retrieve(G, graphwave(G), inst[0][1], k=200, eps=0.95, size=(5, 19))
    p, r = precision_recall(found, [inst[1][1], inst[2][1]])
    assert p >= 0.5 and r == 1.0
    with pytest.raises(ValueError, match="connected"):
        retrieve(G, graphwave(G), [inst[0][1][1], inst[0][1][5]])
    with pytest.raises(ValueError, match="non-empty set of nodes"):
        retrieve(G, graphwave(G), [])
    with pytest.raises(ValueError, match="not in it: \\[9999\\]"):
        retrieve(G, graphwave(G), [0, 9999])
    with pytest.raises(ValueError, match="unknown motif"):
        plant_motifs(kinds=("clique",))


def test_retrieval_candidates_sizes_order_and_the_index_path():
    from sklearn.neighbors import NearestNeighbors

    G, inst = plant_motifs(backbone=80, copies=3, kinds=("wheel", "tree"), seed=0)
    emb, ex = graphwave(G), inst[0][1]
    found = retrieve(G, emb, ex, eps=0.9, size=(3, 40))
    assert [round(m.score, 3) for m in found] == [0.778, 0.556]
    G1, inst1 = plant_motifs(backbone=80, copies=3, kinds=("wheel", "tree"), seed=1)
    scores = [round(m.score, 3) for m in retrieve(G1, graphwave(G1), inst1[0][1], eps=0.9, size=(3, 40))]
    assert scores == [0.778, 0.471]  # best first (the components come out as 0.471, 0.778)
    assert all(not set(m.nodes) & set(ex) for m in found)  # the exemplar is not retrieved as its own match
    assert retrieve(G, emb, ex, eps=0.9, size=(3, 9)) == []  # both have 9 nodes: size's upper end is excluded
    assert len(retrieve(G, emb, ex, eps=0.9, size=(3, 10))) == 2
    # through a nearest-neighbour index over the unit rows: cosine = 1 - d²/2 for Euclidean d, the same matches
    index = NearestNeighbors().fit(cosine(emb))
    via = retrieve(G, emb, ex, eps=0.9, size=(3, 40), index=index)
    assert [sorted(m.nodes) for m in via] == [sorted(m.nodes) for m in found]


def test_retrieval_edges_found_by_mutation(tmp_path):
    from collections import Counter

    from sklearn.neighbors import NearestNeighbors

    from paperbook.layout_transfer.retrieve import read_matrix_market, wl_features

    # WL features of a path a-a-a, by hand: each round's labels counted under that round's number
    P = nx.path_graph(3)
    end, mid = ("a", ("a",)), ("a", ("a", "a"))
    assert wl_features(P, {v: "a" for v in P}, h=2) == Counter({
        (0, "a"): 3, (1, end): 2, (1, mid): 1, (2, (end, (mid,))): 2, (2, (mid, (end, end))): 1})
    # exemplar {0, 1}; the rest falls into components {2, 3} and {4, 5, 6}; every node a candidate (eps -1)
    G = nx.Graph([(0, 1), (1, 2), (2, 3), (0, 4), (4, 5), (5, 6)])
    emb = np.random.default_rng(0).normal(size=(7, 4))
    found = retrieve(G, emb, [0, 1], eps=-1.0, k=7, size=(2, 3))
    assert [sorted(m.nodes) for m in found] == [[2, 3]]  # size's lower end is included
    # k = 1: each exemplar node's nearest row is its own, and the exemplar is never its own match
    assert retrieve(G, emb, [0, 1], eps=-1.0, k=1, size=(1, 10)) == []
    index = NearestNeighbors().fit(cosine(emb))
    assert retrieve(G, emb, [0, 1], eps=-1.0, k=1, size=(1, 10), index=index) == []
    assert len(retrieve(G, emb, [0, 1], eps=-1.0, k=7, size=(1, 10), index=index)) == 2
    with pytest.raises(ValueError, match="not a readable Matrix Market file"):
        read_matrix_market(tmp_path / "missing.mtx")


def test_similarity_fit_recovers_a_transform():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 2))
    R = np.array([[0.0, -1.0], [1.0, 0.0]])
    s, Rf, t = similarity_fit(x, 3 * x @ R.T + [1, 2])
    assert s == pytest.approx(3) and np.allclose(Rf, R) and np.allclose(t, [1, 2])
    assert procrustes_residual(x, x[::-1]) > 0.1  # a permutation is not a similarity
    # a centred square plus e_i = ε·(-1)^i·a_i: e is orthogonal to a, to a turned by 90° and to both shifts, so the
    # best similarity is the identity and the residual is ‖e_i‖ = ε at every point (RMS ε; a sum would give 2ε)
    a = np.array([[1.0, 0], [0, 1], [-1, 0], [0, -1]])
    e = 0.1 * a * np.array([1, -1, 1, -1])[:, None]
    assert procrustes_residual(a, a + e) == pytest.approx(0.1)


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



def test_transfer_places_the_edit_in_the_targets_frame():
    G = nx.disjoint_union(nx.wheel_graph(7), nx.wheel_graph(7))
    rng = np.random.default_rng(2)
    pos = {v: rng.normal(size=2) for v in range(7)}
    pos |= {v + 7: pos[v] + [10.0, 0.0] for v in range(7)}  # the target: the exemplar shifted by (10, 0)
    ex, tg = list(range(7)), list(range(7, 14))
    after = apply_edit("radial", G, pos, ex, 1.0)
    m = {v + 7: v for v in ex}
    moved = transfer_edit(G, pos, {v: pos[v] for v in ex}, after, tg, m, unit=1.0)
    assert all(np.allclose(moved[v + 7], after[v] + [10.0, 0.0]) for v in ex)
    # node 13 has no partner: it is placed by stress among the matched nodes, not left out
    partial = transfer_edit(G, pos, {v: pos[v] for v in ex}, after, tg, {k: v for k, v in m.items() if k != 13},
                            unit=1.0)
    assert sorted(partial) == tg and np.isfinite(partial[13]).all()
    with pytest.raises(ValueError, match="two matched nodes to align, got 1"):
        transfer_edit(G, pos, {v: pos[v] for v in ex}, after, tg, {7: 0}, unit=1.0)


def test_stress_majorization_by_hand():
    # path p - x - m - q with x free, p and q held: d(x, p) = 1, d(x, q) = 2 (through m, which is neither). On the
    # line each held node pulls x to its ideal spot (p + 2 and q - 4 at unit 2) with weight 1/D²: (2/4 + 8/16) / (1/4
    # + 1/16) = 3.2
    G = nx.path_graph(["p", "x", "m", "q"])
    pos = {"p": np.zeros(2), "x": np.array([5.0, 0]), "m": np.array([7.0, 3]), "q": np.array([12.0, 0])}
    out = stress_majorize(G, pos, ["x"], ["p", "q"], unit=2.0)
    assert np.allclose(out["x"], [3.2, 0.0])


def test_matching_prefers_similar_partners_among_isomorphisms():
    G = nx.disjoint_union(nx.path_graph(3), nx.path_graph(3))
    sim = np.zeros((3, 3))
    sim[0, 2] = sim[2, 0] = 1.0  # target 3 looks like exemplar 2 and 5 like 0: the reversed path
    assert match_nodes(G, sim, [0, 1, 2], [3, 4, 5]) == {3: 2, 4: 1, 5: 0}
    # not isomorphic (a path and two isolated nodes against a path and three): ties in kept edges keep the
    # embedding's choice, a swap must gain an edge
    G = nx.Graph([(0, 1), (1, 2), (10, 11), (11, 12)])
    G.add_nodes_from([3, 4, 5, 13, 14])
    ex, tg = [0, 1, 2, 3, 4, 5], [10, 11, 12, 13, 14]
    sim = np.eye(5, 6)
    assert match_nodes(G, sim, ex, tg) == {10: 0, 11: 1, 12: 2, 13: 3, 14: 4}
    best = {10: 0, 11: 1, 12: 2, 13: 3, 14: 4}  # every edge kept: one round of swaps must change nothing
    assert improve_by_swaps(G.subgraph(tg), G.subgraph(ex), best, tg, rounds=1) == best


@pytest.mark.parametrize("seed", range(12))
def test_swaps_stop_at_a_local_optimum(seed):
    "After improve_by_swaps no exchange of two target nodes' partners keeps more edges (it runs to that point)."
    rng = np.random.default_rng(seed)
    Ge = nx.gnm_random_graph(8, 10, seed=seed)
    Gt = nx.relabel_nodes(nx.gnm_random_graph(9, 11, seed=seed + 100), lambda v: v + 100)
    tg = list(Gt)
    m = improve_by_swaps(Gt, Ge, dict(zip(rng.permutation(tg)[:8].tolist(), Ge)), tg)
    assert sorted(m.values()) == list(Ge)  # still one target node per exemplar node (none mapped to None)
    best = edge_agreement(Gt, Ge, m)
    for a, b in combinations(tg, 2):
        other = dict(m)  # a and b exchange partners (either may have none)
        pa, pb = other.pop(a, None), other.pop(b, None)
        other |= {k: v for k, v in ((a, pb), (b, pa)) if v is not None}
        assert edge_agreement(Gt, Ge, other) <= best


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
    # edges sharing an end are not a pair that can cross: (0,1)×(2,3) is the only pair, and it crosses
    assert readability(nx.Graph([(0, 1), (2, 3), (0, 2)]), crossing, [0, 1, 2, 3])["crosslessness"] == 0.0
    # c and d lie on both sides of the line through a, b, but the segments do not meet
    apart = {0: np.array([0.0, 0]), 1: np.array([1.0, 0]), 2: np.array([2.0, 1]), 3: np.array([2.0, -1])}
    assert readability(G, apart, [0, 1, 2, 3])["crosslessness"] == 1.0
    # every node's nearest node is not its neighbour: shape-based 0 (Jaccard of 1-nearest and the one neighbour)
    far = {0: np.array([0.0, 0]), 1: np.array([5.0, 0]), 2: np.array([1.0, 0]), 3: np.array([6.0, 0])}
    assert readability(G, far, [0, 1, 2, 3])["shape-based"] == 0.0
    # lengths 1, 1, 1, 10: std / mean = 3.897 / 3.25 > 1, so the uniformity is clipped at 0
    spiky = {0: np.zeros(2), 1: np.array([1.0, 0]), 2: np.array([0, 1.0]), 3: np.array([-1.0, 0]),
             4: np.array([0, -10.0])}
    assert readability(nx.star_graph(4), spiky, range(5))["edge uniformity"] == 0.0


def test_blending_moves_only_the_neighbourhood():
    G = nx.path_graph(12)
    pos = {v: np.array([float(v), 0.0]) for v in G}
    moved = {**pos, 0: np.array([-3.0, 0.0])}
    out = blend(G, moved, {0}, hops=2, unit=1.0)
    assert np.allclose(out[0], [-3, 0]) and all(np.allclose(out[v], pos[v]) for v in range(3, 12))
    assert out[1][0] < 1.0  # node 1 followed node 0
    # nodes 1 and 2 relax between the modified node 0 (at -3) and node 3, held because it borders them: by symmetry
    # x2 = -x1, and x2 = (2.75 + x1) / 2.25 (the majorization step, weights 1/d²) gives 11/13
    assert out[2] == pytest.approx([11 / 13, 0.0], abs=1e-6) and out[1] == pytest.approx([-11 / 13, 0.0], abs=1e-6)


def test_edits_and_errors():
    W = nx.wheel_graph(9)
    pos = {v: np.random.default_rng(v).normal(size=2) for v in W}
    radial = apply_edit("radial", W, pos, list(W), 1.0)
    r = [np.linalg.norm(radial[v] - radial[0]) for v in range(1, 9)]
    assert np.allclose(r, r[0]) and readability(W, radial, list(W))["crosslessness"] == 1.0
    with pytest.raises(ValueError, match="unknown edit 'spiral'"):
        apply_edit("spiral", W, pos, list(W), 1.0)
    assert r[0] == pytest.approx(8 / (2 * np.pi))  # 8 nodes on ring 1: the radius grows to keep them 1 apart


def test_radial_straighten_and_mirror_by_hand():
    # a path 0-1-2-3 with a leaf 4 on node 1: nodes 1 and 2 both have eccentricity 2; 1 has the higher degree
    G = nx.Graph([(0, 1), (1, 2), (2, 3), (1, 4)])
    pos = {v: np.random.default_rng(v).normal(size=2) for v in G}
    assert np.allclose(apply_edit("radial", G, pos, list(G), 1.0)[1], pos[1])  # the centre stays
    # a spider: three legs of two nodes. Ring 1 at radius 1, angles 0°, 120°, 240°; ring 2 at radius 2, shifted
    # half a step: 60°, 180°, 300°
    S = nx.Graph([(0, 1), (1, 4), (0, 2), (2, 5), (0, 3), (3, 6)])
    spos = {0: np.zeros(2), **{v: np.random.default_rng(v).normal(size=2) for v in range(1, 7)}}
    out = apply_edit("radial", S, spos, list(S), 1.0)
    polar = {v: (np.hypot(*out[v]), np.degrees(np.arctan2(out[v][1], out[v][0])) % 360) for v in range(1, 7)}
    assert sorted(round(a) for r, a in (polar[v] for v in (1, 2, 3))) == [0, 120, 240]
    assert sorted(round(a) for r, a in (polar[v] for v in (4, 5, 6))) == [60, 180, 300]
    assert [round(polar[v][0], 9) for v in range(1, 7)] == [1, 1, 1, 2, 2, 2]
    # straighten: nodes in the order of their projection on the main axis, `unit` apart, about the same centroid
    P = nx.path_graph(4)
    ppos = {0: np.array([2.0, 0.1]), 1: np.array([0.0, 0.0]), 2: np.array([3.0, -0.1]), 3: np.array([1.0, 0.0])}
    line = apply_edit("straighten", P, ppos, list(P), 2.0)
    offset = {v: line[v] - [1.5, 0.0] for v in P}  # from the centroid (1.5, 0)
    axis = offset[2] / np.linalg.norm(offset[2])  # node 2 is at one end (the axis' sign is arbitrary)
    along = {v: float(offset[v] @ axis) for v in P}
    assert sorted(P, key=along.get) == [1, 3, 0, 2] and sorted(along.values()) == pytest.approx([-3, -1, 1, 3])
    assert all(np.allclose(offset[v], along[v] * axis) for v in P) and abs(axis[0]) > 0.99  # on the near-x axis
    # mirror about the vertical line through the centroid (x = 1.5)
    mirror = apply_edit("mirror", P, ppos, list(P), 1.0)
    assert np.allclose(mirror[1], [3.0, 0.0]) and np.allclose(mirror[2], [0.0, -0.1])


def test_transfer_edges_found_by_mutation():
    from networkx.algorithms.isomorphism import GraphMatcher

    # an isomorphic copy with its nodes in another order: the isomorphism search finds an edge-preserving match
    # where the embedding (no help here) and swaps alone would not
    P = nx.petersen_graph()
    perm = np.random.default_rng(0).permutation(10)
    G = nx.union(P, nx.relabel_nodes(P, {v: 10 + int(perm[v]) for v in P}))
    m = match_nodes(G, np.ones((10, 10)), list(range(10)), list(range(10, 20)))
    assert edge_agreement(G.subgraph(range(10, 20)), P, m) == 15
    # max_isomorphisms: only the first ones are looked at
    G3 = nx.disjoint_union(nx.path_graph(3), nx.path_graph(3))
    sim = np.zeros((3, 3))
    sim[0, 2] = sim[2, 0] = 1.0  # the reversed path is the better match
    first = next(GraphMatcher(G3.subgraph([3, 4, 5]), G3.subgraph([0, 1, 2])).isomorphisms_iter())
    assert match_nodes(G3, sim, [0, 1, 2], [3, 4, 5], max_isomorphisms=1) == first
    assert match_nodes(G3, sim, [0, 1, 2], [3, 4, 5], max_isomorphisms=2) == {3: 2, 4: 1, 5: 0}
    with pytest.raises(ValueError, match="at least two matched points"):
        similarity_fit([[0.0, 0.0]], [[1.0, 1.0]])
    assert similarity_fit([[1.0, 1.0], [1.0, 1.0]], [[3.0, 4.0], [5.0, 6.0]])[0] == 1.0  # one point twice: no scale
    steps = {0: np.zeros(2), 1: np.array([1.0, 0]), 2: np.array([2.0, 0]), 3: np.array([6.0, 0])}
    assert mean_edge_length(nx.path_graph(4), steps) == 2.0  # lengths 1, 1, 4: the mean (the median would be 1)


def test_transfer_scales_moves_unmatched_nodes_along_and_skips_partners_without_an_edit():
    G = nx.disjoint_union(nx.wheel_graph(7), nx.wheel_graph(7))
    rng = np.random.default_rng(2)
    pos = {v: rng.normal(size=2) for v in range(7)}
    pos |= {v + 7: 2 * pos[v] + [10.0, 0.0] for v in range(7)}  # the target: the exemplar doubled and shifted
    ex, tg = list(range(7)), list(range(7, 14))
    before = {v: pos[v] for v in ex}
    after = apply_edit("radial", G, pos, ex, 1.0)
    m = {v + 7: v for v in ex}
    moved = transfer_edit(G, pos, before, after, tg, m, unit=1.0)
    assert all(np.allclose(moved[v + 7], 2 * after[v] + [10.0, 0.0]) for v in ex)
    # the edit shifts the exemplar by 100: node 13, unmatched, is placed among the matched nodes' new places
    far = {v: before[v] + [100.0, 0.0] for v in ex}
    part = transfer_edit(G, pos, before, far, tg, {k: v for k, v in m.items() if k != 13}, unit=1.0)
    assert part[13][0] > 150  # the others moved by 2 × 100; 13 went with them
    # a partner with no edited position counts as unmatched (placed by stress), not as an error
    no_edit = {v: after[v] for v in ex if v != 6}
    out = transfer_edit(G, pos, before, no_edit, tg, m, unit=1.0)
    assert sorted(out) == tg and np.isfinite(out[13]).all()


def test_radial_details_and_readability_edges():
    # a path 0-1-2-3 with a leaf 4 on node 2: nodes 1 and 2 both have eccentricity 2, 2 has the higher degree
    G = nx.Graph([(0, 1), (1, 2), (2, 3), (2, 4)])
    pos = {v: np.random.default_rng(v).normal(size=2) for v in G}
    assert np.allclose(apply_edit("radial", G, pos, list(G), 1.0)[2], pos[2])
    # each outer node of a spider follows its parent: half a step (60°) further round
    S = nx.Graph([(0, 1), (1, 4), (0, 2), (2, 5), (0, 3), (3, 6)])
    for seed in range(5):
        spos = {0: np.zeros(2), **{v: np.random.default_rng(seed * 10 + v).normal(size=2) for v in range(1, 7)}}
        out = apply_edit("radial", S, spos, list(S), 1.0)
        ang = {v: np.degrees(np.arctan2(out[v][1], out[v][0])) % 360 for v in range(1, 7)}
        assert all(round((ang[c] - ang[p]) % 360) == 60 for p, c in ((1, 4), (2, 5), (3, 6))), seed
    # a wheel whose rim runs counter-clockwise stays counter-clockwise (the rim is walked in angle order)
    W = nx.wheel_graph(9)
    wpos = {0: np.zeros(2), **{i: np.array([np.cos(0.8 * i), np.sin(0.8 * i)]) for i in range(1, 9)}}
    out = apply_edit("radial", W, wpos, list(W), 1.0)
    turns = [np.arctan2(*(out[i % 8 + 1] - out[0])[::-1]) - np.arctan2(*(out[i] - out[0])[::-1]) for i in range(1, 9)]
    assert all(np.sin(t) > 0 for t in turns)  # each next rim node lies counter-clockwise of the one before
    # the smallest gap between three edges at 170°, -170° and 0° is the 20° across the ±180° line: 1 - 100/120
    tri = {0: np.zeros(2), **{i: np.array([np.cos(np.radians(a)), np.sin(np.radians(a))])
                              for i, a in ((1, 170), (2, -170), (3, 0))}}
    assert readability(nx.star_graph(3), tri, range(4))["minimum angle"] == pytest.approx(1 - 100 / 120)
    assert readability(nx.star_graph(3), tri, range(4))["crosslessness"] == 1.0  # no pair of edges can cross
    # shape-based is the mean over nodes: on a line 0, 1, 1.4, 5 with edges 0-1 and 2-3 the Jaccards are 1, 0, 0, 1
    line = {0: np.zeros(2), 1: np.array([1.0, 0]), 2: np.array([1.4, 0]), 3: np.array([5.0, 0])}
    assert readability(nx.Graph([(0, 1), (2, 3)]), line, range(4))["shape-based"] == 0.5


def test_matrix_market_reader(tmp_path):
    p = tmp_path / "g.mtx"
    p.write_text("%%MatrixMarket matrix coordinate real symmetric\n3 3 3\n1 1 4.0\n2 1 1.0\n3 2 1.0\n")
    G = read_matrix_market(p)
    assert sorted(G.edges) == [(0, 1), (1, 2)]
    (tmp_path / "bad.mtx").write_text("not a matrix\n")
    with pytest.raises(ValueError, match="not a readable Matrix Market file"):
        read_matrix_market(tmp_path / "bad.mtx")
    (tmp_path / "wide.mtx").write_text("%%MatrixMarket matrix coordinate real general\n2 3 1\n1 2 1.0\n")
    with pytest.raises(ValueError, match=r"square matrix, got \(2, 3\)"):
        read_matrix_market(tmp_path / "wide.mtx")


def _per_seed(gw=(0.9, 0.85), deg=(0.5, 0.6), kept=(5.0, 3.0), moves=(0.1, 0.1, -0.05), cv=(0.10, 0.30, 0.12)):
    "Crafted results of three seeds: retrieval P/R per kind, two targets, boundary edge-length CVs."
    ex = ({"crosslessness": 0.5, "minimum angle": 0.4, "edge uniformity": 0.9},
          {"crosslessness": 0.9, "minimum angle": 0.6, "edge uniformity": 0.89})  # uniformity moves < 0.02: ignored
    target = lambda: {"edges kept (ours)": kept[0], "edges kept (embedding only)": kept[1], "exemplar": ex,
                      "before": {"crosslessness": 0.4, "minimum angle": 0.3, "edge uniformity": 0.8},
                      "after": {"crosslessness": 0.4 + moves[0], "minimum angle": 0.3 + moves[1],
                                "edge uniformity": 0.8 + moves[2]}}
    out = {}
    for s, e in enumerate((0.0, 0.01, -0.01)):
        pr = lambda p, r, e=e: {k: {"precision": p + e, "recall": r} for k in ("wheel", "tree")}
        out[s] = {"retrieval": {"GraphWave": pr(*gw), "degree histogram": pr(*deg)}, "targets": [target(), target()],
                  "boundary_cv": {"transferred and blended": cv[0] + e / 10, "transferred, not blended": cv[1],
                                  "before the edit": cv[2]}}
    return out


def test_claims_follow_crafted_results():
    from paperbook.layout_transfer.chapter import direction_share, make_claims

    cfg = resolve("layout-transfer", "cpu-toy")
    rows = make_claims(_per_seed(), cfg)
    assert len(rows) == 6 and all(r["holds"] for r in rows), [r["claim"] for r in rows if not r["holds"]]
    assert rows[0]["per_seed"][1]["value"] == pytest.approx([0.91, 0.85])  # mean P and R over the kinds
    # F1 by hand: 2·0.9·0.85/1.75 = 0.87429 against 2·0.5·0.6/1.1 = 0.54545
    assert rows[1]["per_seed"][0]["value"] == pytest.approx({"GraphWave F1": 0.87429, "degree F1": 0.54545},
                                                            abs=1e-5)
    assert rows[2]["per_seed"][0]["value"] == {"ours": 5.0, "embedding only": 3.0}
    assert rows[5]["per_seed"][0]["value"] == pytest.approx(0.10 / 0.12)
    # the exemplar's crossings and angles rose (its uniformity moved less than 0.02): the targets' angles fall
    assert direction_share(_per_seed(moves=(0.1, -0.1, 0.0))[0]["targets"]) == 0.5
    falling = [t | {"exemplar": t["exemplar"][::-1]} for t in _per_seed(moves=(-0.1, -0.1, 0.0))[0]["targets"]]
    assert direction_share(falling) == 1.0  # the exemplar's metrics fell, and so did the targets'
    assert rows[4]["per_seed"][0]["value"] == {"blended CV": 0.10, "not blended CV": 0.30}
    assert make_claims(_per_seed(cv=(0.126, 0.30, 0.12)), cfg)[5]["holds"] is False  # 5% more varied than before
    bad = make_claims(_per_seed(gw=(0.9, 0.75), deg=(0.9, 0.75), kept=(3.0, 3.0), moves=(0.1, -0.1, 0.0),
                                cv=(0.31, 0.30, 0.12)), cfg)
    assert [r["holds"] for r in bad] == [False] * 6


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


def test_boundary_cv_by_hand_and_its_refusal():
    from paperbook.layout_transfer.chapter import boundary_cv

    G = nx.path_graph(5)  # 0-1-2-3-4 on a line; nodes 1 and 2 modified: boundary edges (0, 1) and (2, 3)
    pos = {0: (0, 0), 1: (1, 0), 2: (2, 0), 3: (5, 0), 4: (6, 0)}  # lengths 1 and 3 (inner edge 1-2 and 3-4 left out)
    assert boundary_cv(G, {1, 2}, pos) == pytest.approx(0.5)  # std 1 / mean 2
    with pytest.raises(ValueError, match=r"no edge joins .* \(5 of 5 nodes modified\).*retrieval.top"):
        boundary_cv(G, set(G), pos)
