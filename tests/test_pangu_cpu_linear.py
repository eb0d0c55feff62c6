"""The trainers' fp32 nn.Linear products through oneDNN (train.cpu_linear): values, gradients, where it applies."""

import pytest
import torch
import torch.nn.functional as F

import paperbook.pangu.train as pt
from paperbook.core import resolve
from paperbook.pangu.distributed import build_parallel, synthetic_rows, train_parallel
from paperbook.pangu.model import ModelConfig, PanguAlpha
from paperbook.pangu.parallel import ParallelPlan
from paperbook.pangu.train import (TrainConfig, cpu_linear, cpu_vendor, cpuinfo_field, onednn_available,
                                   onednn_linear, pick_cpu_linear, train_lm)

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="no oneDNN fp32 linear kernel here")
SMALL = ModelConfig(vocab_size=96, seq_len=16, num_layers=2, d=32, num_heads=4, dropout=0.0)


def _float64_reference(f, *tensors):
    "f's value and gradients computed by ATen in float64: an independent reference for the fp32 oneDNN op."
    leaves = [t.detach().double().requires_grad_() for t in tensors]
    out = f(*leaves)
    out.backward()
    return out.item(), [t.grad for t in leaves]


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_linear_and_its_gradients_equal_float64_products(bias):
    torch.manual_seed(0)
    x, w = torch.randn(3, 7, 48, requires_grad=True), torch.randn(20, 48, requires_grad=True)
    b = torch.randn(20, requires_grad=True) if bias else None
    ins = (x, w, b) if bias else (x, w)
    dy = torch.randn(3, 7, 20)  # a loss whose ∂L/∂Y is dy: every entry of the backward matters

    def loss(op):
        return lambda x, w, b=None: (op(x, w, b) * dy.to(x.dtype)).sum()

    value, grads = _float64_reference(loss(F.linear), *ins)
    out = loss(onednn_linear)(*ins)
    out.backward()
    assert out.dtype == torch.float32 and abs(out.item() - value) < 1e-4 * abs(value) + 1e-4
    for t, g in zip(ins, grads, strict=True):
        torch.testing.assert_close(t.grad.double(), g, atol=1e-4, rtol=1e-5)
    # by hand: ∂L/∂W = Σ_rows dyᵀ x, ∂L/∂b = Σ_rows dy, ∂L/∂X = dy W
    torch.testing.assert_close(w.grad.double(), (dy.reshape(-1, 20).T.double() @ x.detach().reshape(-1, 48).double()),
                               atol=1e-4, rtol=1e-5)
    if bias:
        torch.testing.assert_close(b.grad.double(), dy.reshape(-1, 20).sum(0).double(), atol=1e-5, rtol=1e-5)


@needs_onednn
def test_a_weight_used_twice_gets_the_sum_of_both_gradients():
    torch.manual_seed(1)
    x1, x2, w = torch.randn(5, 16), torch.randn(4, 16), torch.randn(8, 16, requires_grad=True)
    (onednn_linear(x1, w, None).square().sum() + onednn_linear(x2, w, None).sum()).backward()
    by_hand = 2 * (x1.double() @ w.detach().double().T).T @ x1.double() + torch.ones(8, 4).double() @ x2.double()
    torch.testing.assert_close(w.grad.double(), by_hand, atol=1e-4, rtol=1e-5)


class _Counting:
    "Stands in for onednn_linear: counts the calls and hands them to `op`."

    def __init__(self, op=F.linear):
        self.op, self.calls = op, 0

    def __call__(self, x, w, b):
        self.calls += 1
        return self.op(x, w, b)


@needs_onednn
def test_cpu_linear_reroutes_plain_fp32_cpu_layers_only_and_restores_them(monkeypatch):
    counting = _Counting()
    monkeypatch.setattr(pt, "onednn_linear", counting)
    fp32, bf16, own = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3).to(torch.bfloat16), torch.nn.Linear(4, 3)
    own.forward = lambda x: x  # a layer whose forward was replaced already is left alone
    x = torch.randn(2, 4)
    with cpu_linear([fp32, bf16, own, fp32], "onednn") as n:  # fp32 listed twice: changed once
        assert n == 2 and "forward" in vars(fp32) and "forward" in vars(bf16)
        torch.testing.assert_close(fp32(x), F.linear(x, fp32.weight, fp32.bias))
        assert counting.calls == 1
        bf16(x.bfloat16())  # not fp32: F.linear
        assert own(x) is x and counting.calls == 1
        with torch.autocast("cpu", dtype=torch.bfloat16):  # under CPU autocast F.linear keeps autocast's choice
            assert fp32(x).dtype == torch.bfloat16 and counting.calls == 1
    assert "forward" not in vars(fp32) and "forward" not in vars(bf16) and "forward" in vars(own)
    with pytest.raises(RuntimeError, match="inside"), cpu_linear(fp32, "onednn"):
        raise RuntimeError("inside")
    assert "forward" not in vars(fp32)  # restored after an error too
    with cpu_linear(fp32, "aten") as n:
        fp32(x)
    assert n == 0 and counting.calls == 1


@pytest.mark.parametrize("vendor, available, picked", [
    ("AuthenticAMD", True, "onednn"), ("HygonGenuine", True, "onednn"),  # MKL's generic path: oneDNN
    ("GenuineIntel", True, "aten"), ("", True, "aten"),  # MKL's own path, or a CPU we cannot name: MKL
    ("AuthenticAMD", False, "aten")])  # no oneDNN kernel (not x86-64, or a build without mkldnn)
