"""IWLS 2020 chapter: PLA I/O, AIG construction, AIGER round trips, simulation, ABC, learners, CLI."""

import gzip
import subprocess
import sys

import numpy as np
import pytest

from paperbook.iwls.aig import (
    AIG, abc_check, abc_command, abc_optimize, accuracy, from_aiger, pack, read_aiger, simulate, to_aiger,
    write_aiger,
)
from paperbook.iwls.data import (
    PLA, benchmark_names, contest_function, family, format_pla, generate, load_benchmark, parse_pla, read_pla,
    write_pla,
)
from paperbook.iwls.learn import (
    fringe_features, learn_espresso, learn_forest, learn_fringe, learn_lut, learn_support, learn_tree, small_support,
)
from paperbook.iwls.select import (
    CV, choose, constant_cv, cross_validate, deliver, fit_candidate, fold_indices, join, portfolio_cv,
)

from helpers import ENV

needs_abc = pytest.mark.skipif(abc_command() is None, reason="ABC (Debian berkeley-abc) is not installed")
needs_data = pytest.mark.skipif(not benchmark_names(), reason="the IWLS 2020 benchmark (PAPERBOOK_DATA) is absent")


def all_minterms(n):
    return np.array([[(m >> i) & 1 for i in range(n)] for m in range(2**n)], dtype=np.uint8)


# ---- PLA ----------------------------------------------------------------------------------------
def test_pla_round_trip_plain_and_gzip(tmp_path):
    rng = np.random.default_rng(1)
    pla = PLA(rng.integers(0, 2, (40, 9), dtype=np.uint8), rng.integers(0, 2, (40, 1), dtype=np.uint8))
    for name in ("a.pla", "a.pla.gz"):
        back = read_pla(write_pla(pla, tmp_path / name))
        assert (back.X == pla.X).all() and (back.Y == pla.Y).all() and back.type == "fr"
    assert gzip.decompress((tmp_path / "a.pla.gz").read_bytes()).startswith(b".i 9\n.o 1\n.p 40\n.type fr")


def test_pla_dont_cares_and_missing_end():
    pla = parse_pla(".i 3\n.o 1\n# comment\n0-1 1\n111 0\n")
    assert pla.X.tolist() == [[0, 2, 1], [1, 1, 1]] and pla.y.tolist() == [1, 0]


def test_pla_type_end_compact_rows_and_gzip_by_content(tmp_path):
    pla = parse_pla(".i 2\n.o 1\n.type fd\n011\n1- ~\n.e\nanything after .e is not read\n")
    assert pla.type == "fd" and pla.X.tolist() == [[0, 1], [1, 2]] and pla.y.tolist() == [1, 2]  # ~: don't care
    assert format_pla(pla).splitlines()[3] == ".type fd"
    (tmp_path / "plain.pla.gz").write_text(".i 1\n.o 1\n1 1\n")  # named .gz, not compressed
    (tmp_path / "packed.pla").write_bytes(gzip.compress(b".i 1\n.o 1\n0 1\n"))  # compressed, no .gz
    assert read_pla(tmp_path / "plain.pla.gz").X.tolist() == [[1]]
    assert read_pla(tmp_path / "packed.pla").X.tolist() == [[0]]


def test_benchmark_folder_lists_each_function_once(tmp_path):
    pla = PLA(np.array([[0, 1]], np.uint8), np.array([[1]], np.uint8))
    for name in ("ex00.train.pla", "ex00.valid.pla", "ex07.train.pla.gz", "ex07.valid.pla.gz"):
        write_pla(pla, tmp_path / name)
    assert benchmark_names(tmp_path) == ["ex00", "ex07"]
    train, valid = load_benchmark("ex07", tmp_path)
    assert train.name == "ex07.train.pla.gz" and valid.X.tolist() == [[0, 1]]


def test_minterms_are_distinct_and_digits_split_shuffled():
    from sklearn.datasets import load_digits

    from paperbook.iwls.data import sample_minterms

    rows = sample_minterms(6, 60, np.random.default_rng(0))  # 60 of the 64 minterms: repeats certain if allowed
    assert len({r.tobytes() for r in rows}) == 60
    with pytest.raises(ValueError, match="cannot draw 65 distinct minterms from 2\\^6"):
        sample_minterms(6, 65, np.random.default_rng(0))
    tr, va, te = generate("symmetric-6-3", size=20)  # 60 distinct rows over the three splits
    assert len({r.tobytes() for r in np.vstack([tr.X, va.X, te.X])}) == 60
    d = load_digits()
    d_tr = generate("digits-0_1", seed=0)[0]
    pixels = (d.data >= 8).astype(np.uint8)  # a pixel of intensity 8 of 16 is on
    distinct = pixels[np.sort(np.unique(pixels, axis=0, return_index=True)[1])]  # each image once, in order
    assert (d.data == 8).any() and not np.array_equal(d_tr.X, distinct[:len(d_tr)])  # shuffled before the split
    assert sorted(r.tobytes() for r in np.vstack([s.X for s in generate("digits-0_1", seed=0)])) == sorted(
        r.tobytes() for r in distinct)
    assert {r.tobytes() for r in d_tr.X} <= {r.tobytes() for r in pixels}


@pytest.mark.parametrize("text, words", [
    (".i 3\n.o 1\n0101 1\n", ["line 3", "expected 3 input bits, got 4"]),
    (".i 3\n.o 1\n01x 1\n", ["line 3", "'x'", "not 0, 1 or -"]),
    (".i 3\n.o 1\n010 z\n", ["line 3", "'z'", "output"]),
    (".i 3\n.o 1\n.p 2\n010 1\n", [".p says 2 rows", "has 1"]),
    (".i 3\n.o 1\n", ["no minterms"]),
    ("010 1\n", ["line 1", "before the .i and .o"]),
    (".i 3\n.o 1\n010 1\n.i 4\n0101 1\n", ["line 4", ".i 4 after rows of 3 inputs"]),
    (".i three\n", ["line 1", ".i needs one whole number"]),
    ("hello", ["line 1"]),
])
def test_malformed_pla_names_the_line(text, words):
    with pytest.raises(ValueError) as e:
        parse_pla(text, name="bad.pla")
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    assert "bad.pla" in str(e.value)


def test_family_names():
    assert [family(f"ex{i:02d}") for i in (0, 15, 27, 31, 49, 50, 69, 77, 83)] == [
        "adder", "divider", "multiplier", "comparator", "sqrt", "picojava", "mcnc-i10", "mcnc+symmetric", "mnist"]
    assert family("comparator-20") == "comparator"


def test_generators_match_arithmetic():
    rng = np.random.default_rng(0)
    for k in (3, 5):
        X = rng.integers(0, 2, (200, 2 * k), dtype=np.uint8)
        a = X[:, :k] @ (1 << np.arange(k))  # least significant bit first, as the real benchmark
        b = X[:, k:] @ (1 << np.arange(k))
        assert (contest_function(f"adder-{k}-{k}")[1](X) == ((a + b) >> k & 1)).all()
        assert (contest_function(f"comparator-{k}")[1](X) == (a > b)).all()
        assert (contest_function(f"multiplier-{k}-{k - 1}")[1](X) == ((a * b) >> (k - 1) & 1)).all()
    X = rng.integers(0, 2, (100, 16), dtype=np.uint8)
    assert (contest_function("symmetric-16-3_8")[1](X) == np.isin(X.sum(1), [3, 8])).all()
    with pytest.raises(ValueError, match="bad function spec 'adder-x'; allowed"):
        contest_function("adder-x")


