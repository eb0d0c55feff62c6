"""Chapter 9 (ACTION-NET): scores reader, feature generator, model parts, ensemble training, the chapter."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from paperbook.action_net.data import Routines, crop, generate_features, load_features, read_scores
from paperbook.action_net.model import (ActionNet, Ensemble, Stream, fisher_mean, predict, spearman,
                                        temporal_graph, train_ensemble)
from paperbook.core import resolve

from helpers import cli, one_and_two_processes

HEADER = "Video_Name\tDifficulty_Score    Execution_Score Total_Score\tPenalty\tVideo_length\n"


def _routines(D, E, P=None):
    n = len(D)
    P = np.zeros(n) if P is None else np.asarray(P, float)
    D, E = np.asarray(D, float), np.asarray(E, float)
    return Routines(tuple(f"Ball_{i}" for i in range(n)), np.array(["Ball"] * n), D, E, P, D + E - P,
                    np.full(n, 90.0))


def test_scores_reader_and_its_refusals(tmp_path):
    rows = "Ball_001\t10.50\t8.30\t18.80\t0.00\t92\nHoop_002\t7.2\t4.2\t10.8\t0.6\t93\n"
    (tmp_path / "ok.txt").write_text(HEADER + rows)
    r = read_scores(tmp_path / "ok.txt")
    assert r.names == ("Ball_001", "Hoop_002") and r.total.tolist() == [18.8, 10.8] and len(r.of("Hoop")) == 1
    (tmp_path / "sum.txt").write_text(HEADER + "Ball_001\t10.50\t8.30\t19.80\t0.00\t92\n")
    with pytest.raises(ValueError, match="total != difficulty .* Ball_001"):
        read_scores(tmp_path / "sum.txt")
    (tmp_path / "cols.txt").write_text("Video_Name Difficulty_Score Total_Score\nBall_1 1 1\n")
    with pytest.raises(ValueError, match="missing column"):
        read_scores(tmp_path / "cols.txt")
    (tmp_path / "app.txt").write_text(HEADER + "Rope_001\t1\t1\t2\t0\t90\n")
    with pytest.raises(ValueError, match="unknown apparatus \\['Rope'\\]"):
        read_scores(tmp_path / "app.txt")
    with pytest.raises(ValueError, match="unknown apparatus 'Rope'"):
        r.of("Rope")
    hoop = r.of("Hoop")  # every array of the routine, penalty included
    assert (hoop.names, hoop.D.tolist(), hoop.E.tolist(), hoop.P.tolist(), hoop.length.tolist()) == (
        ("Hoop_002",), [7.2], [4.2], [0.6], [93.0])
    (tmp_path / "blank.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match="blank.txt: empty"):
        read_scores(tmp_path / "blank.txt")
    (tmp_path / "short.txt").write_text(HEADER + rows + "Ball_003\t1\t1\n")
    with pytest.raises(ValueError, match=r"line\(s\) \[4\] do not have 6 fields"):  # the header is line 1
        read_scores(tmp_path / "short.txt")


def test_generated_elements_are_adjacent_pairs_and_the_mean_hides_them():
    r = _routines([2.4, 9.6], [8.0, 8.0])
    f = generate_features(r, noise=0.0, offset=0.0, seed=0)
    assert [len(e) for e in f.elements] == [2, 8]
    pat = np.random.default_rng(12345)
    a, b = pat.normal(size=(2, 4, 32)) / np.sqrt(32) * 6.0
    for i in range(2):
        sa, sb = f.dynamic[i] @ a.T, f.dynamic[i] @ b.T  # (clips, 4) projections on the halves
        pairs = sum(int(np.any((sa[t] > 20) & (sb[t + 1] > 20))) for t in range(f.dynamic.shape[1] - 1))
        assert pairs >= len(f.elements[i])  # every element is an a-half followed by its b-half
    # the same number of halves in every routine: the mean over clips does not grow with difficulty
    halves = lambda i: (np.abs(f.dynamic[i] @ np.concatenate([a, b]).T) > 20).any(1).sum()
    assert halves(0) == halves(1) == 16
    # execution errors: one per half point below 10 (8.0: four), in distinct frames
    assert [len(e) for e in f.errors] == [4, 4] and all(len(set(e)) == len(e) for e in f.errors)
    assert [len(e) for e in generate_features(_routines([2.4, 2.4], [10.0, 7.5]), seed=0).errors] == [0, 5]
    # at most half the frames carry an error: E = 0 would be 20 errors, capped at 36 // 2 = 18
    assert [len(e) for e in generate_features(_routines([2.4], [0.0]), seed=0).errors] == [18]


def test_random_crops_are_each_routines_own_window():
    x = np.random.default_rng(1).random((7, 18, 5))
    starts = np.random.default_rng(2).integers(0, 18 - 12 + 1, size=7)  # the draws crop makes with that rng
    out = crop(x, 12, np.random.default_rng(2))
    assert out.shape == (7, 12, 5)
    for i, s in enumerate(starts):
        assert np.array_equal(out[i], x[i, s:s + 12])


def test_crop_and_temporal_graph_by_hand():
    x = np.arange(10).reshape(1, 10, 1).astype(float)
    assert crop(x, 4)[0, :, 0].tolist() == [3, 4, 5, 6]
    with pytest.raises(ValueError, match="crop of 12"):
        crop(x, 12)
    with pytest.raises(ValueError, match="crop of 11 steps from sequences of 10"):  # one step too many
        crop(x, 11)
    A = temporal_graph(2)  # A = [[1, e^-1], [e^-1, 1]], degrees 1 + e^-1 on both rows
    e = math.exp(-1)
    assert torch.allclose(A, torch.tensor([[1, e], [e, 1]]) / (1 + e))


def test_ablations_do_what_they_say():
    torch.manual_seed(0)
    v = torch.randn(2, 6, 8)
    _, a = Stream(8, 6, 4, attention=False)(v)
    assert torch.allclose(a, torch.full((2, 6), 1 / 6))
    s = Stream(8, 6, 4, graph=False)
    f, _ = s(v)
    assert torch.equal(f[:, 4:], torch.zeros(2, 4))  # h = [x; 0]: the context half of the feature is zero
    # with attention: a_t = exp(s_t) / Σ_τ exp(s_τ) over the clips of each video, and the feature is Σ_t a_t h_t
    f, a = s(v)
    h = torch.cat([s.embed(v), torch.zeros(2, 6, 4)], -1)
    e = s.score(h).squeeze(-1).exp()
    assert torch.allclose(a, e / e.sum(1, keepdim=True), atol=1e-6) and torch.allclose(a.sum(1), torch.ones(2))
    assert torch.allclose(f, (a.unsqueeze(-1) * h).sum(1), atol=1e-6)
    with pytest.raises(ValueError, match="streams"):
        ActionNet(8, 8, 6, 6, streams=("audio",))
    # the graph context, two graph convolutions over the clips: c = ReLU(W2 Â ReLU(W1 Â x)), h = [x; c]
    g = Stream(8, 6, 4)
    x = g.embed(v)
    A = temporal_graph(6)
    c = torch.relu(g.W2(A @ torch.relu(g.W1(A @ x))))
    f, a = g(v)
    assert torch.allclose(f, (a.unsqueeze(-1) * torch.cat([x, c], -1)).sum(1), atol=1e-6)


def test_scores_lie_in_0_to_25_and_mean_pooling_ignores_the_order():
    torch.manual_seed(0)
    net = ActionNet(8, 8, 6, 6, 4, dropout=0.0).eval()
    d, s = torch.randn(3, 6, 8) * 100, torch.randn(3, 6, 8) * 100
    with torch.no_grad():
        net.reg[-1].bias.fill_(50.0)
        high = net(d, s)
        net.reg[-1].bias.fill_(-50.0)
        low = net(d, s)
    assert (high > 24.9).all() and (high <= 25).all() and (low >= 0).all() and (low < 0.1).all()  # 25·sigmoid
    mean = ActionNet(8, 8, 6, 6, pooling="mean", dropout=0.0).eval()
    perm = torch.randperm(6)
    assert torch.allclose(mean(d, s), mean(d[:, perm], s[:, perm]), atol=1e-5)


def test_ensemble_copies_are_independent():
    torch.manual_seed(0)
    copies = [ActionNet(8, 8, 6, 6, 4, dropout=0.0) for _ in range(3)]
    ens = Ensemble(copies)
    d, s = torch.randn(3, 2, 6, 8), torch.randn(3, 2, 6, 8)
    out = ens(d, s)
    assert torch.allclose(out, torch.stack([copies[i](d[i], s[i]) for i in range(3)]), atol=1e-5)
    member = ens.member(2)(d[2], s[2])  # copy 2 as an ordinary module
    assert torch.allclose(member, copies[2].eval()(d[2], s[2]), atol=1e-5)
    out[0].sum().backward()  # a loss of copy 0 only
    assert all(p.grad[1:].abs().max() == 0 for p in ens.parameters() if p.grad is not None)
    assert any(p.grad[0].abs().max() > 0 for p in ens.parameters() if p.grad is not None)


def test_training_fits_the_training_routines():
    rng = np.random.default_rng(1)
    r = _routines(rng.uniform(3, 12, 64).round(1), rng.uniform(4, 9, 64).round(2))
    f = generate_features(r, seed=0)
    torch.manual_seed(0)
    ens = Ensemble([ActionNet(32, 32, 16, 32, 16)])
    losses = train_ensemble(ens, [(f.dynamic, f.static, f.y)], epochs=25, batch=16, lr=3e-3, clips=16, frames=32,
                            optimizer="adam")
    assert losses[-1] < 0.5 * losses[0]
    with pytest.raises(ValueError, match="optimizer"):
        train_ensemble(ens, [(f.dynamic, f.static, f.y)], epochs=1, batch=16, lr=1e-3, clips=16, frames=32,
                       optimizer="lbfgs")


def test_sgd_settings_loss_scale_and_centre_windows(monkeypatch):
    rng = np.random.default_rng(1)
    r = _routines(rng.uniform(3, 12, 8).round(1), rng.uniform(4, 9, 8).round(2))
    f = generate_features(r, clips=16, frames=32, seed=0)
    torch.manual_seed(0)
    ens = Ensemble([ActionNet(32, 32, 16, 32, 16, dropout=0.0)])
    made, real = [], torch.optim.SGD
    monkeypatch.setattr(torch.optim, "SGD", lambda groups, **kw: made.append(real(groups, **kw)) or made[-1])
    with torch.no_grad():  # the score before any step: windows as long as the sequences, so no crop choice
        want = (((ens(torch.as_tensor(f.dynamic)[None], torch.as_tensor(f.static)[None]) - torch.as_tensor(f.y))
                 / 25) ** 2).mean().item()
    losses = train_ensemble(ens, [(f.dynamic, f.static, f.y)], epochs=4, batch=8, lr=1e-3, clips=16, frames=32)
    assert losses[0] == pytest.approx(want, rel=1e-5)  # MSE of score / 25, one batch of all eight
    opt = made[0]  # the paper's SGD: momentum 0.9, weight decay 1e-4, the regressor at 5 × lr; ÷10 at 50%, 75%
    assert [g["initial_lr"] for g in opt.param_groups] == [1e-3, 5e-3]
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-5, 5e-5])
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["weight_decay"] == 1e-4
    long = [(np.tile(f.dynamic, (1, 2, 1)), f.static, f.y)]  # 32 clips: predict takes the centre 16 (8 .. 23)
    got = predict(ens, long, clips=16, frames=32)
    with torch.no_grad():
        centre = ens.member(0)(torch.as_tensor(long[0][0][:, 8:24]), torch.as_tensor(f.static))
    assert np.allclose(got[0], centre.numpy(), atol=1e-5)


def test_model_details_found_by_mutation(monkeypatch):
    import torch.nn.functional as F

    torch.manual_seed(0)
    st = Stream(8, 5, hidden=6, graph=False, attention=False)  # no context, even weights: the mean of [x, 0]
    v = torch.randn(2, 5, 8)
    lin1, lin2 = st.embed[0], st.embed[2]
    x = F.relu(F.relu(v @ lin1.weight.T + lin1.bias) @ lin2.weight.T + lin2.bias)
    assert torch.allclose(st(v)[0], torch.cat([x, torch.zeros_like(x)], -1).mean(1), atol=1e-6)
    for kw, words in [({"streams": ()}, "non-empty subset"), ({"pooling": "max"}, "'attention' or 'mean'")]:
        with pytest.raises(ValueError, match=words):
            ActionNet(4, 3, 5, 6, 8, **kw)
    # mean pooling: the sequences' means straight into the regressor, by hand; one stream alone has its own width
    net = ActionNet(4, 3, 5, 6, 8, pooling="mean", dropout=0.0).eval()
    dyn, sta = torch.randn(2, 5, 4), torch.randn(2, 6, 3)
    want = torch.sigmoid(net.reg(torch.cat([dyn.mean(1), sta.mean(1)], -1))).squeeze(-1) * 25
    assert torch.allclose(net(dyn, sta), want)
    assert ActionNet(4, 3, 5, 6, 8, pooling="mean", streams=("static",))(dyn, sta).shape == (2,)
    # dropout in training: two calls differ; and each copy of an ensemble draws its own masks
    drop = ActionNet(4, 3, 5, 6, 8, dropout=0.5).train()
    assert not torch.equal(drop(dyn, sta), drop(dyn, sta))
    ens = Ensemble([drop, drop])
    out = ens(torch.stack([dyn, dyn]), torch.stack([sta, sta]))
    assert not torch.equal(out[0], out[1])  # the same weights and inputs, other masks
    assert ens.member(0).training is False
    rng = np.random.default_rng(1)
    f = generate_features(_routines(rng.uniform(3, 12, 8).round(1), rng.uniform(4, 9, 8).round(2)), clips=16,
                          frames=32, seed=0)
    one = (f.dynamic, f.static, f.y)
    with pytest.raises(ValueError, match="need 2 training sets of equal size"):
        train_ensemble(ens, [one], epochs=1, batch=8, lr=0.0, clips=16, frames=32)
    made, real = [], torch.optim.Adam
    monkeypatch.setattr(torch.optim, "Adam", lambda groups, **kw: made.append(real(groups, **kw)) or made[-1])
    torch.manual_seed(0)
    quiet = Ensemble([ActionNet(32, 32, 16, 32, 16, dropout=0.0) for _ in range(2)])
    with torch.no_grad():  # one batch of all eight, scored before the step: the copies' mean MSE of score / 25
        pred = quiet(torch.as_tensor(np.stack([f.dynamic] * 2)), torch.as_tensor(np.stack([f.static] * 2)))
        want = (((pred - torch.as_tensor(f.y)) / 25) ** 2).mean().item()
    losses = train_ensemble(quiet, [one, one], epochs=1, batch=8, lr=1e-3, clips=16, frames=32, optimizer="adam")
    assert losses[0] == pytest.approx(want, rel=1e-5)
    assert [g["initial_lr"] for g in made[0].param_groups] == [1e-3, 1e-3]  # ours: one rate for all under Adam
    trained = []
    for seed in (0, 1):  # windows as long as the sequences: only the batches' order differs between the seeds
        torch.manual_seed(0)
        e = Ensemble([ActionNet(32, 32, 16, 32, 16, dropout=0.0)])
        train_ensemble(e, [one], epochs=1, batch=4, lr=1e-2, clips=16, frames=32, optimizer="adam", seed=seed)
        trained.append(predict(e, [one], clips=16, frames=32))
    assert not np.allclose(*trained)
    zeros = [(np.zeros((2, 5, 4), np.float32), np.zeros((2, 6, 3), np.float32), np.zeros(2))]
    e = Ensemble([drop]).train()
    assert np.array_equal(predict(e, zeros, clips=5, frames=6), predict(e, zeros, clips=5, frames=6))  # no dropout


def test_spearman_and_fisher_by_hand():
    assert spearman(np.array([1.0, 2, 3, 4]), np.array([10.0, 30, 20, 40])) == pytest.approx(0.8)
    assert fisher_mean([0.2, 0.6]) == pytest.approx(math.tanh((math.atanh(0.2) + math.atanh(0.6)) / 2))
    assert fisher_mean([1.0, -1.0]) == 0.0 and 0.99 < fisher_mean([1.0, 0.5]) < 1.0  # ±1 clipped: finite z


def test_feature_loader_round_trip_and_errors(tmp_path):
    r = _routines([5.0, 6.0], [7.0, 8.0])
    for sub, t, d in (("dynamic", 20, 4), ("static", 40, 3)):
        (tmp_path / sub).mkdir()
        for i, name in enumerate(r.names):
            np.save(tmp_path / sub / f"{name}.npy", np.full((t, d), i, np.float32))
    f = load_features(r, tmp_path, clips=18, frames=36)
    assert f.dynamic.shape == (2, 18, 4) and f.static.shape == (2, 36, 3) and f.static[1].max() == 1
    np.save(tmp_path / "dynamic" / "Ball_0.npy", np.arange(20 * 4, dtype=np.float32).reshape(20, 4))
    assert np.array_equal(load_features(r, tmp_path, clips=18, frames=36).dynamic[0],
                          np.arange(18 * 4).reshape(18, 4))  # the first 18 steps
    with pytest.raises(ValueError, match="expected \\(50 or more steps"):
        load_features(r, tmp_path, clips=50, frames=36)
    np.save(tmp_path / "static" / "Ball_1.npy", np.zeros((40, 5), np.float32))
    with pytest.raises(ValueError, match="width 5 differs"):
        load_features(r, tmp_path, clips=18, frames=36)
    np.save(tmp_path / "static" / "Ball_1.npy", np.zeros((40, 3, 1), np.float32))  # enough steps, but 3-D
    with pytest.raises(ValueError, match=r"expected \(36 or more steps, dim\), got \(40, 3, 1\)"):
        load_features(r, tmp_path, clips=18, frames=36)
    np.save(tmp_path / "static" / "Ball_1.npy", np.array([{"a": 1}] * 40, dtype=object))  # a pickle inside
    with pytest.raises(ValueError, match="allow_pickle"):
        load_features(r, tmp_path, clips=18, frames=36)
    (tmp_path / "dynamic" / "Ball_0.npy").unlink()
    with pytest.raises(FileNotFoundError, match="no dynamic features for Ball_0"):
        load_features(r, tmp_path, clips=18, frames=36)


def test_elements_are_scaled_to_the_difficulty_and_penalties_mark_frames():
    # without noise or offsets the features hold the planted patterns alone
    quiet = dict(noise=0.0, offset=0.0, seed=3)
    f24, f30 = (generate_features(_routines([d], [10.0]), **quiet) for d in (2.4, 3.0))  # k = 2 elements each
    assert f24.elements == f30.elements and len(f24.elements[0]) == 2
    at = [c for t in f24.elements[0] for c in (t, t + 1)]
    np.testing.assert_allclose(f30.dynamic[0, at], 1.25 * f24.dynamic[0, at], rtol=1e-6)  # 3.0 / (2 · 1.2)
    rest = np.setdiff1d(np.arange(18), at)
    np.testing.assert_array_equal(f30.dynamic[0, rest], f24.dynamic[0, rest])  # unpaired halves: not scaled
    pen = generate_features(_routines([2.4], [10.0], [0.6]), **quiet).static[0]  # E = 10: no execution error
    marked = np.flatnonzero(np.abs(pen).sum(1) > 0)
    assert len(marked) == 2 and np.array_equal(pen[marked[0]], pen[marked[1]])  # 0.6 / 0.3 frames, one pattern
    assert not generate_features(_routines([2.4], [10.0]), **quiet).static.any()


def test_claims_follow_crafted_correlations():
    from paperbook.action_net.chapter import make_claims

    cfg = resolve("action-net", "cpu-toy")
    apparatus = ("Ball", "Clubs", "Hoop", "Ribbon")
    others = ("mean pooling", "dynamic stream only", "static stream only", "no graph", "no attention")

    def results(full):  # ρ per apparatus and seed; each ablation its own level, the same on every apparatus
        out = {"full": {"rho": {a: {s: full + e for s, e in enumerate((0.0, 0.02, -0.01))} for a in apparatus}}}
        return out | {o: {"rho": {a: {s: 0.40 + i / 100 for s in range(3)} for a in apparatus}}
                      for i, o in enumerate(others)}

    rows = make_claims(results(0.6), {a: 0.2 for a in apparatus}, cfg)
    assert [list(r["per_seed"][0]["value"]) for r in rows] == [
        ["full ρ", "mean pooling ρ"], ["full ρ", "length ρ"], ["full ρ", "dynamic stream only ρ"],
        ["full ρ", "static stream only ρ"], ["full ρ", "no graph ρ"], ["full ρ", "no attention ρ"]]
    # the Fisher-z mean of four equal ρ is that ρ: seed 1's pairs by hand
    assert [list(r["per_seed"][1]["value"].values()) for r in rows] == [
        pytest.approx([0.62, b]) for b in (0.40, 0.2, 0.41, 0.42, 0.43, 0.44)]
    assert all(r["holds"] for r in rows)
    rows = make_claims(results(0.38), {a: 0.5 for a in apparatus}, cfg)  # below every ablation and the length
    assert not any(r["holds"] for r in rows)
    # uneven ρ are averaged in Fisher's z: tanh((atanh 0.9 + atanh 0.1) / 2) = 0.6562 (the arithmetic mean is 0.5)
    from paperbook.action_net.chapter import fisher_by_seed

    assert fisher_by_seed({"Ball": {0: 0.9}, "Clubs": {0: 0.1}}) == {0: pytest.approx(0.6562, abs=1e-4)}
    uneven = {"Ball": 0.9, "Clubs": 0.1, "Hoop": 0.9, "Ribbon": 0.1}
    assert make_claims(results(0.6), uneven, cfg)[1]["per_seed"][0]["value"]["length ρ"] == pytest.approx(0.6562,
                                                                                                         abs=1e-4)
    fewer = {k: v for k, v in results(0.6).items() if k != "no graph"}
    assert len(make_claims(fewer, {a: 0.2 for a in apparatus}, cfg)) == 5  # a variant not run has no row


def test_stand_in_scores_replace_missing_data(monkeypatch):
    import paperbook.action_net.chapter as chapter

    r = chapter.stand_in_scores(5, seed=3)
    assert len(r) == 20 and [int((r.apparatus == a).sum()) for a in ("Ball", "Clubs", "Hoop", "Ribbon")] == [5] * 4
    assert np.allclose(r.total, r.D + r.E - r.P) and set(r.P) <= {0.0, 0.3, 0.6}
    assert r.D.min() >= 2 and r.D.max() <= 14 and r.E.min() >= 3 and r.E.max() <= 9.5
    monkeypatch.setattr(chapter, "load_scores", lambda: None)  # a machine without the data set
    cfg = resolve("action-net", "cpu-toy", {"seed": 4})
    train, test, used = chapter.get_scores(cfg)
    assert np.array_equal(train.total, chapter.stand_in_scores(200, 4).total)
    assert np.array_equal(test.total, chapter.stand_in_scores(50, 5).total)  # the next seed: not the training set
    assert used["source"] == "generated"


SMALL_FEATURES = {"features.clips": 8, "features.frames": 10, "features.d_dyn": 4, "features.d_sta": 3,
                  "features.halves": 3, "features.point": 0.9, "features.noise": 0.3, "features.offset": 0.1,
                  "features.strength": 4.0, "train.crop_clips": 6, "train.crop_frames": 8, "train.hidden": 8}


def test_features_follow_the_config_and_differ_by_part_apparatus_and_seed(tmp_path):
    from paperbook.action_net.chapter import all_features, features_for, stand_in_scores

    cfg = resolve("action-net", "cpu-toy", {**SMALL_FEATURES, "seed": 2, "train.seeds": 2,
                                            "train.apparatus": "Ball,Hoop"})
    train_r, test_r = stand_in_scores(6, 0), stand_in_scores(4, 1)
    feats = all_features(cfg, train_r, test_r)
    assert set(feats) == {(a, s, p) for a in ("Ball", "Hoop") for s in (2, 3) for p in ("train", "test")}
    # (Hoop, seed 3, test): generated with seed 1000 · 3 + 10 · index of Hoop (2) + 1 and the config's values
    want = generate_features(test_r.of("Hoop"), clips=8, frames=10, d_dyn=4, d_sta=3, halves=3, point=0.9,
                             noise=0.3, offset=0.1, strength=4.0, seed=3021)
    got = feats[("Hoop", 3, "test")]
    assert np.array_equal(got.dynamic, want.dynamic) and np.array_equal(got.static, want.static)
    assert np.allclose(got.y, test_r.of("Hoop").total)  # float32 scores
    r = _routines([5.0, 6.0], [7.0, 8.0])
    for sub, t in (("dynamic", 12), ("static", 14)):
        (tmp_path / sub).mkdir()
        for name in r.names:
            np.save(tmp_path / sub / f"{name}.npy", np.zeros((t, 2), np.float32))
    folder = resolve("action-net", "cpu-toy", {**SMALL_FEATURES, "features.source": "folder",
                                               "features.folder": str(tmp_path)})
    f = features_for(r, folder, seed=0)
    assert f.dynamic.shape == (2, 8, 2) and f.static.shape == (2, 10, 2)  # clips and frames from the config


def test_run_variant_seeds_each_member_trains_as_configured_and_scores_its_test_routines(monkeypatch):
    from types import SimpleNamespace

    import paperbook.action_net.chapter as chapter

    cfg = resolve("action-net", "cpu-toy", {**SMALL_FEATURES, "seed": 2, "train.seeds": 2, "train.epochs": 3,
                                            "train.apparatus": "Ball,Hoop", "train.milestones": "0.3,0.6"})
    feats = chapter.all_features(cfg, chapter.stand_in_scores(6, 0), chapter.stand_in_scores(5, 1))
    seen = {}

    def train(ens, data, **kw):  # no training: the members keep their initial weights
        seen["train"], seen["kw"] = data, kw
        return [3.0, 2.0, 1.0]

    def predict(ens, data, **kw):  # member m answers its test scores, negated for odd m: ρ = +1, -1, +1, -1
        seen["test"] = data
        return np.stack([y * (1 if m % 2 == 0 else -1) for m, (_, _, y) in enumerate(data)])

    monkeypatch.setattr(chapter, "train_ensemble", train)
    monkeypatch.setattr(chapter, "predict", predict)
    out = chapter.run_variant("static stream only", cfg, feats, SimpleNamespace(device=torch.device("cpu")))
    assert out["members"] == [("Ball", 2), ("Ball", 3), ("Hoop", 2), ("Hoop", 3)]
    assert out["rho"] == {"Ball": {2: pytest.approx(1.0), 3: pytest.approx(-1.0)},
                          "Hoop": {2: pytest.approx(1.0), 3: pytest.approx(-1.0)}}
    assert [y for _, _, y in seen["test"]] == [feats[m + ("test",)].y for m in out["members"]]
    assert all(np.array_equal(d[0], feats[m + ("train",)].dynamic) for d, m in zip(seen["train"], out["members"]))
    assert seen["kw"] | {"info": None} == {"epochs": 3, "batch": 32, "lr": 1e-3, "clips": 6, "frames": 8,
                                           "milestones": (0.3, 0.6), "optimizer": "adam", "seed": 2, "info": None,
                                           "desc": "static stream only"}
    torch.manual_seed(1000 * 3 + 2)  # member 3, (Hoop, seed 3): Hoop is apparatus 2
    ref = chapter.ActionNet(4, 3, 6, 8, 8, streams=("static",))
    mine = out["ensemble"].member(3).state_dict()  # the variant's layers (one stream) and that seed's weights
    assert mine.keys() == ref.state_dict().keys() and all(torch.equal(mine[k], v) for k, v in ref.state_dict().items())


def test_length_baseline_and_the_record_by_hand(monkeypatch):
    from types import SimpleNamespace

    import paperbook.action_net.chapter as chapter

    n = 5
    names = tuple(f"r{i}" for i in range(2 * n))
    app = np.array(["Ball"] * n + ["Hoop"] * n)
    total = np.array([1, 2, 3, 4, 5, 1, 2, 3, 4, 5], float)
    D = np.array([5, 4, 3, 2, 1, 1, 2, 3, 4, 5], float)  # unlike the totals on Ball
    length = np.array([10, 20, 30, 40, 50, 50, 40, 30, 20, 10], float)  # with the totals on Ball, against on Hoop
    r = Routines(names, app, D, total - D, np.zeros(2 * n), total, length)
    assert chapter.length_baseline(r, ("Ball", "Hoop")) == {"Ball": pytest.approx(1.0), "Hoop": pytest.approx(-1.0)}
    monkeypatch.setattr(chapter, "load_scores", lambda: None)
    monkeypatch.setattr(chapter, "run_variant", lambda v, cfg, feats, info: {
        "rho": {"Ball": {0: 0.5}}, "curve": [3.0, 2.0, 1.0], "ensemble": None, "members": [("Ball", 0)]})
    cfg = resolve("action-net", "cpu-toy", {**SMALL_FEATURES, "train.seeds": 1, "train.apparatus": "Ball",
                                            "train.variants": "full,mean pooling"})
    m = chapter.experiment(cfg, SimpleNamespace(device=torch.device("cpu"))).metrics
    assert m["final_loss"] == {"full": 1.0, "mean pooling": 1.0} and m["fisher"]["full"] == {0: pytest.approx(0.5)}


@pytest.mark.parametrize("overrides, words", [
    ({"train.apparatus": "Ball,Rope"}, "unknown apparatus \\['Rope'\\]"),
    ({"train.variants": "mean pooling"}, "must include 'full'"),
    ({"train.crop_clips": 30}, "crops \\(30, 32\\) longer than the sequences"),
    ({"features.source": "folder"}, "needs features.folder"),
    ({"train.optimizer": "rmsprop"}, "train.optimizer must be"),
    ({"features.halves": 20}, "at most clips // 2"),
    ({"features.halves": 10}, "halves \\(10\\) must be at most clips // 2 \\(9\\)"),
    ({"train.crop_frames": 40}, "crops \\(16, 40\\) longer than the sequences \\(18, 36\\)"),
    ({"nproc_per_node": 3}, "train.batch 32 is not divisible by the 3 processes"),
])
def test_bad_config_fails_before_any_work(overrides, words):
    with pytest.raises(ValueError, match=words):
        resolve("action-net", "cpu-toy", overrides)


@pytest.mark.dist
def test_ddp_two_processes_equal_one(tmp_path):
    one, two = one_and_two_processes(Path(__file__).parent / "dist_scripts" / "action_net_ddp.py", tmp_path)
    assert len(one["losses"]) == len(two["losses"]) == 2
    assert np.allclose(one["losses"], two["losses"], rtol=1e-4)
    assert np.allclose(one["params"], two["params"], atol=1e-5)


def test_the_chapter_runs_small(tmp_path):
    r = cli("run", "action-net", "--set", "train.seeds=2", "--set", "train.epochs=2",
            "--set", "train.variants=full,mean pooling", "--set", "train.apparatus=Ball,Hoop", "--out", tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads((tmp_path / "metrics.json").read_text())
    rho = rec["metrics"]["rho"]
    assert set(rho) == {"full", "mean pooling"} and set(rho["full"]) == {"Ball", "Hoop"}
    paired = [row for row in rec["reproduction"] if "difference" in row]
    assert len(paired) == 2 and all(row["k_of_n"].endswith("/2") for row in paired)
