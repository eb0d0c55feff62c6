"""Chapter 3 (CTNAS): graph encodings, loaders and their refusals, Kendall's τ, the comparator, the searches."""

import builtins
import gzip
import io
import json
import pickle

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau

from paperbook.core import resolve
import paperbook.ctnas.model as ctnas_model
from paperbook.ctnas.model import (NAC, Controller, GraphEncoder, Predictor, batch_graphs, kendall_from_verdicts,
                                   nac_matrix, predictor_pick, pseudo_labelled_pairs, regularized_evolution, search,
                                   train_nac, train_predictor)
from paperbook.ctnas.spaces import (Space, _AllowListUnpickler, chain_graph, check_nb101, load_nasbench101_json,
                                    load_nasbench201, load_nasbench_macro, nb201_graph)

from helpers import cli


def toy_space(layers=4, options=3, seed=0):
    "A chain space whose accuracy is additive in the choices: the best architecture is known."
    gain = np.random.default_rng(seed).normal(size=(layers, options))
    archs = [tuple(int(c) for c in np.unravel_index(i, (options,) * layers)) for i in range(options ** layers)]
    acc = np.array([80 + sum(gain[k, a[k]] for k in range(layers)) for a in archs])
    return Space("toy", archs, acc, (options,) * layers, options, lambda a: chain_graph(a, options)), gain


def test_nb201_cell_as_an_op_on_node_graph():
    A, types = nb201_graph((0, 1, 2, 3, 4, 0))
    # node k + 1 is edge k of (c0→c1, c0→c2, c0→c3, c1→c2, c1→c3, c2→c3); node 0 input, node 7 output
    expected = {(0, 1), (0, 2), (0, 3),  # edges leaving c0 are fed by the input
                (1, 4), (1, 5),  # edges leaving c1 are fed by the edge c0→c1
                (2, 6), (4, 6),  # the edge c2→c3 is fed by both edges into c2
                (3, 7), (5, 7), (6, 7)}  # the edges into c3 feed the output
    assert {tuple(map(int, e)) for e in zip(*np.nonzero(A))} == expected
    assert types.tolist() == [0, 2, 3, 4, 5, 6, 2, 1]
    with pytest.raises(ValueError, match="6 operations in 0..4"):
        nb201_graph((0, 1, 2, 3, 5, 0))


def test_nb201_edge_order_matches_the_benchmarks_data():
    # analog-nasbench does not document its tuple order: with NB201_EDGES and operation 1 as `none`, every cell in
    # which no path reaches c3 must score chance (10% on CIFAR-10); in NAS-Bench-201's string order some score ~90%
    from paperbook.ctnas.spaces import NB201_EDGES

    def reaches_output(arch):
        live = {0}
        for (s, t), o in sorted(zip(NB201_EDGES, arch)):  # by source: a topological order
            if o != 1 and s in live:
                live.add(t)
        return 3 in live
    space = load_nasbench201()
    dead = [a for a in space.archs if not reaches_output(a)]
    assert len(dead) == 341 and {space.accuracy(a) for a in dead} == {10.0}
    # cells that compute the same function (nb201_function) were trained apart: their accuracies differ by noise
    groups = {}
    for a, acc in zip(space.archs, space.acc):
        groups.setdefault(space.function(a), []).append(acc)
    spread = [np.ptp(v) for v in groups.values() if len(v) > 1]
    assert len(groups) == 8765 and np.median(spread) < 0.3 and np.percentile(spread, 90) < 1.0


def test_chain_graph():
    A, types = chain_graph((2, 0, 1))
    assert A.tolist() == np.eye(5, k=1).tolist() and types.tolist() == [0, 4, 2, 3, 1]
    with pytest.raises(ValueError, match="0..2"):
        chain_graph((0, 3))


def test_graph_layer_by_hand():
    enc = GraphEncoder(3, width=2, layers=1)
    with torch.no_grad():
        enc.embed.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        enc.W[0].weight.copy_(torch.eye(2))
        enc.b[0].fill_(0.5)
    A = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]])  # 0 → 1 → 2
    types = torch.tensor([[0, 2, 1]])
    # X = [[1,0],[1,1],[0,1]]; (Aᵀ+I)X sums a node and its predecessor: [[1,0],[2,1],[1,2]]; + X + b
    expected = np.array([[2.5, 0.5], [3.5, 2.5], [1.5, 3.5]]).mean(0)
    assert np.allclose(enc(A, types).detach().numpy()[0], expected)


def test_kendall_from_verdicts_matches_scipy():
    rng = np.random.default_rng(3)
    acc = rng.normal(size=60)
    score = acc + rng.normal(scale=0.8, size=60)
    better = score[:, None] > score[None, :]
    assert kendall_from_verdicts(better, acc) == pytest.approx(kendalltau(score, acc).statistic, abs=1e-12)
    assert kendall_from_verdicts(acc[:, None] > acc[None, :], acc) == 1.0
    # a pair of equal accuracy is left out: of (0, 2) right and (1, 2) wrong, τ = (1 - 1) / 2, whatever (0, 1) says
    tied = np.array([0.5, 0.5, 0.9])
    assert kendall_from_verdicts(np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], bool), tied) == 0.0
    assert kendall_from_verdicts(acc[:, None] < acc[None, :], acc) == -1.0