def test_generate_contest_split():
    tr, va, te = generate("adder-16-16", seed=3)
    assert (len(tr), len(va), len(te)) == (6400, 6400, 6400) and tr.n == 32 and tr.type == "fr"
    assert len({r.tobytes() for r in np.vstack([tr.X, va.X, te.X])}) == 19200
    d_tr, d_va, d_te = generate("digits-0_1", seed=0)
    assert d_tr.n == 64 and len(d_tr) + len(d_va) + len(d_te) == 1750  # 1,797 images, 1,750 distinct once binarised
    for spec in ("digits-0_1", "digits-3_5_8"):
        for seed in range(3):  # copies of an image would put a test minterm in training
            rows = np.vstack([s.X for s in generate(spec, seed=seed)])
            assert len({r.tobytes() for r in rows}) == len(rows) == 1750


@needs_data
def test_real_benchmark_reads():
    tr, va = load_benchmark("ex31")
    assert len(tr) == len(va) == 6400 and tr.n == va.n == 40 and set(np.unique(tr.y)) <= {0, 1}


# ---- AIG ----------------------------------------------------------------------------------------
def test_strash_and_constant_folding():
    g = AIG(2)
    a, b = g.input(0), g.input(1)
    assert g.AND(a, b) == g.AND(b, a) and len(g.ands) == 1
    assert g.AND(a, 0) == 0 and g.AND(a, 1) == a and g.AND(a, a) == a and g.AND(a, a ^ 1) == 0
    assert g.OR(a, 1) == 1 and g.MUX(a, b, b) == b and len(g.ands) == 1


def test_gates_truth_tables():
    g = AIG(3)
    a, b, c = (g.input(i) for i in range(3))
    g.outputs = [g.AND(a, b), g.OR(a, b), g.XOR(a, b), g.MUX(a, b, c), g.at_least([a, b, c], 2)]
    X = all_minterms(3)
    A, B, C = X.T
    want = np.stack([A & B, A | B, A ^ B, np.where(A == 1, B, C), (A + B + C >= 2)], 1)
    assert (simulate(g, X) == want).all()
    assert (g.AND_all([]), g.OR_all([])) == (1, 0)  # empty: TRUE and FALSE (a cube with every input free)
    h = AIG(2)
    h.outputs = [h.AND_all([h.input(0), h.input(1), h.input(0)]), h.OR_all([h.input(1)])]
    assert (simulate(h, all_minterms(2)) == np.stack([all_minterms(2)[:, 0] & all_minterms(2)[:, 1],
                                                       all_minterms(2)[:, 1]], 1)).all()


def test_pack_layout():
    X = np.zeros((70, 2), np.uint8)
    X[65, 1] = 1
    w = pack(X)
    assert w.shape == (2, 2) and w[1, 1] == 2 and w[0].sum() == 0
    assert pack(np.ones((64, 1), np.uint8)).tolist() == [[2**64 - 1]]  # 64 minterms fill exactly one word
    assert pack(np.ones((65, 1), np.uint8)).tolist() == [[2**64 - 1, 1]]


@pytest.mark.parametrize("binary", [True, False])
def test_aiger_round_trip(tmp_path, binary):
    rng = np.random.default_rng(0)
    g = AIG(6)
    lits = [g.input(i) for i in range(6)]
    for _ in range(40):
        i, j = rng.integers(0, len(lits), 2)
        lits.append(g.AND(lits[i] ^ int(rng.integers(2)), lits[j] ^ int(rng.integers(2))))
    g.outputs = [lits[-1] ^ 1]
    path = write_aiger(g, tmp_path / ("c.aig" if binary else "c.aag"))
    assert path.read_bytes()[:3] == (b"aig" if binary else b"aag")
    back = read_aiger(path)
    X = all_minterms(6)
    assert back.num_ands == g.num_ands and (simulate(back, X) == simulate(g, X)).all()


def test_binary_aiger_hand_encoded():
    g = AIG(2)
    g.outputs = [g.AND(g.input(0), g.input(1) ^ 1)]  # x0 ∧ ¬x1: node 6 = 4 ∧ 3... as 2 ∧ 5
    # header, output literal, then deltas 6-5=1 and 5-2=3
    assert to_aiger(g) == b"aig 3 2 0 1 1\n6\n\x01\x03"
    # ASCII: inputs, output, then 'lhs rhs0 rhs1' with rhs0 >= rhs1, as the AIGER format requires
    assert to_aiger(g, binary=False) == b"aag 3 2 0 1 1\n2\n4\n6\n6 5 2\n"
    from paperbook.iwls.aig import _varint

    # 7 bits per byte, low bits first, the high bit set on all but the last (AIGER's delta encoding)
    assert [_varint(x) for x in (0, 127, 128, 300, 16384)] == [b"\x00", b"\x7f", b"\x80\x01", b"\xac\x02",
                                                             b"\x80\x80\x01"]
    g = AIG(200)  # an AND of inputs far apart: deltas of 2 bytes, read back
    g.outputs = [g.AND(g.input(0), g.input(199))]
    back = from_aiger(to_aiger(g))
    X = np.random.default_rng(0).integers(0, 2, (50, 200)).astype(np.uint8)
    assert (simulate(back, X) == simulate(g, X)).all()


def test_bad_aiger_is_an_error():
    with pytest.raises(ValueError, match="not an AIGER file"):
        from_aiger(b"hello\n")
    for head in (b"abc 1 1 0 1 0\n", b"aag 1 x 0 1 0\n"):
        with pytest.raises(ValueError, match="not an AIGER file"):
            from_aiger(head + b"2\n2\n")
    with pytest.raises(ValueError, match="inputs must be 2, 4, 6"):
        from_aiger(b"aag 2 2 0 1 0\n2\n6\n2\n")
    with pytest.raises(ValueError, match="literal 8 used before its node is defined"):
        from_aiger(b"aag 4 2 0 1 2\n2\n4\n6\n6 8 2\n8 4 2\n")
    with pytest.raises(ValueError, match="latches"):
        from_aiger(b"aag 1 0 1 0 0\n2 3\n")
    with pytest.raises(ValueError, match="ends inside the AND section"):
        from_aiger(b"aig 3 2 0 1 1\n6\n\x81")


def test_simulate_rejects_wrong_width():
    with pytest.raises(ValueError, match="2 inputs, the minterms 3"):
        simulate(AIG(2), np.zeros((4, 3), np.uint8))
    with pytest.raises(ValueError, match="the PLA has '-' inputs"):
        simulate(AIG(2), np.array([[0, 2]], np.uint8))  # a don't-care input is no minterm


@needs_abc
def test_abc_agrees_with_our_simulation_and_count():
    tr, va, _ = generate("comparator-8", seed=2, size=640)
    g = learn_tree(tr, max_depth=6)
    abc = abc_check(g, va)
    assert abc["ands"] == g.num_ands
    assert abc["accuracy"] == pytest.approx(accuracy(g, va.X, va.y), abs=1e-12)
    assert abc_check(g, PLA(va.X[:100], va.Y[:100]))["accuracy"] == pytest.approx(accuracy(g, va.X[:100], va.y[:100]))


@needs_abc
def test_abc_optimize_keeps_function():
    tr, _, _ = generate("adder-6-6", seed=0, size=500)
    g = learn_forest(tr, trees=7, max_depth=6)
    small = abc_optimize(g)
    X = all_minterms(12)
    assert small.num_ands <= g.num_ands and (simulate(small, X) == simulate(g, X)).all()


