"""Chapter 7's glue (paperbook.active_fluid.chapter) with simulations and measures replaced by stand-ins: what each
step is given (seeds, noise, fit ranges, frames) and what it computes from their answers, by hand."""

import math
from types import SimpleNamespace

import numpy as np
import pytest

from paperbook.active_fluid import chapter as ch
from paperbook.core import resolve
from paperbook.data import Located


def test_simulated_gnf_runs_each_phase_with_its_noise(monkeypatch):
    calls = []
    monkeypatch.setattr(ch, "poisson_particles", lambda n, box, snaps, seed: ("poisson", n, box, snaps, seed))

    def vicsek(n, box, *, v0, eta, steps, keep_from, keep_every, seed, device):
        calls.append({"n": n, "box": box, "v0": v0, "eta": eta, "steps": steps, "keep_from": keep_from,
                      "keep_every": keep_every, "seed": seed, "device": device})
        return {"positions": ("vicsek", eta), "order": 1 - eta}

    monkeypatch.setattr(ch, "vicsek", vicsek)
    monkeypatch.setattr(ch, "count_fluctuations", lambda pos, box, sizes: {"pos": pos, "box": box, "sizes": sizes})
    monkeypatch.setattr(ch, "gnf_exponent", lambda v: 0.5 if v["pos"][0] == "poisson" else 0.5 + v["pos"][1])
    sim = ch.SimConfig(particles=100, box=8, snapshots=5, keep_every=3, vicsek_steps=40, v0=0.3, eta_ordered=0.2,
                       eta_disordered=0.7, count_sizes=(1.0, 2.0))
    out = ch.simulated_gnf(sim, seed=6, device="meta")
    assert out["poisson"]["pos"] == ("poisson", 100, 8, 5, 6) and out["poisson"]["gamma"] == 0.5
    assert out["ordered"]["gamma"] == pytest.approx(0.7) and out["ordered"]["order"] == pytest.approx(0.8)
    assert out["disordered"]["gamma"] == pytest.approx(1.2) and out["disordered"]["sizes"] == (1.0, 2.0)
    assert [c["eta"] for c in calls] == [0.2, 0.7]
    assert calls[0] | {"eta": None} == {"n": 100, "box": 8, "v0": 0.3, "eta": None, "steps": 40, "keep_from": 25,
                                        "keep_every": 3, "seed": 6, "device": "meta"}  # the last 5 × 3 steps kept


def test_spectrum_check_fits_each_prescribed_beta_over_the_set_range(monkeypatch):
    fits = []
    monkeypatch.setattr(ch, "random_velocity_field", lambda n, beta, seed: ((n, beta, seed), None))
    monkeypatch.setattr(ch, "energy_spectrum", lambda u, v, dx: ("k", u + (dx,)))
    monkeypatch.setattr(ch, "spectral_exponent", lambda k, E, lo, hi: fits.append((lo, hi)) or E)
    sim = ch.SimConfig(field_n=64, field_fit=(4.0, 20.0), betas=(1.0, 3.0))
    assert ch.spectrum_check(sim, seed=2) == {1.0: (64, 1.0, 2, 1.0), 3.0: (64, 3.0, 2, 1.0)}
    assert fits == [(pytest.approx(2 * math.pi * 4 / 64), pytest.approx(2 * math.pi * 20 / 64))] * 2


def test_piv_check_compares_with_the_true_field_at_the_vectors_centres(monkeypatch):
    n = 8
    yy, xx = np.mgrid[0:n, 0:n].astype(float)
    u, v = 10 * yy + xx, np.ones((n, n))  # u differs between (y, x) and (x, y)
    seen = {}

    def field(n_, beta, *, rms, seed, kcut):
        seen["field"] = (n_, beta, rms, seed, kcut)
        return u, v

    monkeypatch.setattr(ch, "random_velocity_field", field)
    monkeypatch.setattr(ch, "random_dots", lambda n_, seed: seen.update(dots=(n_, seed)) or "img")
    monkeypatch.setattr(ch, "advect", lambda img, a, b: "moved")
    ys, xs = np.array([[1.2, 1.2], [5.0, 5.0]]), np.array([[2.0, 6.4], [2.0, 6.4]])  # centres (y, x)
    truth = 10 * ys.round() + xs.round()

    def piv(a, b, *, window, overlap):
        seen["piv"] = (a, b, window, overlap)
        return {"x": xs, "y": ys, "u": truth + 1.0, "v": np.ones_like(truth)}  # u off by 1 everywhere

    monkeypatch.setattr(ch, "piv", piv)
    monkeypatch.setattr(ch, "energy_spectrum", lambda a, b, step: (step, float(a.mean())))
    fits = []
    monkeypatch.setattr(ch, "spectral_exponent", lambda k, E, lo, hi: fits.append((k, lo, hi)) or E)
    sim = ch.SimConfig(piv_n=n, piv_beta=2.0, piv_rms=1.5, piv_cut=4.0, piv_window=4, piv_overlap=1,
                       piv_fit_wavelengths=(2.0, 8.0))
    out = ch.piv_check(sim, seed=9)
    assert seen["field"] == (8, 2.0, 1.5, 9, pytest.approx(2 * math.pi / 4)) and seen["dots"] == (8, 9)
    assert seen["piv"] == ("img", "moved", 4, 1)
    assert out["rel_rms_error"] == pytest.approx(math.sqrt(1 / np.mean(truth ** 2 + 1)))
    assert out["beta_true"] == pytest.approx(truth.mean()) and out["beta_piv"] == pytest.approx(truth.mean() + 1)
    assert fits == [(3, pytest.approx(2 * math.pi / 8), pytest.approx(2 * math.pi / 2))] * 2  # step = 4 - 1


