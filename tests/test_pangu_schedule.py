"""The pipeline-schedule trace (part 7b): replay and bubble by hand, and torch's real orders against the rules."""

import pytest

from paperbook.pangu.schedule import bubble, held, orders, recording_schedule, replay, trace_schedule


def test_replay_of_gpipe_two_by_two_by_hand():
    order = [[("F", 0, 0), ("F", 0, 1), ("B", 0, 0), ("B", 0, 1)],
             [("F", 1, 0), ("F", 1, 1), ("B", 1, 0), ("B", 1, 1)]]
    t = replay(order, 2)
    assert [(a["start"], a["end"]) for a in t[0]] == [(0, 1), (1, 2), (5, 7), (7, 9)]
    assert [(a["start"], a["end"]) for a in t[1]] == [(1, 2), (2, 3), (3, 5), (5, 7)]
    assert bubble(t) == pytest.approx(1 - 12 / 18)
    assert [held(o) for o in order] == [2, 2]


def test_replay_of_1f1b_two_by_two_by_hand():
    # rank 0: F0 F1 B0 B1 (p - r = 2 forwards); rank 1: F0 B0 F1 B1
    order = [[("F", 0, 0), ("F", 0, 1), ("B", 0, 0), ("B", 0, 1)],
             [("F", 1, 0), ("B", 1, 0), ("F", 1, 1), ("B", 1, 1)]]
    t = replay(order, 2, forward=1, backward=3)
    # rank 1: F0 1-2, B0 2-5, F1 5-6 (its input was ready at 2), B1 6-9; rank 0: B0 5-8, B1 9-12
    assert [(a["start"], a["end"]) for a in t[1]] == [(1, 2), (2, 5), (5, 6), (6, 9)]
    assert [(a["start"], a["end"]) for a in t[0]] == [(0, 1), (1, 2), (5, 8), (9, 12)]
    assert [held(o) for o in order] == [2, 1]


def test_an_order_that_waits_on_itself_is_refused():
    order = [[("B", 0, 0), ("F", 0, 0)], [("F", 1, 0), ("B", 1, 0)]]
    with pytest.raises(ValueError, match="cannot run"):
        replay(order, 2)
    with pytest.raises(ValueError, match="cannot run"):  # one stage: its backward needs its own forward first
        replay([[("B", 0, 0), ("F", 0, 0)]], 1)


def test_bubble_and_orders_of_a_timeline_that_starts_late():
    # two ranks from t = 10 to 12: busy 2 + 1 of 2 × 2 rank-units, idle 1/4
    timeline = [[{"kind": "F", "stage": 0, "mb": 0, "start": 10.0, "end": 12.0}],
                [{"kind": "F", "stage": 1, "mb": 0, "start": 11.0, "end": 12.0}]]
    assert bubble(timeline) == pytest.approx(0.25)
    events = [[{"kind": "B", "stage": 0, "mb": 0, "start": 5.0}, {"kind": "F", "stage": 0, "mb": 1, "start": 3.0},
               {"kind": "F", "stage": 0, "mb": 0, "start": 1.0}]]
    assert orders(events) == [[("F", 0, 0), ("F", 0, 1), ("B", 0, 0)]]  # by start time, not as recorded


def test_the_recorder_times_each_chunk(monkeypatch):
    import time
    from types import SimpleNamespace

    from torch.distributed.pipelining.stage import _PipelineStageBase

    monkeypatch.setattr(_PipelineStageBase, "forward_one_chunk", lambda self, chunk_id, *a, **k: time.sleep(0.02))
    monkeypatch.setattr(_PipelineStageBase, "backward_one_chunk", lambda self, chunk_id, *a, **k: None)
    stage = SimpleNamespace(stage_index=2)
    with recording_schedule([]) as events:
        _PipelineStageBase.forward_one_chunk(stage, 3)
        _PipelineStageBase.backward_one_chunk(stage, 3)
    assert [(e["stage"], e["kind"], e["mb"]) for e in events] == [(2, "F", 3), (2, "B", 3)]
    assert events[0]["end"] - events[0]["start"] >= 0.02 and events[1]["start"] >= events[0]["end"]


def test_the_recorder_puts_torchs_methods_back():
    from torch.distributed.pipelining.stage import _PipelineStageBase

    before = (_PipelineStageBase.forward_one_chunk, _PipelineStageBase.backward_one_chunk)
    with pytest.raises(RuntimeError):
        with recording_schedule([]):
            assert _PipelineStageBase.forward_one_chunk is not before[0]
            raise RuntimeError("inside")
    assert (_PipelineStageBase.forward_one_chunk, _PipelineStageBase.backward_one_chunk) == before


def _expected(schedule: str, p: int, m: int) -> list[list[tuple[str, int, int]]]:
    "The rules of part 7b, written out: GPipe all forwards then all backwards; 1F1B p - r forwards, then B/F."
    out = []
    for r in range(p):
        if schedule == "gpipe":
            out.append([("F", r, i) for i in range(m)] + [("B", r, i) for i in range(m)])
            continue
        warm = min(m, p - r)
        acts = [("F", r, i) for i in range(warm)]
        for i in range(m):
            acts.append(("B", r, i))
            if warm + i < m:
                acts.append(("F", r, warm + i))
        out.append(acts)
    return out


@pytest.mark.parametrize("schedule,held_by_rank", [("gpipe", [8, 8, 8, 8]), ("1f1b", [4, 3, 2, 1])])
def test_torchs_orders_follow_the_rules_and_the_bubble_formula(schedule, held_by_rank):
    p, m = 4, 8
    order = orders(trace_schedule(schedule, pp=p, microbatches=m))
    assert order == _expected(schedule, p, m)
    assert bubble(replay(order, p)) == pytest.approx((p - 1) / (m + p - 1))
    assert [held(o) for o in order] == held_by_rank