# ---- learners -------------------------------------------------------------------------------------
def test_tree_circuit_equals_sklearn_tree():
    from sklearn.tree import DecisionTreeClassifier

    tr, va, _ = generate("comparator-6", seed=0, size=800)
    clf = DecisionTreeClassifier(criterion="entropy", max_depth=7, random_state=0).fit(tr.X, tr.y)
    g = learn_tree(tr, max_depth=7)
    assert (simulate(g, va.X)[:, 0] == clf.predict(va.X)).all()


def test_forest_majority_vote_equals_hard_vote():
    from sklearn.ensemble import RandomForestClassifier

    tr, va, _ = generate("adder-6-6", seed=0, size=600)
    g = learn_forest(tr, trees=5, max_depth=5, seed=0)
    rf = RandomForestClassifier(n_estimators=5, max_depth=5, max_features=0.5, criterion="entropy", random_state=0,
                                n_jobs=1).fit(tr.X, tr.y)
    votes = np.stack([est.predict(va.X) for est in rf.estimators_]).sum(0)
    assert (simulate(g, va.X)[:, 0] == (votes >= 3)).all()
    with pytest.raises(ValueError, match="odd"):
        learn_forest(tr, trees=4)


def test_espresso_is_exact_on_the_care_set():
    tr, va, _ = generate("comparator-5", seed=0, size=120)
    g = learn_espresso(tr, timeout_s=60)
    assert accuracy(g, tr.X, tr.y) == 1.0  # on-set and off-set respected; the rest was free


def test_espresso_timeout_delivers_nothing():
    tr, _, _ = generate("adder-32-32", seed=0, size=3000)
    assert learn_espresso(tr, timeout_s=0.01) is None


def test_lut_network_memorises_what_its_tables_see():
    X = all_minterms(1)
    for y in (X[:, 0], 1 - X[:, 0]):  # x0 and ¬x0: every table reads only x0, so memorising is exact
        pla = PLA(np.tile(X, (3, 1)), np.tile(y, 3)[:, None])
        g = learn_lut(pla, k=2, widths=(3,), seed=0)
        assert accuracy(g, X, y) == 1.0
    X = all_minterms(3)
    y = (X.sum(1) >= 2).astype(np.uint8)
    g = learn_lut(PLA(X, y[:, None]), k=3, widths=(), seed=0)  # one random 3-input table
    assert accuracy(g, X, y) >= max(y.mean(), 1 - y.mean())  # never worse than the constant guess


@pytest.mark.parametrize("labels, want", [((1, 0, 1), (1, 1)), ((1, 0, 0), (0, 0))])
def test_lut_ties_take_the_majority_label(labels, want):
    # one input, one 1-input table; x = 0 is seen once with each label (a tie), x = 1 once with the third label:
    # the tie takes the training set's majority label (2 of 3), so the circuit is that constant
    pla = PLA(np.array([[0], [0], [1]], np.uint8), np.array(labels, np.uint8)[:, None])
    g = learn_lut(pla, k=1, widths=(), seed=0)
    assert simulate(g, all_minterms(1))[:, 0].tolist() == list(want)


def test_choice_prefers_accuracy_then_size_and_limit_scores_zero():
    tr, va, _ = generate("comparator-6", seed=1, size=800)
    data = join(tr, va)
    cvs = [cross_validate("tree", {"max_depth": d}, data, folds=4) for d in (2, 6)]
    assert choose(cvs).params == {"max_depth": 6} and cvs[1].mean > cvs[0].mean + 0.1
    over = fit_candidate("tree", {"max_depth": 12}, tr, va, max_ands=3, optimize=False)
    assert over.valid_accuracy == 0 and "over 3 ANDs" in over.note
    with pytest.raises(ValueError, match="unknown method 'svm'"):
        fit_candidate("svm", {}, tr, va)
    n = learn_tree(tr, max_depth=4).num_ands  # the limit is inclusive: n ANDs pass a limit of n, not one of n - 1
    assert fit_candidate("tree", {"max_depth": 4}, tr, va, max_ands=n, optimize=False).valid_accuracy > 0.5
    assert fit_candidate("tree", {"max_depth": 4}, tr, va, max_ands=n - 1, optimize=False).valid_accuracy == 0
    cv = cross_validate("tree", {"max_depth": 12}, data, folds=4, max_ands=3)
    assert cv.accuracy == [0.0] * 4 and cv.delivered == [False] * 4 and cv.size == 0.0 and cv.mean_ands > 3
    mixed = CV("t", {}, [0.9, 0.0, 0.8, 0.7], [10, 5000, 20, 30], delivered=[True, False, True, True])
    assert mixed.size == 20.0 and mixed.mean_ands == 1265.0  # size: the delivered circuits only


def test_folds_partition_and_cross_validation_matches_sklearn():
    from sklearn.tree import DecisionTreeClassifier

    parts = fold_indices(103, 4, seed=3)
    assert sorted(len(p) for p in parts) == [25, 26, 26, 26]
    assert sorted(np.concatenate(parts).tolist()) == list(range(103))
    with pytest.raises(ValueError, match="folds must be between 2"):
        fold_indices(10, 1)
    shuffled = fold_indices(100, 4, seed=0)  # seeded shuffles, not blocks of consecutive minterms
    assert [p.tolist() for p in shuffled] == [p.tolist() for p in fold_indices(100, 4, seed=0)]
    assert [p.tolist() for p in shuffled] != [p.tolist() for p in fold_indices(100, 4, seed=1)]
    assert all(np.ptp(p) > 30 for p in shuffled)
    tr, va, _ = generate("comparator-8", seed=2, size=500)
    data = join(tr, va)
    cv = cross_validate("tree", {"max_depth": 4}, data, folds=4, seed=3)
    parts = fold_indices(len(data), 4, seed=3)
    by_hand = []
    for f, held in enumerate(parts):  # sklearn's own predictions, not our circuit
        fit_on = np.concatenate([p for g, p in enumerate(parts) if g != f])
        clf = DecisionTreeClassifier(criterion="entropy", max_depth=4, random_state=0)
        clf.fit(data.X[fit_on], data.y[fit_on])
        by_hand.append(float((clf.predict(data.X[held]) == data.y[held]).mean()))
    assert cv.accuracy == pytest.approx(by_hand, abs=1e-12) and all(cv.delivered)


def test_constant_baseline_guesses_from_the_training_folds_only():
    # leave-one-out on labels 1, 1, 0, 0, 0: holding out a 1 leaves a majority of 0s; holding out a 0 leaves
    # two of each, and a tie guesses 1. Every guess is wrong: 0/5, where the majority of all five would get 3/5
    pla = PLA(all_minterms(3)[:5], np.array([1, 1, 0, 0, 0], np.uint8)[:, None])
    assert constant_cv(pla, folds=5).accuracy == [0.0] * 5


def test_portfolio_estimate_chooses_without_the_scored_fold():
    a = CV("a", {}, [0.9, 0.5, 0.9, 0.9], [10] * 4)
    b = CV("b", {}, [0.8, 0.8, 0.8, 0.8], [10] * 4)
    acc, picks = portfolio_cv([a, b])
    # fold 0: a's other folds average 0.767 < 0.8 -> b; fold 1: a's others 0.9 -> a (scores its bad 0.5); ...
    assert acc == [0.8, 0.5, 0.8, 0.8] and picks == ["b", "a", "b", "b"]
    with pytest.raises(ValueError, match="same folds"):
        portfolio_cv([a, CV("c", {}, [1.0] * 3, [1] * 3)])