def test_comparator_learns_a_toy_space():
    space, _ = toy_space()
    lab = np.random.default_rng(0).choice(len(space), 40, replace=False)
    held = np.setdiff1d(np.arange(len(space)), lab)
    torch.manual_seed(0)
    nac = NAC(space.n_ops + 2, width=64, layers=4)  # a chain needs depth for the layers' positions to show
    A, t = batch_graphs(space, [space.archs[i] for i in lab])
    train_nac(nac, A, t, space.acc[lab], epochs=1000, seed=0)
    hA, ht = batch_graphs(space, [space.archs[i] for i in held])
    M = nac_matrix(nac, hA, ht)
    assert kendall_from_verdicts(M > 0.5, space.acc[held]) > 0.6
    assert np.allclose(M + M.T, 1.0, atol=0.35)  # roughly antisymmetric, though nothing forces it


def test_nac_matrix_is_the_pairwise_forward_on_every_ordered_pair():
    space, _ = toy_space()
    torch.manual_seed(3)
    nac = NAC(space.n_ops + 2, width=16, layers=2)
    torch.nn.init.normal_(nac.head.bias)  # a nonzero bias: counted once per pair, not once per graph
    A, t = batch_graphs(space, space.archs[:7])
    with torch.no_grad():
        by_pair = np.array([[nac(A[[i]], t[[i]], A[[j]], t[[j]]).item() for j in range(7)] for i in range(7)])
    M = nac_matrix(nac, A, t)
    assert M.shape == (7, 7) and np.allclose(M, by_pair, atol=1e-6)
    assert not np.allclose(M, M.T, atol=1e-3)  # row = first argument: a transposed matrix fails
    assert nac.training  # left in training mode

    class Pairwise(torch.nn.Module):  # a comparator without all_pairs: run on the 49 pairs, 5 at a time
        def __init__(self):
            super().__init__()
            self.inner = nac

        def forward(self, *graphs):
            return self.inner(*graphs)
    assert np.allclose(nac_matrix(Pairwise(), A, t, chunk=5), by_pair, atol=1e-6)


def test_pairs_of_equal_accuracy_teach_the_comparator_nothing():
    space, _ = toy_space()
    A, t = batch_graphs(space, space.archs[:20])
    nac = NAC(space.n_ops + 2, width=8, layers=1)
    before = [p.detach().clone() for p in nac.parameters()]
    assert train_nac(nac, A, t, np.full(20, 90.0), epochs=3, batch=8) == []  # every pair tied: no step
    assert all(torch.equal(a, b) for a, b in zip(before, nac.parameters()))


class ByTypeSumScore(torch.nn.Module):
    "A stand-in predictor: the sum of node types, with a parameter so that an optimizer can be built."

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, A, t):
        return self.w * t.sum(1).float()


def test_the_predictor_regresses_standardised_accuracy_and_picks_over_every_chunk():
    space, _ = toy_space()
    A, t = batch_graphs(space, space.archs)
    acc = 50 + 20 * (space.acc - space.acc.mean()) / space.acc.std()  # mean 50, sd 20
    torch.manual_seed(0)
    pred = Predictor(space.n_ops + 2, width=8, layers=1)
    with torch.no_grad():
        pred.head.weight.zero_()
        pred.head.bias.zero_()
    losses = train_predictor(pred, A, t, acc, epochs=1, batch=len(acc))
    # the first batch is the whole space and the predictor says 0: the MSE is the standardised targets' variance,
    # (n - 1) / n with the unbiased sd; on raw or only centred accuracies it would be about 2,900 or 400
    assert losses[0] == pytest.approx((len(acc) - 1) / len(acc), rel=1e-4)
    # the pick is the best score over the whole space, whatever the chunk size
    best = max(space.archs, key=sum)
    assert predictor_pick(space, ByTypeSumScore(), chunk=7) == best == predictor_pick(space, ByTypeSumScore())


def test_controller_samples_valid_architectures_with_the_right_entropy():
    ctl = Controller((2, 3, 5))
    with torch.no_grad():
        for h in ctl.heads:
            h.weight.zero_()
            h.bias.zero_()
    archs, logp, ent = ctl(500, torch.Generator().manual_seed(0))
    assert archs.shape == (500, 3) and (archs.max(0).values == torch.tensor([1, 2, 4])).all()
    assert torch.allclose(ent, torch.tensor(np.log(2 * 3 * 5), dtype=torch.float32))
    assert torch.allclose(logp, -ent)


def test_controller_is_a_proper_autoregressive_distribution():
    # decisions (3, 3): the nine architectures' probabilities, read from the log-probabilities the controller
    # returns, sum to 1, and the second decision's distribution depends on the first pick (the pick is fed back)
    torch.manual_seed(0)
    ctl = Controller((3, 3))
    with torch.no_grad():
        archs, logp, _ = ctl(3000, torch.Generator().manual_seed(0))
    prob = {}
    for a, lp in zip(archs.tolist(), logp.tolist()):
        prob[tuple(a)] = np.exp(lp)
    assert len(prob) == 9 and sum(prob.values()) == pytest.approx(1.0, abs=1e-5)
    cond = np.array([[prob[(a, b)] for b in range(3)] for a in range(3)])
    cond /= cond.sum(1, keepdims=True)  # P(second | first)
    assert np.abs(cond - cond[0]).sum(1).max() > 1e-3


