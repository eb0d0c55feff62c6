"The root conftest starts a kernel again when it dies at start (two xdist workers can race for a port)."
import importlib.util

import pytest


@pytest.fixture
def retrying(root, monkeypatch):
    spec = importlib.util.spec_from_file_location("paperbook_root_conftest", root / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module.time, "sleep", lambda s: None)
    return module._retrying


def test_a_kernel_that_dies_at_start_is_started_again(retrying):
    calls = []

    def flaky(**kw):
        calls.append(kw)
        if len(calls) < 3:
            raise RuntimeError("Kernel died before replying to kernel_info")
        return "km", "kc"

    assert retrying(flaky)(kernel_name="python") == ("km", "kc")
    assert calls == [{"kernel_name": "python"}] * 3


def test_it_gives_up_after_three_starts_and_never_retries_other_errors(retrying):
    calls = []

    def dead():
        calls.append(1)
        raise RuntimeError("Kernel died before replying to kernel_info")

    with pytest.raises(RuntimeError, match="Kernel died"):
        retrying(dead)()
    assert len(calls) == 3

    def slow():
        calls.append(2)
        raise RuntimeError("Kernel didn't respond in 60 seconds")

    with pytest.raises(RuntimeError, match="didn't respond"):
        retrying(slow)()
    assert calls.count(2) == 1
