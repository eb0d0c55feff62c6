"""PanGu-α in parallel (chapter 1b): plans, stages, the trainer, checkpoints, the cluster plan, and every layout
of the issue under torchrun (gloo) against one process."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from paperbook.core import resolve
from paperbook.pangu.cluster import GiB, draw_mesh, dry_run, memory_plan, placement, plan_report
from paperbook.pangu.distributed import (CkptConfig, build_parallel, latest_checkpoint, synthetic_rows,
                                        train_parallel)
from paperbook.pangu.model import SIZES, ModelConfig, PanguAlpha, num_params
from paperbook.pangu.parallel import ParallelPlan, apply_remat, split_stages, stage_layers
from paperbook.pangu.train import TrainConfig, fusable, make_optimizer, next_token_targets, train_lm

from helpers import ENV, cli, torchrun

SCRIPT = Path(__file__).parent / "dist_scripts" / "pangu_parallel.py"
SMALL = ModelConfig(vocab_size=96, seq_len=16, num_layers=4, d=32, num_heads=4, dropout=0.0)
TINY_SETS = ["data.source=synthetic", "model.vocab_size=96", "model.seq_len=16", "model.num_layers=4", "model.d=32",
             "model.num_heads=4", "model.dropout=0", "train.steps=6", "train.warmup=1", "train.batch_size=8",
             "data.synthetic_rows=64"]


# ---- the plan -------------------------------------------------------------------------------------
@pytest.mark.parametrize("plan, world, needle", [
    (ParallelPlan(tp=3), 3, "num_heads (32) must be divisible by tp (3)"),
    (ParallelPlan(pp=3), 3, "num_layers (32, the query layer included) must be divisible by pp"),
    (ParallelPlan(tp=2, dp_shard=2), 8, "world size 8 != dp_replicate × dp_shard × pp × tp = 1 × 2 × 1 × 2 = 4"),
    (ParallelPlan(schedule="zero-bubble"), 1, "schedule 'zero-bubble' is not one of gpipe, 1f1b, interleaved-1f1b"),
    (ParallelPlan(remat="some"), 1, "remat 'some' is not one of off, full, selective"),
    (ParallelPlan(tp=0), 1, "tp must be a positive integer, got 0"),
    (ParallelPlan(dp_shard=2, zero1=True), 2, "zero1 (ZeroRedundancyOptimizer over DDP) needs dp_replicate > 1"),
    (ParallelPlan(microbatches=4), 1, "microbatches and stages_per_rank > 1 need pp > 1"),
    (ParallelPlan(pp=2, schedule="interleaved-1f1b"), 2, "interleaved-1f1b needs stages_per_rank >= 2"),
    (ParallelPlan(pp=2, stages_per_rank=2), 2, "stages_per_rank > 1 needs schedule 'interleaved-1f1b'"),
])
def test_invalid_plans_name_the_constraint(plan, world, needle):
    with pytest.raises(ValueError) as e:
        plan.check(SIZES["2.6B"], world_size=world)
    assert needle in str(e.value)


@pytest.mark.parametrize("plan, needle", [
    (ParallelPlan(tp=True), "tp must be a positive integer, got True"),  # a bool is no count
    (ParallelPlan(pp=2.0), "pp must be a positive integer, got 2.0"),
    (ParallelPlan(zero1="yes"), "zero1 must be true or false, got 'yes'"),
    (ParallelPlan(tp=2), "vocab_size (95) must be divisible by tp (2)"),
    (ParallelPlan(schedule="interleaved-1f1b", stages_per_rank=2), "microbatches and stages_per_rank > 1 need pp > 1"),
    (ParallelPlan(zero1=True), "zero1 (ZeroRedundancyOptimizer over DDP) needs dp_replicate > 1"),
    (ParallelPlan(dp_replicate=2, tp=2, zero1=True), "zero1 (ZeroRedundancyOptimizer over DDP) needs dp_replicate > 1"),
])
def test_more_invalid_plans(plan, needle):
    odd_vocab = ModelConfig(vocab_size=95, seq_len=16, num_layers=4, d=32, num_heads=4)
    with pytest.raises(ValueError) as e:
        plan.check(odd_vocab)
    assert needle in str(e.value)


def test_the_sequence_checked_for_tp_is_the_one_trained():
    with pytest.raises(ValueError, match=r"sequence length \(15\) must be divisible by tp \(2\)"):
        ParallelPlan(tp=2).check(SMALL, seq_len=15)
    assert ParallelPlan(tp=2).check(SMALL, seq_len=8)  # the model's table holds 16 positions
    assert ParallelPlan(schedule="interleaved-1f1b").check(SMALL)  # one rank: the schedule has nothing to interleave
    assert ParallelPlan(dp_replicate=2, zero1=True).check(SMALL, world_size=2)


def test_batch_must_split_over_data_parallel_ranks_and_microbatches():
    with pytest.raises(ValueError, match=r"batch_size \(10\) must be divisible by dp_replicate × dp_shard × "
                                         r"microbatches \(1 × 2 × 2\)"):
        ParallelPlan(dp_shard=2, pp=2, microbatches=2).check(SMALL, batch_size=10)
    assert ParallelPlan(dp_shard=2, pp=2, microbatches=2).check(SMALL, batch_size=8, world_size=4)


def test_the_reports_200b_layout_is_valid_and_presets_resolve():
    cfg = resolve("pangu-alpha", "cluster-2048")
    assert (cfg.parallel.pp, cfg.parallel.tp, cfg.parallel.dp, cfg.parallel.remat) == (16, 8, 16, "full")
    assert cfg.parallel.world_size == cfg.world_size == 2048
    assert resolve("pangu-alpha", "cpu-dist").parallel.world_size == 4


def test_bad_plan_override_fails_in_resolve_naming_it():
    with pytest.raises(ValueError, match="pangu-alpha preset 'cpu-dist'.*num_heads \\(4\\) must be divisible by tp"):
        resolve("pangu-alpha", "cpu-dist", {"parallel.tp": 3, "nproc_per_node": 6})
    with pytest.raises(ValueError, match="parallel.zero"):
        resolve("pangu-alpha", "cpu-dist", {"parallel.zero": 1})


def test_entry_point_refuses_a_plan_for_another_world_size_before_any_work():
    r = subprocess.run([sys.executable, "-m", "paperbook.pangu", "--preset", "cpu-dist"], capture_output=True,
                       text=True, env=ENV, timeout=120)
    assert r.returncode != 0
    assert "world size 1 != dp_replicate × dp_shard × pp × tp = 1 × 1 × 2 × 2 = 4" in r.stderr


# ---- stages ---------------------------------------------------------------------------------------
def test_stage_layers_and_round_robin_placement():
    assert stage_layers(8, 4) == [range(0, 2), range(2, 4), range(4, 6), range(6, 8)]
    torch.manual_seed(0)
    model = PanguAlpha(SMALL)
    plan = ParallelPlan(pp=2, stages_per_rank=2, schedule="interleaved-1f1b", microbatches=4)
    rank0, rank1 = split_stages(model, plan, 0), split_stages(model, plan, 1)
    assert [s for s, _ in rank0] == [0, 2] and [s for s, _ in rank1] == [1, 3]
    assert rank0[0][1].is_first and rank1[1][1].is_last and not rank1[1][1].blocks
    names = {n for _, st in rank0 + rank1 for n, _ in st.named_parameters()}
    assert names - {"head.weight"} == {n for n, _ in model.named_parameters()}


def test_stages_chained_equal_the_model():
    torch.manual_seed(0)
    model = PanguAlpha(SMALL).eval()
    ids = torch.randint(1, 96, (3, 16))
    ids[:, 5] = 0
    plan = ParallelPlan(pp=4, microbatches=4)
    stages = [split_stages(model, plan, r, eod_id=0)[0][1] for r in range(4)]
    x = ids
    with torch.no_grad():
        for st in stages:
            x = st(x, ids=ids)
        assert torch.equal(x, model(ids, eod_id=0))


def test_next_token_targets_by_hand():
    ids = torch.tensor([[5, 6, 0, 7, 8]])
    assert next_token_targets(ids, eod_id=0).tolist() == [[6, 0, -100, 8, -100]]


def test_synthetic_rows():
    a = synthetic_rows(20, 16, 50, seed=3)
    assert a.shape == (20, 16) and a.dtype == torch.long and int(a.min()) == 0 and int(a.max()) < 50
    assert torch.equal(a, synthetic_rows(20, 16, 50, seed=3)) and not torch.equal(a, synthetic_rows(20, 16, 50))
    big = synthetic_rows(200, 256, 50, mean_doc=8)  # 51,200 tokens
    assert abs(float((big == 0).float().mean()) - 1 / 8) < 0.01  # documents of mean length 8: EOD 1 in 8
    counts = torch.bincount(big[big > 0], minlength=50)
    assert 1.8 < float(counts[1] / counts[2]) < 2.2 and 4 < float(counts[1] / counts[5]) < 6  # Zipf: p(k) ∝ 1/k


def test_the_trainer_stops_at_stop_at_and_counts_the_tokens_it_ran():
    rows = synthetic_rows(64, 16, 96)
    train = TrainConfig(steps=6, batch_size=4, lr=3e-3, warmup=1)
    res = train_parallel(build_parallel(SMALL, ParallelPlan(), eod_id=0), rows, eod_id=0, train=train,
                         ckpt=CkptConfig(stop_at=2))
    assert len(res["losses"]) == len(res["grad_norms"]) == 2 and res["tokens"] == 2 * 4 * 16


def test_run_builds_a_model_of_over_1e9_parameters_on_the_meta_device(monkeypatch):
    import paperbook.pangu.distributed as pd

    seen, real = [], pd.build_parallel
    monkeypatch.setattr(pd, "build_parallel", lambda *a, **k: seen.append(k["meta_init"]) or real(*a, **k))
    cfg = resolve("pangu-alpha", "cpu-toy", dict(s.split("=") for s in TINY_SETS) | {"train.steps": 2})
    for params in (1e9, 1e9 + 1):
        monkeypatch.setattr(pd, "num_params", lambda mc, n=params: n)
        assert len(pd.run(cfg).metrics["losses"]) == 2
    assert seen == [False, True]


# ---- the trainer in one process ---------------------------------------------------------------------
@pytest.mark.parametrize("optimizer, lr", [("adamw", 3e-3), ("sgd", 0.05)])
def test_one_process_trainer_is_the_chapters_train_lm(optimizer, lr):
    rows = synthetic_rows(64, 16, 96, mean_doc=6)
    kw = dict(eod_id=0, train=TrainConfig(steps=4, batch_size=8, lr=lr, warmup=1, optimizer=optimizer), seed=0)
    torch.manual_seed(0)
    ref = train_lm(PanguAlpha(SMALL), rows, **kw)
    ours = train_parallel(build_parallel(SMALL, ParallelPlan(), eod_id=0), rows, **kw)["losses"]
    assert len(ref) == len(ours) == 4
    assert max(abs(a - b) for a, b in zip(ref, ours)) < 1e-5
    assert ref[-1] < ref[0]


@pytest.mark.parametrize("reuse", [True, False])
def test_trainers_keep_freed_memory_on_the_cpu_unless_told_not_to(monkeypatch, reuse):
    import paperbook.pangu.distributed as pd
    import paperbook.pangu.train as pt

    calls = []  # the setting is process-wide: record the calls instead of changing this process
    monkeypatch.setattr(pt, "reuse_freed_memory", lambda: calls.append("train_lm"))
    monkeypatch.setattr(pd, "reuse_freed_memory", lambda: calls.append("train_parallel"))
    rows = synthetic_rows(16, 16, 96)
    kw = dict(eod_id=0, train=TrainConfig(steps=1, batch_size=2, warmup=0, reuse_memory=reuse))
    train_lm(PanguAlpha(SMALL), rows, **kw)
    train_parallel(build_parallel(SMALL, ParallelPlan(), eod_id=0), rows, **kw)
    assert calls == (["train_lm", "train_parallel"] if reuse else [])


def test_both_trainers_build_adamw_with_the_table5_settings(monkeypatch):
    seen = []

    class Spy(torch.optim.AdamW):  # records what the trainers ask for
        def __init__(self, params, **kw):
            seen.append({k: kw[k] for k in ("lr", "betas", "eps")})
            super().__init__(params, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", Spy)
    rows = synthetic_rows(16, 16, 96)
    kw = dict(eod_id=0, train=TrainConfig(steps=1, batch_size=2, warmup=0, lr=5e-5, beta2=0.98))  # 13B's β2
    train_lm(PanguAlpha(SMALL), rows, **kw)
    train_parallel(build_parallel(SMALL, ParallelPlan(), eod_id=0), rows, **kw)
    assert seen == [{"lr": 5e-5, "betas": (0.9, 0.98), "eps": 1e-8}] * 2
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match=f"train.beta2 must lie in \\(0, 1\\), got {bad}"):
            TrainConfig(beta2=bad)


def test_adamw_is_fused_where_its_kernel_takes_the_parameters(monkeypatch):
    seen = []

    class Spy(torch.optim.AdamW):
        def __init__(self, params, **kw):
            seen.append(kw.get("fused", False))
            super().__init__(params, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", Spy)
    rows = synthetic_rows(16, 16, 96)
    for fused in (True, False):
        kw = dict(eod_id=0, train=TrainConfig(steps=1, batch_size=2, warmup=0, fused=fused))
        train_lm(PanguAlpha(SMALL), rows, **kw)
        train_parallel(build_parallel(SMALL, ParallelPlan(), eod_id=0), rows, **kw)
    assert seen == [True, True, False, False]
    sgd = make_optimizer([{"params": [torch.nn.Parameter(torch.ones(2))]}], "sgd", 0.1)
    assert type(sgd) is torch.optim.SGD and not sgd.defaults.get("fused")

    class Fake:  # what the rule reads of a tensor: its device and whether it is a float
        def __init__(self, device, shard=False):
            self.device = torch.device(device)
            if shard:
                self.to_local = None  # as a DTensor has

        def is_floating_point(self):
            return True

    plain = [torch.ones(3), torch.ones(2, 2, dtype=torch.float64)]
    assert fusable([{"params": plain}, {"params": []}]) and fusable([{"params": [Fake("cuda:1")]}])
    for params in ([], [torch.ones(3), Fake("cpu", shard=True)], [torch.ones(3, dtype=torch.long)],
                   [torch.ones(3, device="meta")], [torch.ones(3), torch.ones(3, device="meta")],
                   [Fake("cuda:0"), Fake("cuda:1")]):
        assert not fusable([{"params": params}]), params
    meta = make_optimizer([{"params": [torch.nn.Parameter(torch.ones(2, device="meta"))]}], "adamw", 0.1)
    assert not meta.defaults.get("fused")  # the fused kernel would refuse these parameters


def test_fused_and_per_tensor_adamw_train_alike():
    rows = synthetic_rows(64, 16, 96, mean_doc=6)
    runs = []
    for fused in (True, False):
        torch.manual_seed(0)
        model = PanguAlpha(SMALL)
        losses = train_lm(model, rows, eod_id=0, train=TrainConfig(steps=5, batch_size=8, lr=3e-3, warmup=1,
                                                                    fused=fused))
        runs.append((losses, torch.cat([p.detach().flatten() for p in model.parameters()])))
    (a, wa), (b, wb) = runs
    assert len(a) == len(b) == 5 and a[0] == b[0]  # the first loss comes before any update
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5 and (wa - wb).abs().max() < 1e-5


def test_a_resumed_run_steps_its_own_way_not_the_checkpoints(tmp_path, monkeypatch):
    "A checkpoint written fused and read where the parameters are DTensors must not make that layout step fused."
    fused_at_step = []

    class Spy(torch.optim.AdamW):
        def step(self, closure=None):
            fused_at_step.append(bool(self.param_groups[0]["fused"]))
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "AdamW", Spy)
    rows = synthetic_rows(16, 16, 96)
    for fused, stop in ((True, 2), (False, 0)):  # two fused steps and a checkpoint; then resumed unfused
        train_parallel(build_parallel(SMALL, ParallelPlan(), eod_id=0), rows, eod_id=0,
                       train=TrainConfig(steps=4, batch_size=2, warmup=0, fused=fused),
                       ckpt=CkptConfig(dir=str(tmp_path), every=2, stop_at=stop))
    # (reading a checkpoint into a fresh optimizer runs one step without gradients to build its state: not counted)
    assert fused_at_step[:2] == [True, True] and fused_at_step[-2:] == [False, False] and len(fused_at_step) == 5


def test_compiled_forward_and_loss_train_like_eager_and_refuse_a_pipeline():
    rows = synthetic_rows(64, 16, 96, mean_doc=6)
    torch.manual_seed(0)
    ref = train_lm(PanguAlpha(SMALL), rows, eod_id=0, train=TrainConfig(steps=4, batch_size=8, lr=3e-3, warmup=1))
    kw = dict(eod_id=0, train=TrainConfig(steps=4, batch_size=8, lr=3e-3, warmup=1, compile=True))
    ours = train_parallel(build_parallel(SMALL, ParallelPlan(), eod_id=0), rows, **kw)["losses"]
    assert len(ref) == len(ours) == 4
    assert max(abs(a - b) for a, b in zip(ref, ours)) < 1e-5
    with pytest.raises(ValueError, match="train.compile .* parallel.pp = 1"):
        resolve("pangu-alpha", "cpu-dist", {"train.compile": True})


@pytest.mark.parametrize("remat", ["full", "selective"])
def test_rematerialisation_changes_no_number(remat):
    rows = synthetic_rows(64, 16, 96, mean_doc=6)
    kw = dict(eod_id=0, train=TrainConfig(steps=3, batch_size=8, lr=3e-3, warmup=1))
    plain = train_parallel(build_parallel(SMALL, ParallelPlan(), eod_id=0), rows, **kw)["losses"]
    again = train_parallel(build_parallel(SMALL, ParallelPlan(remat=remat), eod_id=0), rows, **kw)["losses"]
    assert len(plain) == len(again) == 3
    assert max(abs(a - b) for a, b in zip(plain, again)) < 1e-6


def test_clip_grads_returns_the_norm_and_scales_down_only():
    from paperbook.pangu.parallel import clip_grads

    par = build_parallel(SMALL, ParallelPlan(), eod_id=0)
    ids = synthetic_rows(4, 16, 96)  # (4, 16)
    par.modules[0](ids, ids=ids).logsumexp(-1).sum().backward()
    grads = [p.grad.clone() for p in par.parameters()]  # the tied matrix once
    norm = float(torch.cat([g.flatten() for g in grads]).double().norm())
    assert clip_grads(par, 10 * norm) == pytest.approx(norm, rel=1e-6)
    assert all(torch.equal(p.grad, g) for p, g in zip(par.parameters(), grads))  # below the limit: untouched
    assert clip_grads(par, norm / 4) == pytest.approx(norm, rel=1e-6)  # the norm before clipping
    for p, g in zip(par.parameters(), grads):
        torch.testing.assert_close(p.grad, g / 4, rtol=1e-5, atol=0)


def test_rematerialisation_recomputes_every_layer_and_selective_keeps_the_matmuls():
    import collections

    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    ids = synthetic_rows(4, 16, 96)  # (4, 16)
    sdpa, recomputed = "_scaled_dot_product_flash_attention_for_cpu", {}
    for remat in ("off", "full", "selective"):
        (stage,) = build_parallel(SMALL, ParallelPlan(remat=remat), eod_id=0).modules
        loss = stage(ids, ids=ids).logsumexp(-1).sum()
        with Count() as backward:
            loss.backward()
        recomputed[remat] = {k: backward.n[k] for k in ("native_layer_norm", "gelu", sdpa, "addmm")}
    assert recomputed["off"] == {"native_layer_norm": 0, "gelu": 0, sdpa: 0, "addmm": 0}
    # 3 blocks and the query layer, each with 2 layer norms, 1 GeLU and 1 attention: all are run again ...
    full = recomputed["full"]
    assert (full["native_layer_norm"], full["gelu"], full[sdpa]) == (8, 4, 4) and full["addmm"] > 0
    # ... and selective remat keeps the matmuls' and attention's outputs
    assert recomputed["selective"] == {"native_layer_norm": 8, "gelu": 4, sdpa: 0, "addmm": 0}
    with pytest.raises(ValueError, match="remat 'some' is not one of off, full, selective"):
        apply_remat(stage, "some")


@pytest.mark.parametrize("remat", ["full", "selective"])
def test_rematerialisation_with_dropout_recomputes_the_same_masks(remat):
    from dataclasses import replace

    rows = synthetic_rows(64, 16, 96, mean_doc=6)
    drop = replace(SMALL, dropout=0.1)
    kw = dict(eod_id=0, train=TrainConfig(steps=3, batch_size=8, lr=3e-3, warmup=1))
    plain = train_parallel(build_parallel(drop, ParallelPlan(), eod_id=0), rows, **kw)["losses"]
    again = train_parallel(build_parallel(drop, ParallelPlan(remat=remat), eod_id=0), rows, **kw)["losses"]
    assert len(plain) == len(again) == 3
    assert max(abs(a - b) for a, b in zip(plain, again)) < 1e-6  # new masks in the recompute would change step 2


@pytest.mark.dist
@pytest.mark.parametrize("layout, world", [("pp2", 2), ("pp2-tp2", 4)])
def test_meta_init_with_a_pipeline_gives_the_last_stage_the_embedding(tmp_path, layout, world):
    out = tmp_path / "meta.json"
    r = torchrun(world, Path(__file__).parent / "dist_scripts" / "pangu_meta_init.py", out, layout)
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads(out.read_text())
    assert rec["world"] == world and len(rec["tied"]) == world // 2 and all(rec["tied"])
    assert all(map(math.isfinite, rec["losses"])) and rec["losses"][-1] < rec["losses"][0]


def test_meta_device_initialisation_keeps_the_tie_and_trains():
    par = build_parallel(SMALL, ParallelPlan(), eod_id=0, meta_init=True)
    (stage,) = par.modules
    assert stage.head.weight is stage.tok.weight and not stage.tok.weight.is_meta
    assert abs(float(stage.tok.weight.detach().std()) - 0.02) < 0.002 and float(stage.ln_f.weight.detach().min()) == 1.0
    losses = train_parallel(par, synthetic_rows(64, 16, 96), eod_id=0,
                            train=TrainConfig(steps=4, batch_size=8, lr=3e-3, warmup=1))
    assert losses["losses"][-1] < losses["losses"][0]


def test_latest_checkpoint_skips_unfinished_ones(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for n in (3, 12, 40):
        (tmp_path / f"step-{n}").mkdir()
    (tmp_path / "step-3" / ".metadata").write_text("x")
    (tmp_path / "step-12" / ".metadata").write_text("x")  # step-40 has no metadata: a save that did not finish
    assert latest_checkpoint(tmp_path) == tmp_path / "step-12"


# ---- the cluster plan -------------------------------------------------------------------------------
def test_dry_run_of_the_2048_way_plan_shards_as_expected():
    plan = resolve("pangu-alpha", "cluster-2048").parallel
    first, last = dry_run(SIZES["200B"], plan, 0), dry_run(SIZES["200B"], plan, 2047)
    assert first["coordinate"] == {"pp": 0, "dp_replicate": 0, "dp_shard": 0, "tp": 0} and first["stages"] == [0]
    assert first["layers"] == [["0", "1", "2", "3"]] and last["layers"] == [["60", "61", "62", "query_layer"]]
    q = first["shapes"]["blocks.0.attn.q.weight"]
    assert q["global"] == (16384, 16384) and q["local"] == (16384 // 8 // 16, 16384)  # columns by tp, then FSDP
    assert first["shapes"]["tok.weight"]["local"] == (-(-40000 // 8 // 16), 16384)
    assert "tok.weight" not in last["shapes"] and "head.weight" in last["shapes"]
    # rank 0's share: 4 layers whose matrices and column-parallel biases are split 8 × 16 ways while LayerNorms
    # and row-parallel biases (6d) are split by FSDP only; 313 of the embedding's 40,000 rows; positions / 16
    d = 16384
    layer = (12 * d * d + 7 * d) // 128 + 6 * d // 16
    assert first["local_params"] == 4 * layer + 313 * d + 1024 * d // 16


def test_memory_plan_by_hand():
    cfg = ModelConfig(vocab_size=1000, seq_len=128, num_layers=8, d=256, num_heads=4)
    plan = ParallelPlan(tp=2, pp=2, dp_shard=2, microbatches=4, remat="full")
    m = memory_plan(cfg, plan, batch_size=16, local_params=1_000_000)
    s, b, h = 128, 16 // (2 * 4), 256
    assert m["micro_batch"] == 2 and m["layers_here"] == 4
    assert m["states_GiB"] * GiB == 16_000_000
    acts = 2 * 4 * (2 * s * b * h / 2) + 34 * s * b * h / 2  # 2 micro-batches in flight × 4 layer inputs + one layer
    assert abs(m["activations_GiB"] * GiB - acts) < 1
    logits = 3 * 4 * s * b * 1000 / 2  # fp32 logits, softmax and gradient, vocabulary split over tp = 2
    gathered = 2 * 2 * (12 * h * h + 13 * h) / 2  # FSDP: one layer's bf16 weights and gradients gathered
    assert m["logits_GiB"] * GiB == pytest.approx(logits) and m["gathered_GiB"] * GiB == pytest.approx(gathered)
    assert m["total_GiB"] * GiB == pytest.approx(16_000_000 + gathered + acts + logits)
    z = memory_plan(cfg, ParallelPlan(dp_replicate=4, zero1=True), batch_size=16, local_params=1_000_000)
    assert z["states_GiB"] * GiB == pytest.approx((8 + 8 / 4) * 1_000_000) and z["gathered_GiB"] == 0
    big = memory_plan(cfg, plan, batch_size=16, local_params=3_000_000_000)  # 48 GB of states
    assert (big["fits_32GB"], big["fits_80GB"]) == (False, True)
    with pytest.raises(ValueError, match="batch_size 4 gives no sequence to each of dp × microbatches = 2 × 4"):
        memory_plan(cfg, plan, batch_size=4, local_params=1)


def test_dry_run_refuses_a_rank_outside_the_world_and_a_live_group():
    for rank in (-1, 2):
        with pytest.raises(ValueError, match=f"rank {rank} is outside the world of 2"):
            dry_run(SMALL, ParallelPlan(tp=2), rank)
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        with pytest.raises(RuntimeError, match="needs a process without a process group"):
            dry_run(SMALL, ParallelPlan(tp=2), 0)
    finally:
        dist.destroy_process_group()


def test_memory_plan_schedules_stages_remat_and_sequence_by_hand():
    cfg = ModelConfig(vocab_size=1000, seq_len=128, num_layers=8, d=256, num_heads=4)
    h = 256

    def acts(seq_len=None, **plan):
        m = memory_plan(cfg, ParallelPlan(**plan), batch_size=16, local_params=1, seq_len=seq_len)
        return m["activations_GiB"] * GiB

    layer = lambda b, s=128: 34 * s * b * h  # one layer's stored activations, micro-batch b
    # 1F1B keeps min(pp, microbatches) micro-batches in flight: pp 4 → 2 layers here, micro-batch 16 / 2 = 8
    assert acts(pp=4, microbatches=2) == pytest.approx(2 * 2 * layer(8))
    assert acts(pp=2, microbatches=4, schedule="gpipe") == pytest.approx(4 * 4 * layer(4))  # GPipe: all four
    # selective recomputation stores what "off" stores per layer (attention is fused), plus one layer recomputed
    assert acts(pp=2, microbatches=4, remat="selective") == pytest.approx(2 * 4 * layer(4) + layer(4))
    # interleaved: 2 stages of 8 // 4 = 2 layers on each rank
    assert acts(pp=2, microbatches=4, stages_per_rank=2, schedule="interleaved-1f1b") == pytest.approx(
        2 * 4 * layer(4))
    short = memory_plan(cfg, ParallelPlan(), batch_size=16, local_params=1, seq_len=64)
    assert short["activations_GiB"] * GiB == pytest.approx(8 * layer(16, s=64))
    assert short["logits_GiB"] * GiB == pytest.approx(3 * 4 * 64 * 16 * 1000)
    m = memory_plan(cfg, ParallelPlan(), batch_size=16, local_params=2_062_500_000)  # 33e9 bytes of states
    assert 32e9 < m["total_GiB"] * GiB < 32 * GiB and not m["fits_32GB"]  # the card's 32 GB are decimal here


def test_placement_and_the_one_process_report_by_hand():
    assert placement(ParallelPlan(tp=2, pp=3, dp_shard=2), per_node=4) == (
        "4 ranks per server: an op-level group spans 1 server(s), a pipeline 2 (its stages on neighbouring "
        "servers), the data-parallel groups all 3 (across racks, §4.1)")  # spans of 2, 6 and 12 ranks
    for layers in (4, 64):  # a 64-layer model that is not the 200B one gets no quotation of the report
        cfg = resolve("pangu-alpha", "cpu-toy", {"model.num_layers": layers})
        out = plan_report(cfg)
        assert "report_says" not in out and [k for k in out if k.startswith("rank_")] == ["rank_0"]
        assert out["schedule"] == "no pipeline, remat off"
        assert out["rank_0"].startswith(f"the whole model: {num_params(cfg.model) / 1e6:,.1f}M params")


def test_draw_mesh_labels_ranks_layers_and_shards():
    import matplotlib

    matplotlib.use("Agg")
    cfg = ModelConfig(vocab_size=96, seq_len=16, num_layers=8, d=32, num_heads=4)
    plan = ParallelPlan(dp_replicate=2, dp_shard=2, pp=2, stages_per_rank=2, schedule="interleaved-1f1b",
                        microbatches=4)
    texts = {t.get_text() for t in draw_mesh(plan, cfg).texts}
    # row 1 of 4 is replica 0, shard 1; stage column 1 holds stages 1 and 3: rank ((0·2 + 1)·2 + 1)·1 = 3
    assert "rank 3\nL2–3, L6–7\ntp 1/1, dp 2/4\nstores 1/2" in texts and len(texts) == 8
    assert "rank 4\nL0–1, L4–5\ntp 1/1, dp 3/4\nstores 1/2" in texts  # row 2: replica 1, shard 0
    draw_mesh(ParallelPlan(dp_shard=64), cfg)
    with pytest.raises(ValueError, match="65 ranks are too many"):
        draw_mesh(ParallelPlan(dp_shard=65), cfg)


def test_paperbook_plan_prints_the_2048_plan():
    r = cli("plan", "pangu-alpha", "--preset", "cluster-2048")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "dp_replicate 1 × dp_shard 16 × pp 16 × tp 8 = 2048" in out
    assert "an op-level group spans 1 server(s), a pipeline 16" in out  # §4.1: tp inside a server, dp outermost
    assert "fits 32 GB: yes" in out and "rank_2047" in out and "206.86B" in out
    assert "srun --nodes=256" in out and "-m paperbook.pangu --preset cluster-2048" in out


# ---- torchrun (gloo): every layout equals one process --------------------------------------------------
@pytest.mark.parametrize("nproc, layouts", [
    (2, ["dp2", "dp2-zero1", "fsdp2", "tp2", "pp2-gpipe", "pp2-1f1b", "pp2-interleaved"]),
    (4, ["dp2-tp2", "fsdp2-tp2", "pp2-tp2", "fsdp2-pp2", "hsdp2x2"]),
    (8, ["fsdp2-pp2-tp2"]),
])
def test_every_layout_equals_one_process(tmp_path, nproc, layouts):
    r = torchrun(nproc, SCRIPT, tmp_path / "out.json", *layouts, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "out.json").read_text())
    assert res["world"] == nproc and sorted(res["layouts"]) == sorted(layouts)
    for name, v in res["layouts"].items():
        assert v["grad_names_match"], name
        assert v["grad_max_abs"] > 1e-3  # the gradients compared are not all zero
        assert v["grad_max_diff"] < 1e-5, (name, v)
        assert v["loss0_diff"] < 1e-5, (name, v)
        assert v["sgd_max_diff"] < 1e-5 and v["adamw_max_diff"] < 1e-5, (name, v)
    # SGD moves: a wrong gradient scale would show in the losses
    assert res["reference"]["sgd"][0] - res["reference"]["sgd"][-1] > 0.05


def _train(nproc, tmp, name, *sets):
    args = ["-m", "paperbook.pangu", "--preset", "cpu-dist", "--out", tmp / name]
    for s in (*TINY_SETS, f"nproc_per_node={nproc}", *sets):
        args += ["--set", s]
    r = torchrun(nproc, *args, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    record = json.loads((tmp / name / "metrics.json").read_text())
    assert record["environment"]["chapter"] == "pangu-alpha" and record["environment"]["commit"] is not None
    return record["metrics"]


def test_checkpoint_resumes_identically_and_loads_into_another_layout(tmp_path):
    fsdp_tp = ["parallel.pp=1", "parallel.microbatches=1", "parallel.tp=2", "parallel.dp_shard=2"]
    whole = _train(4, tmp_path, "whole", *fsdp_tp)
    first = _train(4, tmp_path, "first", *fsdp_tp, f"ckpt.dir={tmp_path / 'ck'}", "ckpt.every=3", "ckpt.stop_at=3")
    assert first["losses"] == whole["losses"][:3] and (tmp_path / "ck" / "step-3" / ".metadata").is_file()
    resumed = _train(4, tmp_path, "resumed", *fsdp_tp, f"ckpt.dir={tmp_path / 'ck'}")
    assert resumed["start"] == 3 and resumed["losses"] == whole["losses"][3:]  # identical
    # the 4-process (FSDP 2 × TP 2) checkpoint in 2 processes as a 2-stage pipeline
    pipe = _train(2, tmp_path, "pipe", "parallel.pp=2", "parallel.tp=1", "parallel.microbatches=2",
                  f"ckpt.dir={tmp_path / 'ck'}")
    assert pipe["start"] == 3 and pipe["world_size"] == 2
    assert len(pipe["losses"]) == len(whole["losses"][3:]) > 0
    assert max(abs(a - b) for a, b in zip(pipe["losses"], whole["losses"][3:])) < 1e-5


# ---- found by mutation of pangu/parallel.py --------------------------------------------------------------
def test_a_middle_pipeline_rank_has_no_tied_gradient_to_exchange():
    # pp = 3: rank 1 holds neither the embedding nor the output layer, so it sends and receives nothing (its mesh
    # is never asked for; the equivalence runs use pp = 2, which has no middle rank)
    from paperbook.pangu.parallel import Parallelized, sync_tied_grads

    cfg = ModelConfig(vocab_size=96, seq_len=16, num_layers=3, d=32, num_heads=4, dropout=0.0)
    plan = ParallelPlan(pp=3)
    middle = split_stages(PanguAlpha(cfg), plan, pp_rank=1)
    assert [(s, m.is_first, m.is_last) for s, m in middle] == [(1, False, False)]
    sync_tied_grads(Parallelized(plan, None, middle, pp_rank=1))


@pytest.mark.parametrize("pp, reshard", [(1, True), (2, False)])
def test_fsdp_keeps_layers_gathered_between_forward_and_backward_under_a_pipeline(monkeypatch, pp, reshard):
    import torch.distributed.fsdp as fsdp

    from paperbook.pangu.parallel import apply_dp

    calls = []
    monkeypatch.setattr(fsdp, "fully_shard", lambda m, mesh, reshard_after_forward: calls.append(
        (type(m).__name__, mesh, reshard_after_forward)))
    plan = ParallelPlan(dp_shard=2, pp=pp)

    class Mesh(dict):
        def __missing__(self, key):
            return f"mesh{key}"
    (_, stage), *_ = split_stages(PanguAlpha(SMALL), plan, pp_rank=0)
    apply_dp(stage, Mesh(), plan)
    # the whole model (3 blocks and the query layer) without a pipeline; the first stage's 2 blocks with one
    parts = ["Block"] * 3 + ["QueryLayer"] if pp == 1 else ["Block"] * 2
    assert calls == [(name, "meshdp_shard", reshard) for name in parts + ["PanguStage"]]