def test_search_finds_a_good_architecture_of_a_toy_space():
    space, gain = toy_space()
    torch.manual_seed(0)
    nac = NAC(space.n_ops + 2, width=64, layers=4)
    A, t = batch_graphs(space, space.archs)
    train_nac(nac, A, t, space.acc, epochs=400, seed=0)
    res = search(space, nac, labelled=(A, t, space.acc), steps=80, batch=8, update_every=10, lr=2e-2, seed=0)
    assert space.rank_percentile(res["best"]) <= 10.0
    assert len(res["history"]) == 8 and res["explored"] > 0
    with pytest.raises(ValueError, match="update, fixed or random"):
        search(space, nac, labelled=(A, t, space.acc), steps=1, baseline="best")


def test_model_details_found_by_mutation():
    import copy

    from paperbook.ctnas.model import regularized_evolution

    space, _ = toy_space()
    torch.manual_seed(0)
    nac = NAC(space.n_ops + 2, width=8, layers=2)
    A, t = batch_graphs(space, space.archs[:6])
    with torch.no_grad():  # P(α better than β) = σ(w·[feat(α); feat(β)] + b), α's features first
        hand = torch.sigmoid(nac.head(torch.cat([nac.encoder(A[:3], t[:3]), nac.encoder(A[3:], t[3:])], -1)))
        assert torch.allclose(nac(A[:3], t[:3], A[3:], t[3:]), hand.squeeze(-1))
    # pseudo-labelled pairs join the loss: four copies of one pair labelled 1 add -log NAC(pair) to the first loss
    extra = (A[:1].repeat(4, 1, 1), t[:1].repeat(4, 1), A[1:2].repeat(4, 1, 1), t[1:2].repeat(4, 1), torch.ones(4))
    before = copy.deepcopy(nac)
    acc = np.arange(6.0)
    plain = train_nac(copy.deepcopy(before), A, t, acc, epochs=1, batch=6, seed=0)
    with_extra = train_nac(copy.deepcopy(before), A, t, acc, epochs=1, batch=6, seed=0, extra_pairs=extra)
    with torch.no_grad():
        add = -torch.log(before(A[:1], t[:1], A[1:2], t[1:2])).item()
    assert with_extra[0] == pytest.approx(plain[0] + add, rel=1e-5)
    # the NAC is updated every `update_every` steps, at steps 5 and 10 of 10
    res = search(space, nac, labelled=(A, t, acc), steps=10, batch=4, update_every=5, explore=False, seed=0)
    assert [h[0] for h in res["history"]] == [5, 10]

    class Counting:  # the toy space, counting look-ups
        def __init__(self, space):
            self.space, self.looked = space, []
            self.archs, self.choices = space.archs, space.choices

        def __len__(self):
            return len(self.space)

        def accuracy(self, a):
            self.looked.append((a, self.space.accuracy(a)))
            return self.looked[-1][1]

    small = Counting(space)
    regularized_evolution(small, 3, population=10, seed=0)
    assert len(small.looked) == 3  # the budget holds even below the population's size
    for seed in range(10):  # the best architecture looked up, even once it has aged out of the population
        c = Counting(space)
        got = regularized_evolution(c, 40, population=3, seed=seed)
        assert space.accuracy(got) == max(a for _, a in c.looked)


class ByTypeSum(torch.nn.Module):
    "A stand-in comparator: P(first better) = sigmoid(sum of node types of the first - of the second + bias)."

    def __init__(self, bias: float = 0.0):
        super().__init__()
        self.bias, self.w = bias, torch.nn.Parameter(torch.zeros(()))  # w: something for an optimizer to hold

    def forward(self, A1, t1, A2, t2):
        return torch.sigmoid((t1.sum(1) - t2.sum(1)).float() + self.bias + 0 * self.w)


def test_the_search_moves_its_baseline_to_the_candidate_the_comparator_prefers(monkeypatch):
    # the update rule: among k sampled candidates, β = argmax_i Σ_{j≠i} NAC(i, j); with a comparator that
    # prefers a larger option sum, that is the candidate of the largest sum
    space, _ = toy_space()
    seen, real = [], ctnas_model.nac_matrix
    monkeypatch.setattr(ctnas_model, "nac_matrix", lambda nac, A, t: seen.append(t) or real(nac, A, t))
    A, t = batch_graphs(space, space.archs[:9])
    res = search(space, ByTypeSum(), labelled=(A, t, space.acc[:9]), steps=30, update_every=10, k=6,
                 explore=False, seed=1)
    assert len(seen) == len(res["history"]) == 3
    for cand_t, (_, beta, _) in zip(seen, res["history"]):
        sums = (cand_t[:, 1:-1] - 2).sum(1)  # option sums of the candidates
        assert sum(beta) == int(sums.max())


class Even(ByTypeSum):
    "A stand-in comparator that calls every pair even."

    def forward(self, A1, t1, A2, t2):
        return torch.full((len(t1),), 0.5) + 0 * self.w


def test_the_search_rewards_entropy():
    # a comparator that calls every pair even leaves the controller only the entropy term: a bonus keeps the
    # sampling near uniform (the maximum entropy of 4 decisions of 3 options is 4 ln 3)
    space, _ = toy_space()
    A, t = batch_graphs(space, space.archs[:9])
    res = search(space, Even(), labelled=(A, t, space.acc[:9]), steps=60, update_every=1000, entropy=1.0,
                 lr=5e-2, explore=False, seed=0)
    with torch.no_grad():
        ent = res["controller"](500, torch.Generator().manual_seed(0))[2]
    assert float(ent.mean()) > 0.999 * 4 * np.log(3)