def test_delivery_falls_back_when_the_refit_is_over_the_limit():
    tr, va, _ = generate("comparator-8", seed=0, size=600)
    data = join(tr, va)
    deep = CV("tree", {"max_depth": 12}, [1.0] * 4, [1] * 4)  # claims to be best and tiny
    shallow = CV("tree", {"max_depth": 1}, [0.6] * 4, [1] * 4)
    chosen, circuit = deliver([deep, shallow], data, max_ands=3)
    assert chosen is shallow and circuit.ands <= 3 and circuit.valid_accuracy > 0.5


# ---- fringe features and small supports ---------------------------------------------------------
@pytest.mark.parametrize("rule", ["xor_and", "parity3"])
def test_fringe_features_learn_what_a_tree_of_the_same_depth_cannot(rule):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 2, (4000, 12), dtype=np.uint8)
    y = (X[:, 0] ^ X[:, 1]) & (X[:, 2] ^ X[:, 3]) if rule == "xor_and" else X[:, 0] ^ X[:, 1] ^ X[:, 2]
    tr, te = PLA(X[:3000], y[:3000, None]), PLA(X[3000:], y[3000:, None])
    assert accuracy(learn_tree(tr, max_depth=3), te.X, te.y) < 0.8
    g = learn_fringe(tr, max_depth=3)
    assert accuracy(g, te.X, te.y) == 1.0
    Z = all_minterms(12)  # the circuit is the function itself on all 4,096 minterms
    z = (Z[:, 0] ^ Z[:, 1]) & (Z[:, 2] ^ Z[:, 3]) if rule == "xor_and" else Z[:, 0] ^ Z[:, 1] ^ Z[:, 2]
    assert (simulate(g, Z)[:, 0] == z).all()


def test_fringe_columns_and_circuit_compute_the_features_as_defined():
    from sklearn.tree import DecisionTreeClassifier

    # y = (x0 ∧ ¬x1) ∨ (x2 ∧ x3); feature ("and", p, rp, q, rq) is [x_p = rp] ∧ [x_q = rq], ("xor", p, .., q, ..)
    # is x_p ⊕ x_q, where p and q index the inputs and then the features found before
    rng = np.random.default_rng(3)
    X = rng.integers(0, 2, (3000, 10), dtype=np.uint8)
    y = (X[:, 0] & (1 - X[:, 1])) | (X[:, 2] & X[:, 3])
    tr = PLA(X, y[:, None])
    feats, cols = fringe_features(tr)

    def widen(X):  # a later round's features may combine earlier ones: column p may be a feature
        C = X.astype(bool)
        for op, p, rp, q, rq in feats:
            C = np.column_stack([C, (C[:, p] == rp) & (C[:, q] == rq) if op == "and" else C[:, p] ^ C[:, q]])
        return C

    assert {f[0] for f in feats} == {"and", "xor"} and (cols == widen(X)).all()
    clf = DecisionTreeClassifier(criterion="entropy", max_depth=3, random_state=0).fit(cols, tr.y)
    Z = all_minterms(10)
    assert (simulate(learn_fringe(tr, max_depth=3), Z)[:, 0] == clf.predict(widen(Z))).all()


def test_small_support_found_exactly_and_refused_for_noise():
    rng = np.random.default_rng(1)
    X = rng.integers(0, 2, (3000, 30), dtype=np.uint8)
    S, table = [3, 7, 11, 20, 28], rng.integers(0, 2, 32)
    y = table[X[:, S] @ (1 << np.arange(5))].astype(np.uint8)
    tr, te = PLA(X[:2000], y[:2000, None]), PLA(X[2000:], y[2000:, None])
    assert sorted(small_support(tr)) == S
    assert accuracy(learn_support(tr), te.X, te.y) == 1.0
    noise = PLA(X[:2000], rng.integers(0, 2, (2000, 1), dtype=np.uint8))
    assert small_support(noise) is None and learn_support(noise) is None


# ---- structure learners -------------------------------------------------------------------------
def _lsb(bits):
    return bits @ (1 << np.arange(bits.shape[1]))


@needs_data
def test_ex00_is_bit_15_of_an_lsb_first_sum():
    # computed here with integer arithmetic, independently of the template search
    for part in load_benchmark("ex00"):  # train and valid
        X, y = part.X, part.y
        a, b = _lsb(X[:, :16].astype(np.int64)), _lsb(X[:, 16:].astype(np.int64))
        assert ((a + b) >> 15 & 1 == y).all()


def test_symmetric_learner_is_exact_on_a_generated_function_and_rejects_noise():
    from paperbook.iwls.structure import learn_symmetric

    tr, _, te = generate("symmetric-16-3_4_8_11_12", seed=2)
    g = learn_symmetric(tr)
    assert g is not None and accuracy(g, te.X, te.y) == 1.0
    rng = np.random.default_rng(0)
    noise = PLA(tr.X, rng.integers(0, 2, (len(tr), 1), dtype=np.uint8))
    assert learn_symmetric(noise) is None
    # a popcount the training set never shows takes the majority label: [popcount >= 2] of 4 inputs trained
    # without 1111 (ten 1s of fifteen), so 1111 gives 1, and popcounts 0 and 1 give 0
    X = all_minterms(4)
    y = (X.sum(1) >= 2).astype(np.uint8)
    g = learn_symmetric(PLA(X[:-1], y[:-1, None]))
    assert (simulate(g, X)[:, 0] == y).all()


@pytest.mark.parametrize("spec,template", [
    ("adder-16-16", {"op": "add", "bit": 16}),
    ("adder-32-31", {"op": "add", "bit": 31}),
    ("multiplier-8-8", {"op": "mul", "bit": 8}),
])
def test_arithmetic_template_finds_lsb_first_operands(spec, template):
    from paperbook.iwls.structure import find_arithmetic, learn_arithmetic

    tr, _, te = generate(spec, seed=4)
    t = find_arithmetic(tr)
    assert t == template | {"layout": "halves", "lsb_first": True, "inverted": False}
    g = learn_arithmetic(tr)
    assert accuracy(g, te.X, te.y) == 1.0 and g.num_ands < 5000
    # the circuit against integers on all minterms of a small instance: bit 3 of a 3-bit a + b is the carry
    X = all_minterms(6)
    a, b = _lsb(X[:, :3].astype(int)), _lsb(X[:, 3:].astype(int))
    small = PLA(X, ((a + b) >> 3 & 1).astype(np.uint8)[:, None])
    assert (simulate(learn_arithmetic(small), X)[:, 0] == small.y).all()
    inverted = PLA(X, 1 - small.Y)  # the template holds inverted, and so must the circuit
    assert find_arithmetic(inverted)["inverted"] and (simulate(learn_arithmetic(inverted), X)[:, 0] == inverted.y).all()


def test_structure_learners_reject_a_random_function():
    from paperbook.iwls.structure import learn_arithmetic, learn_chain, learn_symmetric

    rng = np.random.default_rng(1)
    X = rng.integers(0, 2, (3000, 20), dtype=np.uint8)
    noise = PLA(X, rng.integers(0, 2, (3000, 1), dtype=np.uint8))
    assert [f(noise) for f in (learn_symmetric, learn_arithmetic, learn_chain)] == [None, None, None]


