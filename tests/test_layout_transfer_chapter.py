"""Chapter 10's glue (paperbook.layout_transfer.chapter) with the graph, layout, embeddings, retrieval, matching,
transfer and blending replaced by stand-ins: what each step is given and what one seed records, by hand."""

import math

import networkx as nx
import numpy as np
import pytest

from paperbook.core import resolve
from paperbook.layout_transfer import chapter as ch


class _Match:
    def __init__(self, nodes):
        self.nodes = nodes


GW = np.arange(16, dtype=float).reshape(8, 2) % 5 + np.eye(8, 2)  # GraphWave's stand-in embedding (8 nodes)


@pytest.fixture
def stubs(monkeypatch):
    "A path of 8 nodes with three planted 'wheel' copies {0, 1}, {2, 3}, {4, 5}; every step recorded."
    log = {"retrieve": {}, "pr": [], "match": [], "transfer": [], "agree": []}
    G = nx.path_graph(8)
    inst = [("wheel", [0, 1]), ("wheel", [2, 3]), ("wheel", [4, 5])]
    monkeypatch.setattr(ch, "plant_motifs", lambda *a, seed: log.update(plant=(*a, seed)) or (G, inst))
    monkeypatch.setattr(ch.nx, "spring_layout", lambda g, seed: log.update(layout_seed=seed)
                        or {v: (float(v), 0.0) for v in g})
    monkeypatch.setattr(ch, "mean_edge_length", lambda g, pos: 1.0)
    monkeypatch.setattr(ch, "graphwave", lambda g, sample: log.update(sample=sample) or GW)
    monkeypatch.setattr(ch, "degree_embedding", lambda g: np.ones((8, 2)))
    monkeypatch.setattr(ch, "cosine", lambda emb: emb * 10)

    def retrieve(g, emb, exemplar, *, k, eps, size):
        name = "GraphWave" if emb is GW else "degree histogram"
        log["retrieve"][name] = (exemplar, k, eps, size)
        return [_Match([2, 3]), _Match([6, 7]), _Match([4, 5])] if name == "GraphWave" else [_Match([6, 7])]

    monkeypatch.setattr(ch, "retrieve", retrieve)
    monkeypatch.setattr(ch, "precision_recall", lambda found, truth, j: log["pr"].append((truth, j))
                        or (len(found) / 10, 0.5))
    monkeypatch.setattr(ch, "apply_edit", lambda kind, g, pos, nodes, unit: log.update(edit=kind)
                        or {v: pos[v] + 1 for v in nodes})
    monkeypatch.setattr(ch, "readability", lambda g, P, nodes: {"x": float(sum(P[v][0] for v in nodes))})

    def match_nodes(g, sim, exemplar, target):
        log["match"].append(sim)
        return {target[0]: exemplar[1], target[1]: exemplar[0]}  # crossed: not what the similarity alone picks

    monkeypatch.setattr(ch, "match_nodes", match_nodes)

    def transfer(g, pos, ex_pos, after, target, mapping, *, unit):
        log["transfer"].append(mapping)
        return {v: pos[v] + 2 for v in target}

    monkeypatch.setattr(ch, "transfer_edit", transfer)
    monkeypatch.setattr(ch, "edge_agreement", lambda gt, ge, mapping: float(sum(k * v for k, v in mapping.items())))
    monkeypatch.setattr(ch, "blend", lambda g, P, modified, *, hops, unit: log.update(blend=(set(modified), hops))
                        or {v: p * 2 for v, p in P.items()})
    return log


def test_one_seed_passes_every_setting_and_records_what_it_measured(stubs):
    cfg = resolve("layout-transfer", overrides={"graph.backbone": 30, "graph.copies": 3, "graph.kinds": ["wheel"],
                                                "retrieval.k": 7, "retrieval.eps": 0.5, "retrieval.size_min": 1.5,
                                                "retrieval.size_max": 2.0, "retrieval.jaccard": 0.3,
                                                "retrieval.top": 2, "retrieval.sample": 4, "edit.kind": "straighten",
                                                "edit.blend_hops": 3})
    out = ch.one_seed(cfg, seed=5)
    assert stubs["plant"] == (30, 3, ("wheel",), 5) and stubs["layout_seed"] == 5 and stubs["sample"] == 4
    # both embeddings search around the exemplar {0, 1} with k, ε and sizes max(2, 1.5·2) .. 2·2
    assert stubs["retrieve"] == {"GraphWave": ([0, 1], 7, 0.5, (3, 5)), "degree histogram": ([0, 1], 7, 0.5, (3, 5))}
    assert stubs["pr"] == [([[2, 3], [4, 5]], 0.3)] * 2  # the other copies are the truth
    assert out["retrieval"] == {"GraphWave": {"wheel": {"precision": 0.3, "recall": 0.5, "found": 3}},
                                "degree histogram": {"wheel": {"precision": 0.1, "recall": 0.5, "found": 1}}}
    assert stubs["edit"] == "straighten"
    # the top two GraphWave matches are the targets; similarity from GraphWave (after `cosine`), target × exemplar
    assert [t["nodes"] for t in out["targets"]] == [[2, 3], [6, 7]]
    assert [t["is_copy"] for t in out["targets"]] == [True, False]
    E = GW * 10
    assert all(np.array_equal(sim, E[t] @ E[[0, 1]].T) for sim, t in zip(stubs["match"], ([2, 3], [6, 7])))
    assert stubs["transfer"] == [{2: 1, 3: 0}, {6: 1, 7: 0}]  # the matching is what moves the targets
    first = out["targets"][0]
    # the similarity alone pairs 2 with 0 and 3 with 1 (larger products on the diagonal): 2·0 + 3·1 = 3 kept
    assert first["edges kept (ours)"] == 2.0 and first["edges kept (embedding only)"] == 3.0  # one exemplar edge
    assert first["before"] == {"x": 5.0} and first["after"] == {"x": 9.0}  # its own nodes moved by 2
    assert first["exemplar"] == ({"x": 1.0}, {"x": 3.0})  # the exemplar before and after its edit
    assert stubs["blend"] == ({0, 1, 2, 3, 6, 7}, 3)
    # boundary edges (one end modified): 3-4 and 5-6; after the transfer 3 is at (5, 2), 6 at (8, 2)
    lengths = [math.sqrt(5), math.sqrt(13)]
    cv = float(np.std(lengths) / np.mean(lengths))
    assert out["boundary_cv"] == {"before the edit": 0.0, "transferred, not blended": pytest.approx(cv),
                                  "transferred and blended": pytest.approx(cv)}  # blending ×2 keeps the CV
    assert out["layouts"]["modified"] == {0, 1, 2, 3, 6, 7}