def test_pseudo_labelled_pairs_keep_the_surest_pairs_of_two_architectures():
    space, _ = toy_space()
    archs = [(0, 0, 0, 0), (2, 2, 2, 2), (1, 0, 0, 0), (0, 0, 0, 0), (2, 1, 0, 0), (0, 0, 0, 1)]
    perm = torch.randperm(len(archs), generator=torch.Generator().manual_seed(5)).tolist()
    # by hand: the pairs (archs[i], archs[perm[i]]) of two different architectures, surest first
    pairs = [(archs[i], archs[j]) for i, j in enumerate(perm) if archs[i] != archs[j]]
    gap = lambda a, b: sum(a) - sum(b)  # chain graphs: the type sums differ by the option sums
    pairs.sort(key=lambda ab: -abs(1 / (1 + np.exp(-gap(*ab))) - 0.5))
    A1, t1, A2, t2, y = pseudo_labelled_pairs(space, ByTypeSum(), archs, 3, torch.Generator().manual_seed(5))
    decode = lambda t: [tuple(int(x) - 2 for x in row[1:-1]) for row in t]
    got = list(zip(decode(t1), decode(t2)))
    assert len(got) == 3 and [abs(gap(*ab)) for ab in got] == [abs(gap(*ab)) for ab in pairs[:3]]
    assert all(a != b for a, b in got) and set(got) <= set(pairs)
    assert y.tolist() == [float(gap(a, b) > 0) for a, b in got]  # the stand-in's own verdict
    assert A1.shape == (3, 6, 6) and torch.equal(A1[0], torch.as_tensor(space.graph(got[0][0])[0]))
    _, _, _, _, y_all = pseudo_labelled_pairs(space, ByTypeSum(), archs, 99, torch.Generator().manual_seed(5))
    assert len(y_all) == len(pairs)  # never a pair of one architecture twice
    # ... even when the comparator is surest of those (a bias of 5: P = 0.993 for a pair of one architecture)
    _, t1, _, t2, _ = pseudo_labelled_pairs(space, ByTypeSum(5.0), archs, len(pairs), torch.Generator().manual_seed(5))
    assert all(not torch.equal(a, b) for a, b in zip(t1, t2))


@pytest.mark.parametrize("explore", [True, False])
def test_the_search_trains_the_comparator_on_the_labelled_pairs_and_the_growing_pool(monkeypatch, explore):
    space, _ = toy_space()
    lab = np.arange(0, len(space), 3)
    A, t = batch_graphs(space, [space.archs[i] for i in lab])
    calls, real = [], ctnas_model.train_nac

    def spy(nac, A_, t_, acc, *, epochs, extra_pairs=None, **kw):
        calls.append((A_ is A, epochs, None if extra_pairs is None else len(extra_pairs[-1])))
        return real(nac, A_, t_, acc, epochs=epochs, extra_pairs=extra_pairs, **kw)

    monkeypatch.setattr(ctnas_model, "train_nac", spy)
    torch.manual_seed(0)
    nac = NAC(space.n_ops + 2, width=16, layers=2)
    before = [p.detach().clone() for p in nac.parameters()]
    res = search(space, nac, labelled=(A, t, space.acc[lab]), steps=40, update_every=10, explore=explore,
                 explore_top=5, seed=0)
    # one epoch on the labelled pairs at each of the 4 updates; with exploration, 5 more pool pairs each time
    assert calls == [(True, 1, 5 * (u + 1) if explore else None) for u in range(4)]
    assert res["explored"] == (20 if explore else 0)
    assert any(not torch.equal(a, b) for a, b in zip(before, nac.parameters()))


def test_regularized_evolution_spends_its_budget_and_climbs():
    space, gain = toy_space()
    looked = []
    accuracy = space.accuracy
    space.accuracy = lambda a: looked.append(a) or accuracy(a)
    best = regularized_evolution(space, 30, seed=1)
    assert len(looked) == 30 and best in looked
    assert accuracy(best) == max(accuracy(a) for a in looked)
    # ageing: each child is one decision away from a member of the population, i.e. of the last 3 looked up
    looked.clear()
    regularized_evolution(space, 200, population=3, sample=3, seed=2)
    one_away = lambda a, b: sum(x != y for x, y in zip(a, b)) == 1
    assert all(any(one_away(c, p) for p in looked[m - 3: m]) for m, c in enumerate(looked) if m >= 3)
    space.accuracy = accuracy
    big, _ = toy_space(layers=6, options=4)  # 4,096 architectures: the best of 60 random ones is in the top ~1%
    found = [big.rank_percentile(regularized_evolution(big, 60, seed=s)) for s in range(10)]
    assert np.median(found) < 0.5  # mutation climbs an additive space


def test_unpickler_refuses_code():
    payload = pickle.dumps(print)
    with pytest.raises(pickle.UnpicklingError, match="refused to load builtins.print"):
        _AllowListUnpickler(io.BytesIO(payload)).load()
    for name in ("eval", "exec", "getattr", "__import__"):
        with pytest.raises(pickle.UnpicklingError, match=f"refused to load builtins.{name}"):
            _AllowListUnpickler(io.BytesIO(pickle.dumps(getattr(builtins, name)))).load()
    ok = pickle.dumps({(0, 1): [1.5, np.float64(2.0)]})
    assert _AllowListUnpickler(io.BytesIO(ok)).load() == {(0, 1): [1.5, 2.0]}