def test_comparator_chain_above_0_9_and_extrapolated():
    from paperbook.iwls.structure import find_chain, learn_chain

    tr, _, te = generate("comparator-40", seed=5)  # 6,400 minterms reach only ~13 of 40 pairs
    order = find_chain(tr)
    assert [p for p, _, _ in order[:-1]] == list(range(39, -1, -1))  # every pair, from the top
    assert accuracy(learn_chain(tr), te.X, te.y) == 1.0  # the unreached pairs extrapolated along the chain
    # a 2-bit a > b (a = x0 + 2 x1, b = x2 + 2 x3) trained without any a = b minterm and with only 3 of the
    # 6 minterms a < b: the case 'every pair equal' was never seen and takes the majority label, 1 (6 of 9)
    X = all_minterms(4)
    a, b = X[:, 0] + 2 * X[:, 1], X[:, 2] + 2 * X[:, 3]
    keep = (a > b) | ((a < b) & (np.cumsum(a < b) <= 3))
    g = learn_chain(PLA(X[keep], (a > b)[keep].astype(np.uint8)[:, None]))
    assert (simulate(g, X)[:, 0] == np.where(a == b, 1, a > b)).all()


def test_portfolio_tie_break_takes_the_fewest_ands():
    tr, va, _ = generate("symmetric-16-3_4_8_11_12", seed=1, size=3000)
    data = join(tr, va)
    sym = cross_validate("symmetric", {}, data, folds=4)
    assert sym.accuracy == [1.0] * 4
    big = CV("tree", {"max_depth": 20}, [1.0] * 4, [n + 100 for n in sym.ands])  # as accurate, more ANDs
    deep = cross_validate("tree", {"max_depth": 20}, data, folds=4)
    assert choose([big, sym]) is sym and choose([sym, big]) is sym
    assert choose([deep, sym]) is sym and deep.mean < 1.0  # the tree is not exact
    assert portfolio_cv([big, sym])[1] == ["symmetric"] * 4
    assert cross_validate("arith", {}, data, folds=4).note == "no exact structure found"


# ---- chapter config and CLI --------------------------------------------------------------------
def test_chapter_config_errors():
    from paperbook.core import resolve

    with pytest.raises(ValueError, match="forest_trees must be odd"):
        resolve("iwls2020", overrides={"forest_trees": 4})
    with pytest.raises(ValueError, match="functions is empty"):
        resolve("iwls2020", overrides={"functions": []})
    with pytest.raises(ValueError, match="folds must be >= 2"):
        resolve("iwls2020", overrides={"folds": 1})
    with pytest.raises(ValueError, match="is not a folder"):
        resolve("iwls2020", overrides={"test_dir": "/no/such/folder"})


def test_test_sets_are_read_from_test_dir(tmp_path):
    from paperbook.iwls.chapter import test_pla

    _, _, te = generate("comparator-5", seed=0, size=64)
    write_pla(te, tmp_path / "ex07.test.pla.gz")
    got = test_pla("ex07", str(tmp_path))
    assert (got.X == te.X).all() and (got.y == te.y).all()
    assert test_pla("ex08", str(tmp_path)) is None and test_pla("ex07", "") is None


def test_unknown_benchmark_is_named(monkeypatch):
    from paperbook.core import resolve
    from paperbook.iwls.chapter import resolve_functions

    if not benchmark_names():
        pytest.skip("needs the real benchmark")
    with pytest.raises(ValueError, match=r"unknown benchmark\(s\) \['ex99'\]"):
        resolve_functions(resolve("iwls2020", overrides={"functions": ["ex99"]}))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "paperbook.iwls", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=600)


def test_cli_learn_writes_aig_within_limit_and_scores_the_test_set(tmp_path):
    tr, va, te = generate("comparator-10", seed=0, size=1000)
    write_pla(tr, tmp_path / "x.train.pla.gz")
    write_pla(va, tmp_path / "x.valid.pla")
    write_pla(te, tmp_path / "x.test.pla")
    r = _cli("learn", "--train", tmp_path / "x.train.pla.gz", "--valid", tmp_path / "x.valid.pla",
             "--test", tmp_path / "x.test.pla", "--out", tmp_path / "x.aig", "--espresso-timeout", "2")
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip().splitlines()[-1]
    fields = dict(kv.split("=", 1) for kv in line.split())
    assert {"cv_accuracy", "ands", "method", "test_accuracy"} <= set(fields)
    g = read_aiger(tmp_path / "x.aig")
    assert g.num_ands == int(fields["ands"]) <= 5000
    assert float(fields["test_accuracy"]) == pytest.approx(accuracy(g, te.X, te.y), abs=1e-6)
    assert float(fields["test_accuracy"]) > 0.9
    if abc_command():
        assert float(fields["abc_test_accuracy"]) == pytest.approx(float(fields["test_accuracy"]), abs=1e-6)


@needs_data
def test_cli_on_a_real_benchmark(tmp_path):
    from paperbook.iwls.data import benchmark_dir

    d = benchmark_dir()
    r = _cli("learn", "--train", d / "ex31.train.pla.gz", "--valid", d / "ex31.valid.pla.gz", "--out",
             tmp_path / "ex31.aig", "--method", "tree")
    assert r.returncode == 0, r.stderr
    assert float(r.stdout.split("cv_accuracy=")[1].split()[0]) > 0.9


def test_cli_bad_input(tmp_path):
    (tmp_path / "bad.pla").write_text(".i 3\n.o 1\n01 1\n")
    (tmp_path / "ok.pla").write_text(format_pla(PLA(np.zeros((2, 4), np.uint8), np.zeros((2, 1), np.uint8))))
    r = _cli("learn", "--train", tmp_path / "bad.pla", "--valid", tmp_path / "ok.pla", "--out", tmp_path / "o.aig")
    assert r.returncode == 2 and "line 3" in r.stderr and not (tmp_path / "o.aig").exists()
    r = _cli("learn", "--train", tmp_path / "ok.pla", "--valid", tmp_path / "missing.pla", "--out", tmp_path / "o.aig")
    assert r.returncode == 2 and "no PLA file" in r.stderr
    (tmp_path / "ok3.pla").write_text(".i 3\n.o 1\n010 1\n")
    r = _cli("learn", "--train", tmp_path / "ok.pla", "--valid", tmp_path / "ok3.pla", "--out", tmp_path / "o.aig")
    assert r.returncode == 2 and "4 inputs (.i) but --valid has 3" in r.stderr
    r = _cli("learn", "--train", tmp_path / "ok.pla", "--valid", tmp_path / "ok.pla", "--out", tmp_path / "o.aig",
             "--folds", "1")
    assert r.returncode == 2 and "--folds must be between 2 and 4" in r.stderr and not (tmp_path / "o.aig").exists()


def test_cli_plan_by_hand():
    from paperbook.iwls.__main__ import plan

    assert plan("tree", 5.0) == [("tree", {"max_depth": d}) for d in (6, 8, 10, 14, 20)]
    assert plan("symmetric", 5.0) == [("symmetric", {})]  # no settings: one candidate
    full = plan("portfolio", 7.0, seed=3)
    assert [m for m, _ in full] == ["tree"] * 5 + ["forest", "espresso", "lut", "fringe", "fringe", "support",
                                                    "boost", "symmetric", "arith", "chain"]
    assert dict(full[5:8]) == {"forest": {"seed": 3}, "espresso": {"timeout_s": 7.0}, "lut": {"seed": 3}}
    assert full[8:12] == [("fringe", {"max_depth": 10, "seed": 3}), ("fringe", {"max_depth": 14, "seed": 3}),
                          ("support", {"timeout_s": 7.0, "seed": 3}), ("boost", {"seed": 3})]


