"""Chapter 7 (E. coli GNF): box counting, spectra, PIV, simulations, readers, the chapter's claims."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from paperbook.active_fluid.data import normalise_frames, read_frames, read_piv_csv
from paperbook.active_fluid.measures import (box_fluctuations, count_fluctuations, energy_spectrum, fit_exponent,
                                             gnf_exponent, local_coupling, piv, spectral_exponent)
from paperbook.active_fluid.models import (advect, poisson_particles, random_dots, random_velocity_field,
                                           vicsek)
from paperbook.core import resolve

from helpers import cli

HAS_DATA = bool(os.environ.get("PAPERBOOK_DATA")) and (Path(os.environ["PAPERBOOK_DATA"]) / "ecoli").is_dir()


# ---- box counting ---------------------------------------------------------------------------------------
def test_box_fluctuations_by_hand():
    # two frames of 2 × 2 pixels; l = 1: the four pixels' temporal std; l = 2: the frame means' std
    frames = np.array([[[1.0, 2.0], [3.0, 4.0]], [[3.0, 2.0], [1.0, 8.0]]])
    out = box_fluctuations(frames, [1, 2])
    per_pixel_std = np.std(frames, axis=0, ddof=1)  # [[1.414, 0], [1.414, 2.828]]
    assert out["N"].tolist() == [1.0, 4.0]
    assert out["dN"][0] == pytest.approx(per_pixel_std.mean() * 1)
    assert out["dN"][1] == pytest.approx(np.std([2.5, 3.5], ddof=1) * 4)  # means 2.5 and 3.5, times l²


def test_independent_pixels_give_one_half_and_a_wrong_area_factor_would_not():
    rng = np.random.default_rng(0)
    frames = rng.normal(1.0, 0.1, size=(40, 256, 256))
    f = box_fluctuations(frames, [1, 2, 4, 8, 16, 32])
    assert abs(gnf_exponent(f) - 0.5) < 0.02
    wrong = fit_exponent(f["N"], f["dN"] / f["l"])  # ΔN scaled by l instead of l²: exponent 0.0
    assert abs(wrong - 0.5) > 0.4


def test_count_fluctuations_by_hand():
    box = 4.0
    # two snapshots of two particles; boxes of side 2 (four boxes): counts [2,0,0,0] then [1,0,0,1]
    pos = np.array([[[0.5, 0.5], [1.5, 1.5]], [[0.5, 0.5], [3.5, 3.5]]])
    out = count_fluctuations(pos, box, [2.0])
    stds = np.std([[2, 0, 0, 0], [1, 0, 0, 1]], axis=0, ddof=1)
    assert out["N"][0] == pytest.approx(0.5) and out["dN"][0] == pytest.approx(stds.mean())
    # in a domain of side 5 the boxes of side 2 cover [0, 4)²: a particle beyond them in x or in y is left out
    far = np.array([[[0.5, 4.5], [4.5, 0.5]]] * 2)
    out = count_fluctuations(np.concatenate([pos, far], axis=1), 5.0, [2.0])
    assert out["N"][0] == pytest.approx(0.5) and out["dN"][0] == pytest.approx(stds.mean())


def test_poisson_particles_and_the_fit_range_check():
    f = count_fluctuations(poisson_particles(4096, 64, 60, seed=1), 64, [1, 2, 4, 8, 16])
    assert abs(gnf_exponent(f) - 0.5) < 0.03
    with pytest.raises(ValueError, match="at least 3 are needed"):
        gnf_exponent(f, lmin=8)
    # the fit range includes its ends: l = 2, 4, 8 (N = 4, 16, 64; ΔN = 4, 4, 8) give the slope 0.25 by hand
    # (in units of ln 2: x = 2, 4, 6 and y = 2, 2, 3, so Σ(x - x̄)(y - ȳ) / Σ(x - x̄)² = 2 / 8)
    hand = {"l": np.array([1, 2, 4, 8]), "N": np.array([1.0, 4, 16, 64]), "dN": np.array([9.0, 4, 4, 8])}
    assert gnf_exponent(hand, lmin=2) == pytest.approx(0.25)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="frames must be"):
        box_fluctuations(np.zeros((1, 8, 8)), [2])
    with pytest.raises(ValueError, match="box sizes"):
        box_fluctuations(np.zeros((3, 8, 8)), [16])
    with pytest.raises(ValueError, match="positions must be"):
        count_fluctuations(np.zeros((3, 5)), 4.0, [1.0])


# ---- spectra ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("beta", [1.0, 5 / 3, 3.0])
def test_the_spectrum_recovers_a_prescribed_exponent(beta):
    n = 512
    u, v = random_velocity_field(n, beta, seed=3)
    k, E = energy_spectrum(u, v, 1.0)
    got = spectral_exponent(k, E, 2 * math.pi * 8 / n, 2 * math.pi * 100 / n)
    assert abs(got - beta) < 0.1
    # forgetting the ring length 2πk (a plain ring average) shifts the exponent by one
    ring_avg = E / (2 * math.pi * k)
    assert abs(spectral_exponent(k, ring_avg, 2 * math.pi * 8 / n, 2 * math.pi * 100 / n) - (beta + 1)) < 0.1


def test_spectrum_of_one_mode_and_bad_fields():
    n, dx = 32, 0.5
    x = np.arange(n) * dx
    v = np.sin(2 * math.pi * 3 * x / (n * dx))[:, None].repeat(n, 1)  # varies along y
    k, E = energy_spectrum(np.zeros_like(v), v, dx, bins=n)
    assert k[np.argmax(E)] == pytest.approx(2 * math.pi * 3 / (n * dx), rel=0.05)  # the ring holding the mode
    with pytest.raises(ValueError, match="missing"):
        energy_spectrum(np.full((8, 8), np.nan), np.zeros((8, 8)), 1.0)
    with pytest.raises(ValueError, match="same 2-D grid"):
        energy_spectrum(np.zeros((8, 8)), np.zeros((8, 9)), 1.0)


def test_white_noise_spectrum_by_hand_and_the_rings_stop_at_nyquist():
    # u, v independent N(0, σ²) per grid point: every mode has E|û|² = n² σ², so the density is
    # (n²σ² + n²σ²)/2 · Δx² / ((2π)² n²) = σ² Δx² / (2π)² and E(k) = 2πk · that = k σ² Δx² / (2π).
    # Its integral over the whole square of wavevectors, (2π/Δx)² · σ²Δx²/(2π)² = σ², is ⟨u² + v²⟩/2 (Parseval).
    n, dx, sigma = 256, 0.5, 1.5
    rng = np.random.default_rng(0)
    u, v = rng.normal(0, sigma, (n, n)), rng.normal(0, sigma, (n, n))
    k, E = energy_spectrum(u, v, dx)
    outer = k > 2 * math.pi * 16 / (n * dx)  # rings holding many modes
    assert np.mean(E[outer] / k[outer]) == pytest.approx(sigma ** 2 * dx ** 2 / (2 * math.pi), rel=0.05)
    assert k.max() < math.pi / dx  # rings beyond the Nyquist wavenumber (the square's corners) are left out


def test_random_fields_are_divergence_free_with_the_asked_rms():
    u, v = random_velocity_field(64, 3.0, rms=2.5, seed=0, kcut=1.0)
    kx = np.fft.fftfreq(64)[None, :]
    ky = np.fft.fftfreq(64)[:, None]
    div = np.fft.ifft2(1j * kx * np.fft.fft2(u) + 1j * ky * np.fft.fft2(v)).real
    assert np.abs(div).max() < 1e-10 and np.sqrt(np.mean(u ** 2 + v ** 2)) == pytest.approx(2.5)


# ---- PIV -------------------------------------------------------------------------------------------------
def test_piv_finds_a_uniform_shift():
    img = random_dots(256, seed=2)
    moved = advect(img, np.full((256, 256), 2.5), np.full((256, 256), -1.5))
    got = piv(img, moved, window=32, overlap=16)
    assert np.median(got["u"]) == pytest.approx(2.5, abs=0.1) and np.median(got["v"]) == pytest.approx(-1.5, abs=0.1)
    assert got["replaced"] < 0.05
    with pytest.raises(ValueError, match="same 2-D shape"):
        piv(img, img[:100])


# ---- the Vicsek model ------------------------------------------------------------------------------------
def test_vicsek_orders_at_low_noise_and_shows_giant_fluctuations():
    sizes = [1.0, 2.0, 4.0, 8.0]
    kw = dict(n=2048, box=32, steps=600, keep_from=200, keep_every=4, seed=0)
    low, high = vicsek(eta=0.2, **kw), vicsek(eta=0.9, **kw)
    assert low["order"] > 0.7 and high["order"] < 0.2
    g_low = gnf_exponent(count_fluctuations(low["positions"], 32, sizes))
    g_high = gnf_exponent(count_fluctuations(high["positions"], 32, sizes))
    assert g_low > 0.65 and abs(g_high - 0.5) < 0.06
    with pytest.raises(ValueError, match="keep_from"):
        vicsek(steps=10, keep_from=20)


def test_vicsek_step_by_hand():
    # without noise each particle takes the direction of the summed unit velocities of the particles in its own
    # cell and the eight around it (periodic), then moves v0 along it. The headings of step t are read from the
    # displacements of consecutive snapshots; step 2's headings are recomputed from step 1's by that rule.
    box, v0 = 12, 0.5
    pos = vicsek(n=30, box=box, v0=v0, eta=0.0, steps=3, keep_from=0, keep_every=1, seed=4)["positions"]
    d = (np.diff(pos.astype(np.float64), axis=0) + box / 2) % box - box / 2  # (2, n, 2), unwrapped steps
    assert np.allclose(np.hypot(d[..., 0], d[..., 1]), v0, atol=1e-4)
    th1, th2 = np.arctan2(d[0, :, 1], d[0, :, 0]), np.arctan2(d[1, :, 1], d[1, :, 0])
    cell = np.floor(pos[1]).astype(int) % box  # the cells at the start of step 2
    gap = (cell[:, None, :] - cell[None, :, :]) % box
    near = np.all((gap <= 1) | (gap == box - 1), axis=-1)  # (n, n): in the 3 × 3 cells around, itself included
    want = np.angle(near.astype(float) @ np.exp(1j * th1))
    assert near.sum(1).max() > 2 and (near.sum(1) == 1).any()  # both crowded and lone particles are checked
    assert np.abs(np.angle(np.exp(1j * (th2 - want)))).max() < 1e-3


# ---- readers ---------------------------------------------------------------------------------------------
def test_frame_reader_round_trip_and_refusals(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    a = np.arange(12, dtype=np.uint16).reshape(3, 4)
    tifffile.imwrite(tmp_path / "a.tif", a)
    tifffile.imwrite(tmp_path / "b.tif", a * 2)
    frames = read_frames([tmp_path / "a.tif", tmp_path / "b.tif"])
    assert frames.shape == (2, 3, 4) and frames.dtype == np.float64 and frames[1, 2, 3] == 22
    tifffile.imwrite(tmp_path / "c.tif", np.zeros((3, 5), np.uint8))
    with pytest.raises(ValueError, match="differs from the first frame"):
        read_frames([tmp_path / "a.tif", tmp_path / "c.tif"])
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((3, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="2-D numeric grey-level"):
        read_frames([tmp_path / "a.tif", tmp_path / "rgb.tif"])
    (tmp_path / "text.tif").write_text("hello")
    with pytest.raises(ValueError, match="not a readable image"):
        read_frames([tmp_path / "a.tif", tmp_path / "text.tif"])
    with pytest.raises(ValueError, match="at least 2 frames"):
        read_frames([tmp_path / "a.tif"])


def test_frame_reader_other_formats_missing_frames_and_non_numeric_pixels(tmp_path):
    from PIL import Image

    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    Image.fromarray(a).save(tmp_path / "a.png")  # not a TIFF: read by Pillow
    Image.fromarray(a[::-1].copy()).save(tmp_path / "b.png")
    assert read_frames([tmp_path / "a.png", tmp_path / "b.png"]).tolist() == [a.tolist(), a[::-1].tolist()]
    with pytest.raises(FileNotFoundError, match="no frame at .*missing.tif"):
        read_frames([tmp_path / "a.png", tmp_path / "missing.tif"])
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "mask.tif", np.zeros((3, 4), bool))  # a boolean mask is no grey level
    with pytest.raises(ValueError, match="2-D numeric grey-level image, got shape .3, 4., bool"):
        read_frames([tmp_path / "a.png", tmp_path / "mask.tif"])


def test_normalise_frames_divides_each_frame_by_its_own_mean():
    frames = np.array([[[1.0, 3.0]], [[10.0, 30.0]]])  # means 2 and 20
    assert normalise_frames(frames).tolist() == [[[0.5, 1.5]], [[0.5, 1.5]]]
    with pytest.raises(ValueError, match="zero or negative mean intensity"):
        normalise_frames(np.array([[[1.0, 3.0]], [[0.0, 0.0]]]))


def test_piv_csv_reader(tmp_path):
    rows = ["x,y,u,v"] + [f"{x},{y},{x / 10},{-y / 10}" for y in (5, 10, 15, 20) for x in (5, 10, 15, 20)]
    (tmp_path / "ok.csv").write_text("\n".join(rows) + "\n")
    f = read_piv_csv(tmp_path / "ok.csv")
    assert f["dx"] == 5.0 and f["u"].shape == (4, 4) and f["u"][0, 3] == 2.0 and f["v"][3, 0] == -2.0
    (tmp_path / "cols.csv").write_text("x,y,speed\n1,1,1\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['u', 'v'\]"):
        read_piv_csv(tmp_path / "cols.csv")
    (tmp_path / "hole.csv").write_text("\n".join(rows[:-1]) + "\n")
    with pytest.raises(ValueError, match="do not fill a regular grid"):
        read_piv_csv(tmp_path / "hole.csv")
    assert f["x"][0].tolist() == [5, 10, 15, 20] and f["y"][:, 0].tolist() == [5, 10, 15, 20]  # x along columns
    small = ["x,y,u,v"] + [f"{x},{y},0,0" for y in (5, 10, 15) for x in (5, 10, 15)]
    (tmp_path / "small.csv").write_text("\n".join(small) + "\n")
    with pytest.raises(ValueError, match="9 rows do not fill a regular grid of 3 × 3 points"):
        read_piv_csv(tmp_path / "small.csv")  # too few points for a spectrum
    uneven = ["x,y,u,v"] + [f"{x},{y},0,0" for y in (5, 10, 15, 20) for x in (5, 10, 15, 25)]
    (tmp_path / "uneven.csv").write_text("\n".join(uneven) + "\n")
    with pytest.raises(ValueError, match=r"grid spacing is not uniform \(5 to 10\)"):
        read_piv_csv(tmp_path / "uneven.csv")


def test_local_coupling_sees_a_planted_link():
    rng = np.random.default_rng(0)
    T, H, W = 12, 128, 128
    amp = np.kron(rng.uniform(0.1, 1.0, size=(4, 4)), np.ones((32, 32)))  # fluctuation amplitude per 32-px box
    frames = 1 + amp * rng.normal(size=(T, H, W)) * 0.01
    ys, xs = np.mgrid[8:128:16, 8:128:16]
    speed = np.kron(rng.uniform(0.1, 1.0, size=(4, 4)), np.ones((2, 2)))
    linked = [{"x": xs, "y": ys, "u": np.kron(amp[::32, ::32], np.ones((2, 2))), "v": np.zeros_like(speed)}]
    unlinked = [{"x": xs, "y": ys, "u": speed, "v": np.zeros_like(speed)}]
    assert local_coupling(frames, linked, [32])["r"][0] > 0.9
    assert abs(local_coupling(frames, unlinked, [32])["r"][0]) < 0.7
    # boxes without PIV vectors (here the right half of the frame) are left out, not counted as still fluid
    left = [{key: f[key][:, :4] for key in ("x", "y", "u", "v")} for f in linked]
    out = local_coupling(frames, left, [32])
    assert out["boxes"][0] == 8 and out["r"][0] > 0.9


# ---- the chapter -----------------------------------------------------------------------------------------
def _results(poisson, disordered, ordered, beta_err, piv_err, piv_beta, boot, gamma, beta, r, boxes):
    "Crafted per-seed results of the four studies (three seeds, a little seed noise)."
    noise = (0.0, 0.004, -0.004)
    sims = {s: {"poisson": {"gamma": poisson + e}, "disordered": {"gamma": disordered + e},
                "ordered": {"gamma": ordered + e}} for s, e in enumerate(noise)}
    spectra = {s: {1.0: 1.0 + beta_err, 5 / 3: 5 / 3 - beta_err / 2, 3.0: 3.0} for s in range(3)}
    pivs = {s: {"rel_rms_error": piv_err, "beta_piv": 3.0 + piv_beta, "beta_true": 3.0} for s in range(3)}
    real = {"boot": {s: 0.5 + boot + e for s, e in enumerate(noise)}, "control": {s: 0.5 for s in range(3)},
            "gamma": gamma, "beta": beta, "coupling": {"r": [r, 0.6], "boxes": [boxes, 100], "l": [16, 32]}}
    return sims, spectra, pivs, real


def test_claims_follow_crafted_results():
    from paperbook.active_fluid.chapter import make_claims

    cfg = resolve("ecoli-gnf", "cpu-toy")
    rows = make_claims(*_results(0.5, 0.52, 0.8, 0.05, 0.05, 0.1, 0.3, 0.8, 3.2, 0.5, 28), cfg)
    assert len(rows) == 10 and all(r["holds"] for r in rows), [r["claim"] for r in rows if not r["holds"]]
    assert rows[2]["per_seed"][1]["value"] == pytest.approx({"γ ordered": 0.804, "γ disordered": 0.524})
    assert rows[3]["per_seed"][0]["value"] == pytest.approx(0.05)  # the worst of the three β
    # each just past its threshold: γ 0.535 and 0.56 off 0.5, ordered only 0.1 above, β off by 0.12, PIV 11% off,
    # its β 0.25 off, frames 0.04 above the control, γ 0.69, β 2.4; and r = 0.5 over 7 boxes: the lower end of
    # its interval, tanh(atanh 0.5 - 1.96/2) = -0.41, is below 0 (over 28 boxes it is +0.16)
    rows = make_claims(*_results(0.535, 0.56, 0.66, 0.12, 0.11, -0.25, 0.04, 0.69, 2.4, 0.5, 7), cfg)
    assert [r["holds"] for r in rows] == [False] * 10
    below = make_claims(*_results(0.465, 0.44, 0.8, -0.12, 0.05, 0.25, 0.3, 0.91, 3.6, 0.5, 28), cfg)
    assert [r["holds"] for r in below][:6] == [False, False, True, False, True, False]  # misses on the low side
    assert [r["holds"] for r in below][7:9] == [False, False]
    from paperbook.active_fluid.chapter import _r_low

    assert _r_low(0.5, 28) == pytest.approx(0.15602, abs=1e-5)  # tanh(atanh 0.5 - 1.96 / sqrt(28 - 3))
    rows = make_claims(*_results(0.5, 0.52, 0.8, 0.05, 0.05, 0.1, 0.3, 0.8, 3.2, 0.5, 28)[:3], None, cfg)
    assert len(rows) == 7 and not rows[-1]["holds"] and rows[-1]["ours"] == "not on this machine"


@pytest.mark.parametrize("overrides, words", [
    ({"sim.snapshots": 200}, "must be below sim.vicsek_steps"),
    ({"sim.snapshots": 1}, "sim.snapshots must be >= 2, got 1"),
    ({"real.piv_pairs": 10}, "real.piv_pairs must lie in 1..9"),
    ({"sim.count_sizes": "1,128"}, "sim.count_sizes go up to 128"),
    ({"sim.fluctuations": 1}, "unknown override 'sim.fluctuations'"),
])
def test_bad_config_fails_before_any_work(overrides, words):
    with pytest.raises(ValueError, match=words):
        resolve("ecoli-gnf", "cpu-toy", overrides)


def test_the_chapter_runs_small_and_records_its_data(tmp_path):
    from paperbook.active_fluid.chapter import CHAPTER

    text = lambda v: json.dumps(v) if isinstance(v, tuple) else v
    sets = [a for k, v in CHAPTER.smoke.items() for a in ("--set", f"{k}={text(v)}")]
    r = cli("run", "ecoli-gnf", *sets, "--out", tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads((tmp_path / "metrics.json").read_text())
    rows = {row["claim"]: row for row in rec["reproduction"]}
    assert all(len(row["per_seed"]) >= 1 for row in rows.values())
    assert rec["data"]["ecoli"]["source"] == ("folder" if HAS_DATA else "generated")


@pytest.mark.skipif(not HAS_DATA, reason="data set ecoli is not on this machine (PAPERBOOK_DATA)")
def test_the_authors_data_gives_giant_fluctuations_and_a_steep_spectrum():
    from paperbook.active_fluid.chapter import RealConfig, real_data

    real = real_data(RealConfig(piv_pairs=1), seeds=[0, 1])
    assert 0.55 < real["gamma"] < 0.75 and all(abs(c - 0.5) < 0.03 for c in real["control"].values())
    assert 2.3 < real["beta"] < 3.3
    assert real["fields"][0]["replaced"] < 0.05


# ---- found by mutation of measures.py --------------------------------------------------------------------
def test_more_shapes_and_sizes_are_refused():
    with pytest.raises(ValueError, match="positions must be"):
        count_fluctuations(np.zeros((3, 5, 3)), 4.0, [1.0])  # three coordinates
    with pytest.raises(ValueError, match="box size 8.0 is larger than the domain 4.0"):
        count_fluctuations(np.zeros((3, 5, 2)), 4.0, [1.0, 8.0])
    with pytest.raises(ValueError, match="at least 4 × 4"):
        energy_spectrum(np.zeros((3, 3)), np.zeros((3, 3)), 1.0)
    a = random_dots(48, seed=0)
    with pytest.raises(ValueError, match="window <= frame side"):
        piv(a, a, window=64, overlap=16)


def test_fits_include_both_ends_of_their_range_and_skip_empty_values():
    x = np.array([1.0, 2, 4, 8, 16])
    assert fit_exponent(x, x ** 2, lo=2, hi=8) == pytest.approx(2.0)  # exactly three points: 2, 4 and 8
    assert spectral_exponent(x, x ** -3.0, 2, 8) == pytest.approx(3.0)
    assert fit_exponent(x, np.r_[0.0, x[1:] ** 1.5]) == pytest.approx(1.5)  # ΔN = 0 has no logarithm: left out
    hand = {"l": np.array([1, 2, 4, 8, 16]), "N": np.array([1.0, 4, 16, 64, 256]), "dN": np.array([9.0, 4, 4, 8, 1])}
    assert gnf_exponent(hand, lmin=2, lmax=8) == pytest.approx(0.25)  # l = 8 counts, l = 16 does not


@pytest.mark.parametrize("n, dx", [(32, 1.0), (28, 1.0), (21, 0.5), (43, 0.5)])
def test_the_fundamental_mode_falls_in_the_first_ring(n, dx):
    # one wavelength across the box, along x. For 28 × 28 at Δx = 1 (and the others) 10**log10(2π/(nΔx)), the
    # rings' first edge, rounds above the grid's own 2π/(nΔx): that mode, the largest scale, was dropped
    x = np.arange(n) * dx
    u = np.cos(2 * math.pi * x / (n * dx))[None, :].repeat(n, 0)
    k, E = energy_spectrum(u, np.zeros_like(u), dx)
    assert k[0] == pytest.approx(2 * math.pi / (n * dx)) and np.argmax(E) == 0


def test_piv_replaces_vectors_below_the_signal_to_noise_floor():
    img = random_dots(128, seed=2)
    moved = advect(img, np.full((128, 128), 2.5), np.full((128, 128), -1.5))
    s2n = piv(img, moved, window=32, overlap=16)["s2n"]
    floor = float(np.median(s2n))  # about half the vectors fall below it
    got = piv(img, moved, window=32, overlap=16, min_s2n=floor)
    assert got["replaced"] == pytest.approx(float((s2n < floor).mean())) and 0.2 < got["replaced"] < 0.8


def test_local_coupling_by_hand_with_vertical_motion_and_a_vector_beyond_the_boxes():
    rng = np.random.default_rng(1)
    T, side, l = 4, 100, 32  # boxes of 32 cover [0, 96)²: 3 × 3 boxes
    frames = rng.normal(size=(T, side, side)) * np.kron(rng.uniform(0.5, 2, (4, 4)), np.ones((25, 25)))
    dn = np.array([[frames[:, l * i:l * i + l, l * j:l * j + l].mean((1, 2)).std(ddof=1) for j in range(3)]
                   for i in range(3)]).ravel()
    ys, xs = np.mgrid[16:96:32, 16:96:32]
    v = rng.uniform(0.5, 2, (3, 3))
    fields = [{"x": np.c_[xs, [[98]] * 3], "y": np.c_[ys, ys[:, :1]], "u": np.zeros((3, 4)),
               "v": np.c_[v, [[50.0]] * 3]}]  # the fourth column lies beyond the boxes (x = 98)
    out = local_coupling(frames, fields, [l])
    assert out["boxes"][0] == 9
    assert out["r"][0] == pytest.approx(np.corrcoef(dn, (v ** 2 / 2).ravel())[0, 1])


# ---- found by mutation of models.py ----------------------------------------------------------------------
def test_vicsek_needs_a_box_of_three_cells():
    with pytest.raises(ValueError, match="box >= 3"):
        vicsek(n=8, box=2, steps=2, keep_from=0)


def test_the_cutoff_damps_each_mode_by_a_gaussian():
    # the same seed draws the same random modes: with and without kcut the Fourier amplitudes differ by
    # e^{-(k/kcut)²} times one constant (the RMS rescaling)
    n, kcut = 32, 1.2
    u0, _ = random_velocity_field(n, 2.0, seed=5)
    u1, _ = random_velocity_field(n, 2.0, seed=5, kcut=kcut)
    k1 = 2 * math.pi * np.fft.fftfreq(n)
    k = np.hypot(*np.meshgrid(k1, k1))
    a0, a1 = np.fft.fft2(u0), np.fft.fft2(u1)
    live = np.abs(a0) > 1e-8 * np.abs(a0).max()
    ratio = np.abs(a1[live]) / np.abs(a0[live]) / np.exp(-((k[live] / kcut) ** 2))
    assert ratio == pytest.approx(np.full(live.sum(), ratio[0]), rel=1e-6)


def test_advect_moves_a_periodic_image_by_a_fraction_of_a_pixel():
    # a smooth periodic pattern shifted by 2.5 px right and 1.5 px down, wrapping at the edges: cubic
    # interpolation reproduces the shifted pattern within 1e-3 (linear interpolation is off by ~1e-2)
    n = 64
    yy, xx = np.mgrid[0:n, 0:n].astype(float)
    pattern = lambda x, y: np.sin(2 * math.pi * 3 * x / n) * np.cos(2 * math.pi * 2 * y / n)
    moved = advect(pattern(xx, yy), np.full((n, n), 2.5), np.full((n, n), 1.5))
    assert np.abs(moved - pattern(xx - 2.5, yy - 1.5)).max() < 1e-3