def test_nasbench101_json_loader_and_its_refusals(tmp_path):
    good = {"matrix": [[0, 1, 1], [0, 0, 1], [0, 0, 0]], "ops": ["input", "conv3x3-bn-relu", "output"],
            "test_accuracy": 91.5}
    p = tmp_path / "nb101.json"
    p.write_text(json.dumps([good, good | {"test_accuracy": 90.0}]))
    graphs, acc = load_nasbench101_json(p)
    assert acc.tolist() == [91.5, 90.0] and graphs[0][0].shape == (7, 7) and graphs[0][0].sum() == 3
    cases = {"non-empty JSON list": [],
             "lacks \\['test_accuracy'\\]": [{"matrix": good["matrix"], "ops": good["ops"]}],
             "record 1": [good, good | {"matrix": [[0, 1, 0], [1, 0, 1], [0, 0, 0]]}],
             "record 0": [good | {"ops": ["input", "conv5x5", "output"]}]}
    for words, records in cases.items():
        p.write_text(json.dumps(records))
        with pytest.raises(ValueError, match=words):
            load_nasbench101_json(p)
    with pytest.raises(ValueError, match="2..7 nodes"):  # a chain of 8 nodes: 7 edges, too many nodes
        check_nb101(np.eye(8, k=1).tolist(), ["input"] + ["conv1x1-bn-relu"] * 6 + ["output"])
    with pytest.raises(ValueError, match="ops must be input, then"):
        check_nb101(good["matrix"], ["input", "conv3x3-bn-relu", "maxpool3x3"])  # no output node
    with pytest.raises(ValueError, match="2..7 nodes"):  # an input alone
        check_nb101([[0]], ["input"])
    p.write_text(json.dumps([good | {"valid_accuracy": 88.0}]))
    assert load_nasbench101_json(p, key="valid_accuracy")[1].tolist() == [88.0]
    ops5 = ["input"] + ["conv3x3-bn-relu", "maxpool3x3", "conv1x1-bn-relu"] + ["output"]
    chain = np.eye(5, k=1)
    with pytest.raises(ValueError, match="strictly upper triangular"):
        check_nb101((chain + np.diag([0, 1, 0, 0, 0])).tolist(), ops5)  # a node feeding itself
    A, types = check_nb101(chain.tolist(), ops5)
    assert A[:5, :5].tolist() == chain.tolist() and not A[5:].any() and not A[:, 5:].any()
    assert types.tolist() == [0, 2, 4, 3, 1, 1, 1]  # two padding nodes, typed like the output
    nine = np.triu(np.ones((7, 7)), 1)
    nine[np.triu_indices(7, 3)] = 0  # 11 edges on the two diagonals above the main one ...
    nine[0, 2] = nine[1, 3] = 0  # ... less two: nine, the most NAS-Bench-101 allows
    ops7 = ["input"] + ["conv3x3-bn-relu"] * 5 + ["output"]
    assert check_nb101(nine.tolist(), ops7)[0].sum() == 9
    nine[0, 6] = 1
    with pytest.raises(ValueError, match="10 edges; NAS-Bench-101 allows at most 9"):
        check_nb101(nine.tolist(), ops7)


def test_macro_loader_reads_and_checks_a_small_file(tmp_path):
    p = tmp_path / "macro.json"
    p.write_text(json.dumps({"01201201": {"mean_acc": 91.0}, "22222222": {"mean_acc": 92.5}}))
    s = load_nasbench_macro(p)
    assert len(s) == 2 and s.accuracy((2,) * 8) == 92.5 and s.rank_percentile((2,) * 8) == 50.0
    with pytest.raises(ValueError, match="not in the space"):
        s.accuracy((0,) * 8)
    gz = tmp_path / "macro.json.gz"  # the registry's file is gzipped
    gz.write_bytes(gzip.compress(p.read_bytes()))
    assert load_nasbench_macro(gz).accuracy((0, 1, 2, 0, 1, 2, 0, 1)) == 91.0
    p.write_text(json.dumps({"0120": {"mean_acc": 91.0}}))
    with pytest.raises(ValueError, match="8-character keys"):
        load_nasbench_macro(p)
    with pytest.raises(ValueError, match="0 architectures but 0 accuracies"):
        Space("empty", [], np.array([]), (3,), 3)


def _crafted(nac_hi, pred_hi, nac_lo, ctnas_acc, others_acc):
    "Rank and search results over three seeds, with a little seed noise."
    rank = {"nas-bench-201": {s: {0.01: {"nac": nac_lo + e, "predictor": 0.3 + e},
                                  0.05: {"nac": nac_hi + e, "predictor": pred_hi + e / 2}}
                              for s, e in enumerate((0.0, 0.01, -0.012))}}
    names = ("random search", "predictor's pick", "regularized evolution", "fixed baseline", "random baseline",
             "no exploration")
    # each method its own numbers (the search's accuracy, the final policy's, τ after): the rows must pick the right
    found = {s: {"ctnas": {"acc": ctnas_acc + e, "policy_acc": ctnas_acc - 1 + e, "tau_after": 0.6 + e / 10}}
             | {n: {"acc": others_acc + i / 10, "policy_acc": others_acc - 1 + i / 10,
                    "tau_after": 0.5 if n == "no exploration" else 0.3} for i, n in enumerate(names)}
             for s, e in enumerate((0.0, 0.1, -0.08))}
    return rank, found