def test_cli_refuses_a_test_set_of_another_width_and_several_outputs_before_learning(tmp_path, capsys, monkeypatch):
    import paperbook.iwls.__main__ as iwls_cli

    monkeypatch.setattr(iwls_cli, "_cv", lambda *a, **k: pytest.fail("nothing is learned from bad input"))
    (tmp_path / "ok.pla").write_text(format_pla(PLA(np.zeros((2, 4), np.uint8), np.zeros((2, 1), np.uint8))))
    (tmp_path / "ok3.pla").write_text(".i 3\n.o 1\n010 1\n")
    (tmp_path / "two.pla").write_text(".i 4\n.o 2\n0101 10\n")
    args = ["learn", "--train", str(tmp_path / "ok.pla"), "--out", str(tmp_path / "o.aig")]
    assert iwls_cli.learn_cli([*args, "--valid", str(tmp_path / "ok.pla"), "--test", str(tmp_path / "ok3.pla")]) == 2
    assert "--train has 4 inputs (.i) but --test has 3" in capsys.readouterr().err
    assert iwls_cli.learn_cli([*args, "--valid", str(tmp_path / "two.pla")]) == 2
    assert "output" in capsys.readouterr().err and not (tmp_path / "o.aig").exists()
    assert iwls_cli.learn_cli([*args, "--valid", str(tmp_path / "ok.pla"), "--folds", "5"]) == 2  # 4 minterms
    assert "--folds must be between 2 and 4 (the minterms), got 5" in capsys.readouterr().err


def test_cli_reports_the_portfolio_estimate_and_exits_1_when_nothing_is_delivered(tmp_path, capsys, monkeypatch):
    import paperbook.iwls.__main__ as iwls_cli

    tr, va, _ = generate("comparator-10", seed=0, size=200)
    write_pla(tr, tmp_path / "t.pla")
    write_pla(va, tmp_path / "v.pla")
    args = ["learn", "--train", str(tmp_path / "t.pla"), "--valid", str(tmp_path / "v.pla"), "--out",
            str(tmp_path / "o.aig"), "--folds", "3"]
    seen = []
    monkeypatch.setattr(iwls_cli, "plan", lambda method, t, seed: [("tree", {"max_depth": 4})])
    real_cv = iwls_cli._cv
    monkeypatch.setattr(iwls_cli, "_cv", lambda *a, **k: seen.append(k) or real_cv(*a, **k))
    monkeypatch.setattr(iwls_cli, "_pcv", lambda cvs: ([0.25, 0.75], None))  # the portfolio's own folds
    assert iwls_cli.learn_cli([*args, "--seed", "9"]) == 0
    assert seen == [{"folds": 3, "seed": 9}]
    line = dict(kv.split("=", 1) for kv in capsys.readouterr().out.split())
    assert line["cv_accuracy"] == "0.500000" and line["method"].startswith("tree")  # the mean of 0.25 and 0.75
    assert iwls_cli.learn_cli([*args, "--method", "tree"]) == 0  # one learner: its own cross-validated mean
    assert float(dict(kv.split("=", 1) for kv in capsys.readouterr().out.split())["cv_accuracy"]) > 0.6

    def nothing(cvs, data):
        raise ValueError("no learner delivered a circuit")

    monkeypatch.setattr(iwls_cli, "_deliver", nothing)
    (tmp_path / "o.aig").unlink()
    assert iwls_cli.learn_cli(args) == 1
    assert "no learner delivered a circuit" in capsys.readouterr().err and not (tmp_path / "o.aig").exists()


def _results(level=None, abc=True, found_folds=(1.0,) * 4):
    "A crafted results table: every learner on four functions (two comparators), four folds each."
    import pandas as pd

    from paperbook.iwls.chapter import LEARNER_ORDER, STRUCTURE

    level = {"constant": 0.5, "tree": 0.8, "forest": 0.9, "boost": 0.88, "fringe": 0.85, "portfolio": 0.96} | (
        level or {})
    rows = []
    for fn, kind in (("f1", "comparator"), ("f2", "parity"), ("f3", "random"), ("f4", "comparator")):
        for learner in LEARNER_ORDER:
            base = level.get(learner, 0.6)
            folds = [base + e for e in (0.01, -0.01, 0.005, -0.005)]  # the four folds
            # as run_function records it: True for every delivered circuit, and for the structure learners only
            # where they recognised the function (symmetric on f2, exact there)
            found = learner not in STRUCTURE or (learner == "symmetric" and fn == "f2")
            if learner == "symmetric" and fn == "f2":
                folds = list(found_folds)
            if learner == "portfolio" and fn == "f1" and "comparator" in level:
                folds = level["comparator"]
            if learner == "portfolio" and fn == "f2":
                folds = [f - 0.04 for f in folds]  # below the comparator level on a function that is not one
            row = {"function": fn, "family": kind, "learner": learner, "folds": folds,
                   "accuracy": float(np.mean(folds)), "found": found, "ands": 100}
            if learner == "portfolio" and abc:
                row |= {"abc_ands": 100, "abc_accuracy": row["accuracy"], "check_accuracy": row["accuracy"]}
            rows.append(row)
    return pd.DataFrame(rows)


def test_claims_follow_a_crafted_results_table():
    from paperbook.core import resolve
    from paperbook.iwls.chapter import fold_means, make_claims

    cfg = resolve("iwls2020", "cpu-toy")
    rows = make_claims(_results(), cfg)
    assert len(rows) == 7 and all(r["holds"] for r in rows), [r["claim"] for r in rows if not r["holds"]]
    assert fold_means(_results(), "tree") == pytest.approx({0: 0.81, 1: 0.79, 2: 0.805, 3: 0.795})
    assert list(rows[1]["per_seed"][0]["value"]) == ["portfolio", "forest"]  # the best single learner on average
    # boosting now the best single learner, 0.5 point below the portfolio (0.95 on average): the ≥ 1 point row fails
    assert make_claims(_results({"boost": 0.945}), cfg)[1]["holds"] is False
    assert list(make_claims(_results({"chain": 0.945}), cfg)[1]["per_seed"][0]["value"]) == ["portfolio", "chain"]
    # one comparator's fold at 94% (the other's 96%: the worst counts); trees within 20 points of the constant
    # guess; fringe no better than the tree
    rows = make_claims(_results({"comparator": [0.96, 0.96, 0.94, 0.96], "tree": 0.69, "fringe": 0.69}), cfg)
    assert [r["holds"] for r in rows][:5] == [False, True, False, True, False] and rows[4]["k_of_n"] == "3/4"
    # the portfolio at 0.905 on three functions and 0.865 on f2: fold means 0.905, 0.885, 0.9, 0.89
    assert make_claims(_results({"portfolio": 0.905}), cfg)[3]["k_of_n"] == "2/4"
    no_abc = make_claims(_results(abc=False), cfg)[-1]
    assert not no_abc["holds"] and no_abc["ours"] == "ABC not installed"
    df = _results()
    df.loc[df.learner == "portfolio", "abc_ands"] = [100, 101, 100, 100]
    assert make_claims(df, cfg)[-1]["holds"] is False  # ABC counts one AND more on one function
    slip = make_claims(_results(found_folds=(1.0, 1.0, 0.998, 1.0)), cfg)[5]  # misses 0.2% of one held-out fold
    assert slip["k_of_n"] == "3/4" and not slip["holds"]


@pytest.mark.slow
def test_claims_hold_at_cpu_toy():
    from paperbook.core import resolve
    from paperbook.iwls.chapter import CHAPTER

    result = CHAPTER.run(resolve("iwls2020"))
    failed = [r for r in result.claims if not r["holds"] and "ABC not installed" not in str(r["ours"])]
    assert not failed, failed
    assert result.metrics["functions"] >= 8