def test_without_a_sample_graphwave_uses_every_node(stubs):
    ch.one_seed(resolve("layout-transfer", overrides={"graph.kinds": ["wheel"], "retrieval.top": 1}), seed=0)
    assert stubs["sample"] is None


def test_direction_share_ignores_small_exemplar_changes():
    t = lambda before, after, eb, ea: {"before": before, "after": after, "exemplar": (eb, ea)}
    targets = [t({"a": 0.0, "b": 0.0}, {"a": 0.1, "b": -0.1}, {"a": 0.0, "b": 0.0}, {"a": 0.5, "b": 0.01})]
    assert ch.direction_share(targets) == 1.0  # b moved 0.01 < 0.02 in the exemplar: not counted
    assert ch.direction_share(targets, min_change=0.005) == 0.5
    assert math.isnan(ch.direction_share(targets, min_change=1.0))


def test_thresholds_come_from_the_config_and_both_precision_and_recall_count():
    from test_layout_transfer import _per_seed

    rows = ch.make_claims(_per_seed(gw=(0.95, 0.75)), resolve("layout-transfer", "cpu-toy"))
    assert not rows[0]["holds"]  # recall 0.75 below 0.8, though precision is above
    lax = resolve("layout-transfer", overrides={"claims.retrieval": 0.7, "claims.direction": 0.5})
    rows = ch.make_claims(_per_seed(gw=(0.95, 0.75), moves=(0.1, -0.1, 0.0)), lax)
    assert rows[0]["holds"] and rows[3]["holds"]  # direction share 0.5 meets the configured 50%
    assert not ch.make_claims(_per_seed(cv=(0.1201, 0.30, 0.12)), lax)[5]["holds"]  # any rise above before fails


def test_experiment_runs_consecutive_seeds_and_keeps_no_node_lists(monkeypatch):
    monkeypatch.setattr(ch, "one_seed", lambda cfg, s: {"retrieval": s, "boundary_cv": {}, "layouts": None,
                                                        "targets": [{"nodes": [1], "before": s}]})
    monkeypatch.setattr(ch, "make_claims", lambda per_seed, cfg: [])
    res = ch.experiment(resolve("layout-transfer", overrides={"seed": 3, "seeds": 2}), None)
    assert res.metrics == {3: {"retrieval": 3, "boundary_cv": {}, "targets": [{"before": 3}]},
                           4: {"retrieval": 4, "boundary_cv": {}, "targets": [{"before": 4}]}}
    assert res.data["planted_motifs"]["source"] == "generated"  # the run record says the graphs were generated


def test_equal_size_bounds_are_refused():
    with pytest.raises(ValueError, match="size_min must be below retrieval.size_max; got 2"):
        resolve("layout-transfer", overrides={"retrieval.size_min": 2.0, "retrieval.size_max": 2.0})


def test_edges_kept_is_a_share_of_the_exemplars_edges(stubs, monkeypatch):
    G = nx.path_graph(8)
    G.add_edge(0, 2)  # the exemplar {0, 1, 2} is a triangle: three edges
    monkeypatch.setattr(ch, "plant_motifs", lambda *a, seed: (G, [("wheel", [0, 1, 2]), ("wheel", [3, 4, 5])]))
    out = ch.one_seed(resolve("layout-transfer", overrides={"graph.kinds": ["wheel"], "retrieval.top": 1}), seed=0)
    assert out["targets"][0]["edges kept (ours)"] == pytest.approx(2 / 3)  # 2·1 + 3·0 of the stand-in, over 3