def test_labelled_and_held_out_architectures_by_hand():
    from paperbook.ctnas.chapter import labelled

    lab, held = labelled(range(1000), 0.001, min_labels=10, heldout=5, seed=3)  # 0.1% of 1,000 is 1 < 10
    drawn = np.random.default_rng(3).permutation(1000)
    assert lab.tolist() == drawn[:10].tolist() and held.tolist() == drawn[10:15].tolist()
    lab, held = labelled(range(1000), 0.02, min_labels=10, heldout=5, seed=3)
    assert len(lab) == 20 and len(held) == 5 and not set(lab) & set(held)


def test_held_out_architectures_compute_nothing_a_labelled_one_computes():
    from paperbook.ctnas.chapter import labelled

    # a stand-in space of 100 architectures whose function is i mod 10: the 2 labelled ones take 2 residues, and
    # the held-out ones are the next draws with the other 8 residues, in draw order
    space = Space("toy", [(i,) for i in range(100)], np.zeros(100), (100,), 1, None, lambda a: a[0] % 10)
    lab, held = labelled(space, 0.001, min_labels=2, heldout=20, seed=0)
    drawn = np.random.default_rng(0).permutation(100)
    taken = {int(i) % 10 for i in drawn[:2]}
    assert lab.tolist() == drawn[:2].tolist() and len(taken) == 2
    assert held.tolist() == [int(i) for i in drawn[2:] if i % 10 not in taken][:20]
    with pytest.raises(ValueError, match="only 80 architectures compute something no labelled one does; "
                                         "study.heldout asks for 81"):
        labelled(space, 0.001, min_labels=2, heldout=81, seed=0)
    nb201 = load_nasbench201()  # the real space: 156 labelled, no held-out cell shares a function with them
    lab, held = labelled(nb201, 0.01, min_labels=10, heldout=100, seed=1)
    fn = [nb201.function(nb201.archs[i]) for i in range(len(nb201))]
    assert len(lab) == 156 and len(held) == 100 and not {fn[i] for i in lab} & {fn[i] for i in held}


def test_nb201_function_by_hand():
    from paperbook.ctnas.spaces import nb201_function

    # tuple order (c0→c1, c0→c2, c0→c3, c1→c2, c1→c3, c2→c3); operation 1 is none
    assert nb201_function((1,) * 6) == () == nb201_function((3, 3, 1, 3, 1, 1))  # nothing reaches c3
    assert nb201_function((1, 1, 4, 1, 1, 1)) == ((0, 3, 4),)  # one edge c0→c3
    # c0→c1→c3 with a dangling c0→c2 and c1→c2 (c2 feeds nothing): only the path counts
    assert nb201_function((2, 3, 1, 0, 4, 1)) == ((0, 1, 2), (1, 3, 4)) == nb201_function((2, 1, 1, 1, 4, 1))
    # c1 and c2 unjoined: naming them the other way round is the same cell ...
    assert nb201_function((2, 3, 1, 1, 4, 0)) == nb201_function((3, 2, 1, 1, 0, 4))
    # ... but with c1→c2 they are not interchangeable
    assert nb201_function((2, 3, 1, 0, 4, 0)) != nb201_function((3, 2, 1, 0, 0, 4))


def test_missing_spaces_are_left_out_and_a_missing_search_space_refused(monkeypatch):
    import paperbook.ctnas.chapter as chapter

    monkeypatch.setattr(chapter, "load_nasbench_macro", lambda: None)
    assert list(chapter.load_spaces(("nas-bench-201", "nas-bench-macro"))) == ["nas-bench-201"]
    cfg = resolve("ctnas", "cpu-toy", {"search.space": "nas-bench-macro"})
    with pytest.raises(ValueError, match="search.space 'nas-bench-macro' is not available here"):
        chapter.experiment(cfg, None)


def _perfect(space):
    "Stand-ins that read an architecture's accuracy: graphs are accuracies, both models rank them perfectly."
    graphs = lambda sp, archs: (torch.tensor([sp.accuracy(a) for a in archs]), None)
    verdicts = lambda nac, hA, ht: (hA[:, None] > hA[None, :]).float()
    return graphs, verdicts


def test_ranking_study_trains_by_the_budget_and_scores_each_model_in_its_direction(monkeypatch):
    import paperbook.ctnas.chapter as chapter

    space = load_nasbench201()
    cfg = resolve("ctnas", "cpu-toy", {"nac.width": 8, "nac.layers": 1, "study.heldout": 30})
    graphs, verdicts = _perfect(space)
    epochs = []
    monkeypatch.setattr(chapter, "batch_graphs", graphs)
    monkeypatch.setattr(chapter, "nac_matrix", verdicts)
    trained = epochs
    monkeypatch.setattr(chapter, "train_nac", lambda nac, A, t, y, epochs, seed: trained.append(("nac", epochs)))
    monkeypatch.setattr(chapter, "train_predictor", lambda p, A, t, y, epochs, seed: trained.append(("pred", epochs)))
    monkeypatch.setattr(chapter, "Predictor", lambda *a: (lambda hA, ht: hA))  # scores = the true accuracies
    out = chapter.ranking_study(space, cfg, seed=1)
    # 0.1% and 1% of 15,625 architectures: 16 and 156 labels; epochs max(30, 3000 // labels) = 187 and 30
    assert [out[b]["labels"] for b in (0.001, 0.01)] == [16, 156]
    assert epochs == [("nac", 187), ("pred", 187), ("nac", 30), ("pred", 30)]
    assert all(out[b]["nac"] == pytest.approx(1.0) and out[b]["predictor"] == pytest.approx(1.0) for b in out)
    # one draw: the 16 labelled are the first of the 156, and both budgets are scored on the 1% draw's held-out
    drawn = np.random.default_rng(1).permutation(len(space))
    assert out[0.001]["lab"].tolist() == drawn[:16].tolist() and out[0.01]["lab"].tolist() == drawn[:156].tolist()
    held = chapter.labelled(space, 0.01, 10, 30, seed=1)[1]
    assert out[0.001]["held"].tolist() == out[0.01]["held"].tolist() == held.tolist()