def test_paperbook_run_prints_the_per_family_table(tmp_path):
    from helpers import cli

    r = cli("run", "iwls2020", "--set", "functions=comparator-12,adder-8-8", "--set", "source=generated",
            "--set", "jobs=1", "--set", "abc_check=false", "--set", "espresso_timeout_s=1")
    assert r.returncode == 0, r.stderr[-2000:]
    table = r.stdout.split("mean accuracy (%) and ANDs per family and learner:")[1]
    lines = {line.split()[0]: line.split() for line in table.strip().splitlines()[1:] if line.strip()}
    assert {"adder", "comparator", "mean"} <= set(lines)
    header = table.strip().splitlines()[0].split()
    assert "portfolio" in header and "fringe" in header and "boost" in header


def test_sum_at_least_by_hand():
    "[a + b - 1 >= θ] for 2-bit a, b and the constant -1 (all ones), over all 16 inputs and several θ."
    from itertools import product

    from paperbook.iwls.ensemble import sum_at_least

    X = np.array(list(product([0, 1], repeat=4)), np.uint8)
    a, b = X[:, 0].astype(int) + 2 * X[:, 1], X[:, 2].astype(int) + 2 * X[:, 3]
    for theta in (-1, 0, 2, 5, 6):
        g = AIG(4)
        values = [[g.input(0), g.input(1), 0, 0, 0], [g.input(2), g.input(3), 0, 0, 0], [1] * 5]  # 1: TRUE
        g.outputs = [sum_at_least(g, values, theta, width=5)]
        assert simulate(g, X)[:, 0].tolist() == (a + b - 1 >= theta).astype(int).tolist(), theta


def test_boosted_trees_as_a_circuit_agree_with_sklearn():
    from sklearn.ensemble import GradientBoostingClassifier

    from paperbook.iwls.ensemble import boosted_aig

    tr, _, te = generate("comparator-8", seed=0, size=1500)
    gb = GradientBoostingClassifier(n_estimators=16, max_depth=3, learning_rate=0.2, random_state=0).fit(tr.X, tr.y)
    circ = boosted_aig(gb, tr.n, 16, 8, tr.X, tr.y)  # 8-bit leaves: the quantisation is fine enough to agree
    assert (simulate(circ, te.X)[:, 0] == gb.predict(te.X)).mean() >= 0.99


def test_leaf_quantisation_and_the_boosting_fallbacks():
    from sklearn.ensemble import GradientBoostingClassifier

    from paperbook.iwls.ensemble import learn_boost, quantise

    tr, _, _ = generate("comparator-8", seed=1, size=800)
    gb = GradientBoostingClassifier(n_estimators=6, max_depth=3, learning_rate=0.2, random_state=0).fit(tr.X, tr.y)
    q, step = quantise(gb, 6, bits=5)
    scaled = [gb.learning_rate * e[0].tree_.value[:, 0, 0] for e in gb.estimators_]
    # 5 bits: integers in -15..15, the largest |η v| at ±15; each leaf within half a step of η v
    assert max(int(np.abs(qt).max()) for qt in q) == 15
    assert all(np.abs(qt * step - s).max() <= step / 2 + 1e-12 for qt, s in zip(q, scaled))
    ones = PLA(tr.X, np.ones((len(tr), 1), np.uint8))  # one label only: boosting cannot fit, the constant
    assert (simulate(learn_boost(ones), tr.X)[:, 0] == 1).all()
    full = learn_boost(tr, trees=32)
    small = learn_boost(tr, trees=32, max_ands=full.num_ands // 3)  # a shorter prefix of the trees fits
    assert small.num_ands <= full.num_ands // 3 and not small.description.startswith("32 of")


# ---- found by mutation of learn.py, ensemble.py and structure.py ----------------------------------
def test_tree_circuit_of_one_label_and_with_a_leaf_minimum():
    from sklearn.tree import DecisionTreeClassifier

    X = all_minterms(4)
    for label in (0, 1):  # sklearn's tree then knows one class only: the circuit is that constant
        g = learn_tree(PLA(X, np.full((16, 1), label, np.uint8)))
        assert simulate(g, X)[:, 0].tolist() == [label] * 16
    tr, va, _ = generate("comparator-6", seed=0, size=800)
    clf = DecisionTreeClassifier(criterion="entropy", max_depth=7, min_samples_leaf=30, random_state=0).fit(tr.X, tr.y)
    g = learn_tree(tr, max_depth=7, min_samples_leaf=30)
    assert (simulate(g, va.X)[:, 0] == clf.predict(va.X)).all()
    assert (simulate(g, va.X)[:, 0] != simulate(learn_tree(tr, max_depth=7), va.X)[:, 0]).any()


def test_espresso_single_expand_follows_fast(monkeypatch):
    import pyeda.boolalg.espresso as esp

    from paperbook.iwls.learn import _espresso_cover

    seen = []
    real = esp.set_config
    monkeypatch.setattr(esp, "set_config", lambda **kw: (seen.append(kw["single_expand"]), real(**kw))[1])
    tr, _, _ = generate("comparator-4", seed=0, size=40)
    for fast in (True, False):
        _espresso_cover(tr.X, tr.y, fast)
    assert seen == [True, False]


def test_lut_table_that_reads_every_input_memorises_any_function():
    # one 8-input table over 3 inputs (drawn with replacement: seed 0 reads all three), trained on every minterm
    X = all_minterms(3)
    rng = np.random.default_rng(1)
    for _ in range(5):
        y = rng.integers(0, 2, 8).astype(np.uint8)
        assert accuracy(learn_lut(PLA(X, y[:, None]), k=8, widths=(), seed=0), X, y) == 1.0


def test_lut_unseen_entries_take_label_1_when_the_labels_are_balanced():
    # x = 0 seen once with each label, x = 1 never: both entries take the default, 1 on a tie of the whole set
    g = learn_lut(PLA(np.array([[0], [0]], np.uint8), np.array([[1], [0]], np.uint8)), k=1, widths=(), seed=0)
    assert simulate(g, all_minterms(1))[:, 0].tolist() == [1, 1]


def test_fringe_pairs_by_hand_largest_leaf_first():
    from sklearn.tree import DecisionTreeClassifier

    from paperbook.iwls.learn import _fringe_pairs

    # y = x0 ∧ x1; x1 splits first (x1 = 0 is a leaf one deep), then x0 under x1 = 1: the leaves two deep are
    # (x1 = 1, x0 = 1) with 6 rows and (x1 = 1, x0 = 0) with 1; each pair is (last test, went right, the one above)
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 0], [1, 1], [1, 1], [1, 1], [1, 1], [1, 1], [1, 1]], np.uint8)
    tree = DecisionTreeClassifier(criterion="entropy", random_state=0).fit(X, X[:, 0] & X[:, 1])
    assert tree.tree_.feature[0] == 1
    assert _fringe_pairs(tree) == [(0, True, 1, True), (0, False, 1, True)]


def test_fringe_rounds_keep_their_quota_and_add_no_feature_twice():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 2, (2000, 10), dtype=np.uint8)
    tr = PLA(X, ((X[:, 0] ^ X[:, 1]) & (X[:, 2] | X[:, 3]) ^ X[:, 4])[:, None])
    wide, _ = fringe_features(tr, rounds=3)
    assert len(wide) > 6 and len(set(wide)) == len(wide)
    few, cols = fringe_features(tr, rounds=3, per_round=2)  # the same training set: not the cached answer
    assert 0 < len(few) <= 6 and cols.shape[1] == 10 + len(few)