def test_auto_picks_onednn_on_x86_cpus_that_are_not_intels(monkeypatch, vendor, available, picked):
    monkeypatch.setattr(pt, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(pt, "onednn_available", lambda: available)
    assert pick_cpu_linear("auto") == pick_cpu_linear() == picked
    assert pick_cpu_linear("aten") == "aten" and pick_cpu_linear("onednn") == "onednn"  # explicit choices stand
    assert TrainConfig().cpu_linear == "auto"  # the default


@needs_onednn
@pytest.mark.parametrize("vendor, rerouted", [("AuthenticAMD", 1), ("GenuineIntel", 0)])
def test_cpu_linear_auto_reroutes_by_vendor(monkeypatch, vendor, rerouted):
    monkeypatch.setattr(pt, "cpu_vendor", lambda: vendor)
    layer = torch.nn.Linear(4, 3)
    with cpu_linear(layer) as n:
        assert n == rerouted and ("forward" in vars(layer)) == bool(rerouted)


def test_cpu_vendor_reads_cpuinfo(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nprocessor\t: 1\n"
                    "vendor_id\t: AuthenticAMD\n")
    assert cpu_vendor(str(info)) == "AuthenticAMD"
    assert cpuinfo_field("cpu family", str(info)) == "25" and cpuinfo_field("model name", str(info)) == ""
    bare = tmp_path / "bare"
    bare.write_text("processor\t: 0\nmodel name\t: some ARM core\n")  # no vendor_id: the platform's string
    monkeypatch.setattr(pt.platform, "processor", lambda: "Intel64 Family 6 Model 143 Stepping 8, GenuineIntel")
    assert cpu_vendor(str(bare)) == "GenuineIntel"
    monkeypatch.setattr(pt.platform, "processor", lambda: "arm")
    assert cpu_vendor(str(tmp_path / "missing")) == ""


def test_unknown_kernels_are_refused_naming_the_choices():
    layer = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="'blas' is not one of auto, onednn, aten"), cpu_linear(layer, "blas"):
        pass
    with pytest.raises(ValueError, match="train.cpu_linear 'mkl' is not one of auto, onednn, aten"):
        resolve("pangu-alpha", "cpu-toy", {"train.cpu_linear": "mkl"})


@needs_onednn
@pytest.mark.parametrize("kernel", ["onednn", "aten"])
def test_both_trainers_use_onednn_unless_told_not_to_and_train_alike(monkeypatch, kernel):
    rows = synthetic_rows(64, 16, 96, mean_doc=6)
    kw = dict(eod_id=0, train=TrainConfig(steps=3, batch_size=8, lr=3e-3, warmup=1, cpu_linear="aten"))
    torch.manual_seed(0)
    ref = train_lm(PanguAlpha(SMALL), rows, **kw)  # ATen throughout
    counting = _Counting(pt.onednn_linear)
    monkeypatch.setattr(pt, "onednn_linear", counting)
    kw["train"] = TrainConfig(steps=3, batch_size=8, lr=3e-3, warmup=1, cpu_linear=kernel)
    torch.manual_seed(0)
    one = train_lm(PanguAlpha(SMALL), rows, **kw)
    after_one = counting.calls
    par = build_parallel(SMALL, ParallelPlan(), eod_id=0)
    two = train_parallel(par, rows, **kw)["losses"]
    linears = sum(isinstance(m, torch.nn.Linear) for m in par.modules[0].modules())  # each called once a forward
    if kernel == "onednn":
        assert linears > 0 and after_one == counting.calls - after_one == 3 * linears
    else:
        assert counting.calls == 0
    assert len(ref) == len(one) == len(two) == 3
    assert max(abs(a - b) for a, b in zip(ref, one)) < 1e-5 and max(abs(a - b) for a, b in zip(ref, two)) < 1e-5
    assert not any("forward" in vars(m) for m in par.modules[0].modules())  # nothing left rerouted


# ---- found by mutation of pangu/train.py ---------------------------------------------------------------
def test_cpu_vendor_falls_back_on_the_platform_for_amd_too(tmp_path, monkeypatch):
    monkeypatch.setattr(pt.platform, "processor", lambda: "AMD64 Family 25 Model 33 Stepping 0, AuthenticAMD")
    assert cpu_vendor(str(tmp_path / "none-here")) == "AuthenticAMD"


def test_cpuinfo_field_matches_the_whole_name(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU model 9\nmodel\t: 143\n")
    assert cpuinfo_field("model", str(info)) == "143" and cpuinfo_field("model name", str(info)) == "Some CPU model 9"


@needs_onednn
def test_onednn_linear_without_bias_has_the_aten_gradients():
    torch.manual_seed(0)
    layer = torch.nn.Linear(5, 3, bias=False)
    x = torch.randn(2, 4, 5, requires_grad=True)
    ref_x, ref_w = torch.autograd.grad(F.linear(x, layer.weight).pow(2).sum(), (x, layer.weight))
    with cpu_linear(layer, "onednn") as n:
        assert n == 1
        gx, gw = torch.autograd.grad(layer(x).pow(2).sum(), (x, layer.weight))
    torch.testing.assert_close(gx, ref_x)
    torch.testing.assert_close(gw, ref_w)