def test_search_study_starts_every_variant_from_the_trained_comparator(monkeypatch):
    import paperbook.ctnas.chapter as chapter

    space = load_nasbench201()
    cfg = resolve("ctnas", "cpu-toy", {"nac.width": 8, "nac.layers": 1, "search.steps": 40, "search.batch": 4,
                                       "search.update_every": 10, "search.k": 3, "search.explore_top": 7,
                                       "search.entropy": 0.01, "search.lr": 0.02})
    graphs, _ = _perfect(space)
    torch.manual_seed(0)
    nac = chapter.NAC(space.n_ops + 2, 8, 1)
    lab, held = chapter.labelled(space, 0.01, 10, 30, seed=2)
    ranking = {0.01: {"models": (nac, "pred"), "lab": lab, "held": held}}
    calls, seeds = [], []

    def search(sp, copy, labelled, **kw):
        assert copy is not nac and all(torch.equal(v, nac.state_dict()[k]) for k, v in copy.state_dict().items())
        calls.append(kw)

        def controller(n, gen):
            seeds.append(gen.initial_seed())
            return torch.tensor([space.archs[i] for i in range(n)]), None
        return {"best": space.archs[1], "history": [], "controller": controller}

    monkeypatch.setattr(chapter, "batch_graphs", graphs)
    monkeypatch.setattr(chapter, "search", search)
    # the comparator after the search: the variant's copy ranks perfectly, the trained original backwards
    monkeypatch.setattr(chapter, "nac_matrix", lambda m, hA, ht: (hA[:, None] > hA[None, :]).float()
                        if m is not nac else (hA[:, None] < hA[None, :]).float())
    monkeypatch.setattr(chapter, "predictor_pick", lambda sp, pred: space.archs[5])
    budgets = []
    monkeypatch.setattr(chapter, "regularized_evolution", lambda sp, n, seed: budgets.append((n, seed)) or
                        space.archs[7])
    out = chapter.search_study(space, cfg, ranking, seed=2)
    common = {"steps": 40, "batch": 4, "update_every": 10, "k": 3, "explore_top": 7, "entropy": 0.01, "lr": 0.02,
              "seed": 2}
    assert calls == [common, common | {"baseline": "fixed"}, common | {"baseline": "random"},
                     common | {"explore": False}]
    assert seeds == [2] * 4 and budgets == [(len(lab), 2)]
    assert out["ctnas"]["tau_after"] == pytest.approx(1.0)
    assert out["ctnas"]["policy_acc"] == pytest.approx(float(np.mean([space.accuracy(a) for a in space.archs[:100]])))
    best = space.archs[int(lab[np.argmax(space.acc[lab])])]  # random search: the best of the labelled ones
    assert out["random search"]["arch"] == best and out["predictor's pick"]["arch"] == space.archs[5]
    assert out["regularized evolution"]["acc"] == space.accuracy(space.archs[7])


@pytest.mark.parametrize("study_seeds, ranked_seeds", [(None, [4, 5]), (3, [4, 5, 6])])
def test_experiment_runs_every_seed_from_the_config(monkeypatch, study_seeds, ranked_seeds):
    # the ranking study runs study.seeds seeds (None: seeds), the search the first `seeds` of them, each from the
    # ranking models of its own seed
    import paperbook.ctnas.chapter as chapter

    cfg = resolve("ctnas", "cpu-toy", {"seed": 4, "seeds": 2, "study.seeds": study_seeds,
                                       "study.spaces": ["nas-bench-201"], "workers": 1})
    ranked, searched = [], []
    monkeypatch.setattr(chapter, "ranking_study", lambda sp, cfg, s: ranked.append(s) or {0.01: {"nac": s / 10}})
    monkeypatch.setattr(chapter, "search_study", lambda sp, cfg, r, s: searched.append((s, r[0.01]["nac"])) or {
        "ctnas": {"arch": (1,), "acc": 1.0, "rank": 0.5}})
    monkeypatch.setattr(chapter, "make_claims", lambda rank, found, cfg: [])
    from types import SimpleNamespace

    m = chapter.experiment(cfg, SimpleNamespace(device=torch.device("cpu"))).metrics
    assert ranked == ranked_seeds and searched == [(4, 0.4), (5, 0.5)] and list(m["search"]) == [4, 5]
    assert list(m["tau"]["nas-bench-201"]) == ranked_seeds
    toy = resolve("ctnas", "cpu-toy", {})
    assert (toy.seeds, toy.study.seeds, toy.workers) == (10, None, 2)  # every seed ranks and searches, two at a time


def _small(**over):
    "A small CTNAS config on NAS-Bench-201 alone: a seed takes about a second."
    return resolve("ctnas", "cpu-toy", {"study.spaces": ["nas-bench-201"], "study.heldout": 20, "nac.width": 8,
                                        "nac.layers": 1, "nac.steps_per_budget": 50, "nac.min_epochs": 2,
                                        "search.steps": 20, "search.update_every": 10, "search.ablations": False}
                   | over)