def test_fringe_description_counts_the_first_feature_as_used():
    # y = x0 ∧ x1 with the x0 = x1 = 1 minterms repeated: the largest leaf's pair comes first, so column n is
    # x0 ∧ x1 itself, and a tree of depth 1 needs only it
    X = all_minterms(3)
    rows = np.r_[np.tile(X, (3, 1)), np.tile(X[X[:, 0] & X[:, 1] == 1], (2, 1))]
    tr = PLA(rows, (rows[:, 0] & rows[:, 1])[:, None])
    assert fringe_features(tr)[0][0] == ("and", 0, True, 1, True)
    g = learn_fringe(tr, max_depth=1)
    assert (simulate(g, X)[:, 0] == X[:, 0] & X[:, 1]).all()
    assert g.description.endswith(", 1 used")


def test_boosting_returns_its_smallest_prefix_when_nothing_fits():
    from paperbook.iwls.ensemble import learn_boost

    tr, _, _ = generate("comparator-8", seed=1, size=800)
    g = learn_boost(tr, trees=32, max_ands=1)
    assert g is not None and g.description.startswith("8 of 32") and g.num_ands > 1


def test_symmetric_learner_refuses_one_dissenting_label_and_wide_inputs():
    from paperbook.iwls.structure import learn_symmetric

    X = all_minterms(3)
    y = (X.sum(1) >= 2).astype(np.uint8)
    y[1] = 1  # popcount 1: one minterm labelled 1, two labelled 0
    assert learn_symmetric(PLA(X, y[:, None])) is None
    ok = PLA(X, (X.sum(1) >= 2).astype(np.uint8)[:, None])
    assert learn_symmetric(ok) is not None and learn_symmetric(ok, max_inputs=2) is None


def test_arithmetic_multiplier_at_the_operand_limit_and_chains():
    from paperbook.iwls.structure import _extrapolate, find_arithmetic, find_chain, learn_chain

    X = all_minterms(8)
    a, b = _lsb(X[:, :4].astype(int)), _lsb(X[:, 4:].astype(int))
    mul = PLA(X, ((a * b) >> 5 & 1).astype(np.uint8)[:, None])
    assert find_arithmetic(mul, max_mul_k=4)["op"] == "mul" and find_arithmetic(mul, max_mul_k=3) is None
    # the pairs never reached continue the order in its direction, with the last pair's polarity
    assert _extrapolate([(2, 7, 0), (3, 8, 1), (4, 9, 1)], [(0, 5), (5, 10), (6, 11)]) == [(5, 10, 1), (6, 11, 1)]
    assert _extrapolate([(4, 9, 0), (3, 8, 0), (2, 7, 1)], [(0, 5), (5, 10), (1, 6)]) == [(1, 6, 1), (0, 5, 1)]
    # a < b: at the top differing pair y is b's bit, the opposite of a's: found with the other polarity
    X = all_minterms(6)
    a, b = _lsb(X[:, :3].astype(int)), _lsb(X[:, 3:].astype(int))
    less = PLA(X, (a < b).astype(np.uint8)[:, None])
    assert [pol for _, _, pol in find_chain(less)[:-1]] == [1, 1, 1]
    assert (simulate(learn_chain(less), X)[:, 0] == (a < b)).all()


def test_boosted_circuit_does_not_wrap_around_when_the_threshold_is_far_from_the_sums():
    # noise labels with a 10% prior and two weak trees: θ ≈ −F_0/δ (F_0 = log(0.1 / 0.9), the prior's log-odds) is
    # around 64 while Σ q_t stays within a few units; the circuit must still compute [Σ q_t ≥ θ] for a θ near it,
    # as accurately as the best such θ (here: never 1)
    from sklearn.ensemble import GradientBoostingClassifier

    from paperbook.iwls.ensemble import boosted_aig, quantise

    rng = np.random.default_rng(2)
    X = rng.integers(0, 2, (2000, 8)).astype(np.uint8)
    y = (rng.random(2000) < 0.1).astype(np.uint8)
    gb = GradientBoostingClassifier(n_estimators=2, max_depth=3, learning_rate=0.2, random_state=0).fit(X, y)
    q, step = quantise(gb, 2, bits=3)
    sums = sum(qt[e[0].apply(X)] for qt, e in zip(q, gb.estimators_))
    centre = round(-np.log(y.mean() / (1 - y.mean())) / step)
    assert centre > 4 * np.abs(sums).max()
    out = simulate(boosted_aig(gb, 8, 2, 3, X, y), X)[:, 0]
    near = [th for th in range(centre - 3, centre + 4) if ((sums >= th) == out).all()]
    assert near and (out == y).mean() == max(((sums >= th) == y).mean() for th in range(centre - 3, centre + 4))


def test_boosted_threshold_ties_go_to_the_one_nearest_the_models_own():
    # 120 of the 1,024 minterms of 10 inputs: thresholds 0 and 1 fit them equally well, but differ on unseen
    # minterms; the circuit takes the one nearest −F_0/δ (F_0: the prior's log-odds), here 1
    from sklearn.ensemble import GradientBoostingClassifier

    from paperbook.iwls.ensemble import boosted_aig, quantise

    Z = all_minterms(10)
    rng = np.random.default_rng(2)
    X = Z[rng.choice(1024, 120, replace=False)]
    y = (X[:, 0] & X[:, 1] | (rng.random(120) < 0.1)).astype(np.uint8)
    gb = GradientBoostingClassifier(n_estimators=4, max_depth=2, learning_rate=0.5, random_state=0).fit(X, y)
    q, step = quantise(gb, 4, bits=3)
    total = {name: sum(qt[e[0].apply(A)] for qt, e in zip(q, gb.estimators_)) for name, A in (("tr", X), ("all", Z))}
    centre = round(-np.log(y.mean() / (1 - y.mean())) / step)
    acc = {th: ((total["tr"] >= th) == y).mean() for th in range(centre - 3, centre + 4)}
    best = sorted(th for th, a in acc.items() if a == max(acc.values()))
    assert centre == 1 and best == [0, 1] and ((total["all"] >= 0) != (total["all"] >= 1)).any()
    assert (simulate(boosted_aig(gb, 10, 4, 3, X, y), Z)[:, 0] == (total["all"] >= 1)).all()


def test_held_out_copies_by_hand():
    from paperbook.iwls.select import held_out_copies

    a, b, c = [0, 0, 1], [0, 1, 0], [1, 1, 1]
    pla = lambda rows: PLA(np.array(rows, np.uint8), np.zeros((len(rows), 1), np.uint8))
    # leave one out: a held-out minterm is a copy when its input occurs in another row (a, a, c, c, c: 5 of 6)
    assert held_out_copies(pla([a, a, b, c, c, c]), folds=6) == pytest.approx(5 / 6)
    assert held_out_copies(pla([a, b, c, [1, 0, 0]]), folds=2) == 0.0
    assert held_out_copies(pla([a] * 8), folds=4, seed=3) == 1.0


def test_a_multi_output_pla_has_no_single_output_column():
    two = PLA(np.zeros((3, 2), np.uint8), np.zeros((3, 2), np.uint8), name="two")
    with pytest.raises(ValueError, match="two has 2 outputs; expected 1"):
        _ = two.y


def test_an_aig_input_outside_the_inputs_is_an_error():
    g = AIG(3)
    assert [g.input(i) for i in range(3)] == [2, 4, 6]  # AIGER literals of variables 1, 2, 3
    for bad in (3, -1):
        with pytest.raises(IndexError, match=f"input {bad} of an AIG with 3 inputs"):
            g.input(bad)