def test_real_data_resamples_frames_per_seed_and_shuffles_that_resample(monkeypatch):
    T, H, W = 5, 4, 6
    frames = np.stack([np.full((H, W), float(t + 1)) for t in range(T)])
    frames[:, 0, 0] += 0.5  # one bright pixel per frame, so a pixel shuffle is visible
    piv_field = {"u": np.full((3, 3), 2.0), "v": np.full((3, 3), -1.0), "dx": 7.0}
    found = Located("ecoli", "/ecoli", "folder")
    monkeypatch.setattr(ch, "load_ecoli", lambda: {"frames": frames, "piv": piv_field, "found": found})
    monkeypatch.setattr(ch, "normalise_frames", lambda f: f / 1.0)
    monkeypatch.setattr(ch, "box_fluctuations", lambda f, sizes: {"frames": f, "sizes": sizes.tolist()})
    monkeypatch.setattr(ch, "gnf_exponent", lambda fl, lmax: (lmax, tuple(fl["frames"][:, 0, 0])))
    pivs = []
    monkeypatch.setattr(ch, "piv", lambda a, b, *, window, overlap: pivs.append((a[0, 1], b[0, 1], window, overlap))
                        or {"replaced": 0.0})
    monkeypatch.setattr(ch, "energy_spectrum", lambda u, v, dx: (float(abs(u).max() + abs(v).max()), dx))
    monkeypatch.setattr(ch, "spectral_exponent", lambda k, E, lo, hi: (k, E, lo, hi))
    monkeypatch.setattr(ch, "local_coupling", lambda f, fields, sizes: sizes)
    real = ch.RealConfig(box_min=1, box_max=1000, box_sizes=4, gnf_fit_lmax=30, piv_window=8, piv_overlap=2,
                         piv_pairs=3, spectrum_fit_wavelengths=(10.0, 40.0), coupling_sizes=(2, 4))
    out = ch.real_data(real, seeds=[3, 4])
    assert out["fluct"]["sizes"] == [1, 10, 100, 1000] and out["gamma"] == (30, tuple(frames[:, 0, 0]))
    for s in (3, 4):
        pick = np.random.default_rng(s).integers(0, T, size=T)  # the frames drawn with replacement
        assert out["boot"][s] == (30, tuple(frames[pick, 0, 0]))
        lmax, corner = out["control"][s]
        assert lmax == 30 and corner != tuple(frames[pick, 0, 0])  # pixels shuffled ...
        assert sorted(np.floor(corner)) == sorted(np.floor(frames[pick, 0, 0]))  # ... within those same frames
    assert pivs == [(1.0, 2.0, 8, 2), (2.0, 3.0, 8, 2), (3.0, 4.0, 8, 2)]  # consecutive pairs
    k, E, lo, hi = out["beta"]
    assert (k, E) == (0.0, 7.0)  # the mean flow removed before the spectrum
    assert (lo, hi) == (pytest.approx(2 * math.pi / 40), pytest.approx(2 * math.pi / 10))
    assert out["coupling"] == (2, 4) and out["record"] == found.record()
    monkeypatch.setattr(ch, "load_ecoli", lambda: None)
    assert ch.real_data(real, seeds=[0]) is None


def test_experiment_runs_the_seeds_on_the_configured_device(monkeypatch):
    calls = []
    monkeypatch.setattr(ch, "simulated_gnf", lambda sim, s, device: calls.append((s, device)) or {
        k: {"gamma": s, "order": 0.5} for k in ("poisson", "ordered", "disordered")})
    monkeypatch.setattr(ch, "spectrum_check", lambda sim, s: {1.0: s})
    monkeypatch.setattr(ch, "piv_check", lambda sim, s: {"rel_rms_error": s})
    real = {"gamma": 0.8, "boot": {}, "control": {}, "beta": 3.0, "coupling": {"l": [32], "r": [0.4]},
            "fields": [{"replaced": 0.01}, {"replaced": 0.02}], "record": {"source": "folder"}}
    monkeypatch.setattr(ch, "real_data", lambda r, seeds: calls.append(("real", seeds)) or real)
    monkeypatch.setattr(ch, "make_claims", lambda *a: [])
    res = ch.experiment(resolve("ecoli-gnf", overrides={"seed": 2, "sim.seeds": 2}), SimpleNamespace(device="meta"))
    assert calls == [(2, "meta"), (3, "meta"), ("real", [2, 3])]
    assert res.metrics["spectrum_beta"] == {2: {1.0: 2}, 3: {1.0: 3}} and res.metrics["coupling"] == {32: 0.4}
    assert res.metrics["piv_replaced_share"] == [0.01, 0.02] and res.data == {"ecoli": {"source": "folder"}}


@pytest.mark.parametrize("overrides, message", [
    ({"sim.snapshots": 10, "sim.keep_every": 10, "sim.vicsek_steps": 100}, r"\(100\) must be below"),
    ({"sim.box": 8}, "sim.count_sizes go up to 16.0 > sim.box 8"),
    ({"real.piv_pairs": 10}, "must lie in 1..9"),
    ({"real.spectrum_fit_wavelengths": [200, 75]}, r"must be \(shortest, longest\)"),
])
def test_inconsistent_settings_are_refused_by_name(overrides, message):
    with pytest.raises(ValueError, match=message):
        resolve("ecoli-gnf", overrides=overrides)