@pytest.mark.parametrize("device", ["cpu", "meta"])  # cpu: forked workers; otherwise (as under a GPU) spawned
def test_seeds_in_worker_processes_give_the_metrics_of_one_process(monkeypatch, device):
    from types import SimpleNamespace

    import paperbook.ctnas.chapter as chapter
    from paperbook.dist import process_map

    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # room for two workers of one thread (a parallel test run sets 1)
    calls = []
    monkeypatch.setattr(chapter, "process_map", lambda *a, **kw: calls.append(kw) or process_map(*a, **kw))
    info = SimpleNamespace(device=torch.device(device))
    alone = chapter.experiment(_small(workers=1, seeds=2, **{"study.seeds": 3}), info)
    side = chapter.experiment(_small(workers=2, seeds=2, **{"study.seeds": 3}), info)
    assert [(kw["workers"], kw["threads_per_worker"], kw["device"]) for kw in calls] == [
        (1, 1, info.device), (2, 1, info.device)]
    assert alone.metrics == side.metrics and list(side.metrics["search"]) == [0, 1]
    assert len({r[0.01]["nac"] for r in side.metrics["tau"]["nas-bench-201"].values()}) == 3  # seeds differ
    for s, per in alone.extras["rank"]["nas-bench-201"].items():  # the trained comparators, to the weight
        for b, x in per.items():
            y = side.extras["rank"]["nas-bench-201"][s][b]
            for m1, m2 in zip(x["models"], y["models"], strict=True):
                assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters(), strict=True))


def test_claims_follow_crafted_results():
    from paperbook.ctnas.chapter import make_claims

    cfg = resolve("ctnas", "cpu-toy", {"study.budgets": [0.01, 0.05], "search.ablations": True})
    rows = make_claims(*_crafted(nac_hi=0.7, pred_hi=0.5, nac_lo=0.4, ctnas_acc=93.0, others_acc=91.0), cfg)
    assert len(rows) == 9 and all(r["holds"] for r in rows), [r["claim"] for r in rows if not r["holds"]]
    assert rows[0]["per_seed"][1]["value"] == {"NAC τ": pytest.approx(0.71), "predictor τ": pytest.approx(0.505)}
    assert rows[1]["per_seed"][0]["value"] == {"τ at 5.0%": 0.7, "τ at 1.0%": 0.4}
    seed0 = [r["per_seed"][0]["value"] for r in rows[2:]]
    assert [round(v, 2) for r in seed0 for v in r.values()] == [93, 91, 93, 91.1, 93, 91.2,  # search accuracy
                                                                 92, 90.3, 92, 90.4, 92, 90.5,  # final policy
                                                                 0.6, 0.5]  # τ after, against no exploration
    # the predictor ranks better, more labels do not help, the searches tie or win: every row fails but the
    # τ-after-exploration mechanism (left at 0.6 vs 0.5)
    rows = make_claims(*_crafted(nac_hi=0.5, pred_hi=0.7, nac_lo=0.5, ctnas_acc=91.0, others_acc=91.5), cfg)
    assert [r["holds"] for r in rows] == [False] * 8 + [True]
    assert len(make_claims(*_crafted(0.7, 0.5, 0.4, 93.0, 91.0), resolve("ctnas", "cpu-toy", {
        "study.budgets": [0.01, 0.05], "search.ablations": False}))) == 5  # no ablation run, no ablation rows


@pytest.mark.parametrize("overrides, words", [
    ({"study.spaces": ["nas-bench-101"]}, "unknown space"),
    ({"search.budget": 0.05}, "must be one of study.budgets"),
    ({"seeds": 1}, "seeds must be >= 2"),
    ({"seeds": 11, "study.seeds": 10}, r"study.seeds \(10\) must be >= seeds \(11\)"),
    ({"workers": 0}, "workers must be >= 1, got 0"),
    ({"study.seeds": 1}, "'study.seeds' expects int that must be >= 2 or None, got 1"),
    ({"study.budgets": [0.01]}, "at least two shares"),
    ({"study.budgets": [0.01, 1]}, r"study.budgets\[1\] must lie in \(0, 1\), got 1"),
    ({"study.heldout": 1}, "study.heldout must be >= 2, got 1"),
    ({"nac.width": 0}, "nac.width must be >= 1, got 0"),
    ({"search.update_every": 0}, "search.update_every must be >= 1, got 0"),
    ({"search.explore_top": 0}, "search.explore_top must be >= 1, got 0"),
    ({"search.k": 1}, "search.k must be >= 2, got 1"),
    ({"search.update_every": 300}, r"update_every \(300\) must be <= search.steps \(200\)"),
    ({"search.lr": 0.0}, "search.lr must be > 0, got 0.0"),
])
def test_config_errors(overrides, words):
    with pytest.raises(ValueError, match=words):
        resolve("ctnas", "cpu-toy", overrides)


def test_the_chapter_runs_small(tmp_path):
    from paperbook.ctnas.chapter import CHAPTER

    sets = [a for k, v in CHAPTER.smoke.items() for a in ("--set", f"{k}={v}")]
    r = cli("run", "ctnas", *sets, "--set", "study.spaces=[\"nas-bench-201\"]", "--out", tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads((tmp_path / "metrics.json").read_text())
    assert len(rec["reproduction"]) == 5  # two ranking rows, three search rows (ablations off)
    assert rec["data"]["nas-bench-201"]["source"] == "package"
    assert set(rec["metrics"]["search"]["0"]) == {"ctnas", "random search", "predictor's pick",
                                                  "regularized evolution"}
