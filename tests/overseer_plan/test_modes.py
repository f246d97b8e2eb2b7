"""recommend_mode: the spec's "When to Use" lists from rules/modes.yaml, applied to synthetic machines."""

from __future__ import annotations

import pytest
from _hw import gpu, make_hw

from overseer_plan.hardware import ProcessMemory
from overseer_plan.modes import FIT_DECIDES, ModeAdvice, recommend_mode
from overseer_plan.rules import load_rulebook


@pytest.fixture(scope="module")
def book():
    return load_rulebook()


def _ids(advice: ModeAdvice) -> set[str]:
    return {rid for rid, _ in advice.reasons}


def test_small_machine_is_resource_efficient_with_every_reason(book):
    advice = recommend_mode(make_hw(ram_gb=8, gpus=[gpu(4)]), book)
    assert advice.mode == "resource-efficient"
    assert _ids(advice) == {"mode.resource-efficient.limited-ram", "mode.resource-efficient.limited-gpu"}
    assert all(why for _, why in advice.reasons)
    assert "16 GB of RAM" in advice.describe() and "8 GB of GPU memory" in advice.describe()


def test_big_idle_machine_is_standard(book):
    advice = recommend_mode(make_hw(ram_gb=64, gpus=[gpu(24)], cores=16), book)
    assert advice.mode == "standard"
    assert _ids(advice) == {"mode.standard.high-end"}


def test_between_the_lists_the_fit_decides(book):
    advice = recommend_mode(make_hw(ram_gb=24, gpus=[]), book)
    assert advice.mode is None and advice.reasons == []
    assert advice.describe() == FIT_DECIDES and "overseer plan" in advice.describe()


def test_container_limit_below_host_ram_counts(book):
    hw = make_hw(ram_gb=64, limit_gb=8, limit_source="cgroup v2 memory.max", gpus=[gpu(24)])
    advice = recommend_mode(hw, book)
    assert advice.mode == "resource-efficient"
    assert _ids(advice) == {"mode.resource-efficient.limited-ram"}


@pytest.mark.parametrize(("changes", "rule"), [
    ({"others_gb": 30, "top": [ProcessMemory(pid=7, name="chrome", memory_bytes=30 * 10**9)]},
     "mode.resource-efficient.shared-machine"),
    ({"gpus": [gpu(24, processes=[ProcessMemory(pid=9, name="python", memory_bytes=10**10)])]},
     "mode.resource-efficient.shared-gpu"),
])
def test_shared_big_machine_is_resource_efficient(book, changes, rule):
    hw = make_hw(**({"ram_gb": 64, "gpus": [gpu(24)]} | changes))
    advice = recommend_mode(hw, book)
    assert advice.mode == "resource-efficient" and _ids(advice) == {rule}


def test_laptop_is_resource_efficient(book):
    hw = make_hw(ram_gb=64, gpus=[gpu(24)], machine={"is_laptop": True, "laptop_evidence": "battery"})
    assert _ids(recommend_mode(hw, book)) == {"mode.resource-efficient.laptop"}


def test_unknown_gpus_never_count_as_small(book):
    hw = make_hw(ram_gb=24, unavailable={"gpus": "NVML: driver not loaded"})
    hw = hw.model_copy(update={"gpus": None})
    assert recommend_mode(hw, book).mode is None


def test_advice_serialises_as_json(book):
    advice = recommend_mode(make_hw(ram_gb=8, gpus=[gpu(4)]), book)
    again = ModeAdvice.model_validate_json(advice.model_dump_json())
    assert again == advice


# ---- the user's stated purpose (--purpose): the intents in the spec's When to Use lists
def test_development_purpose_is_resource_efficient_even_on_a_big_machine(book):
    advice = recommend_mode(make_hw(ram_gb=64, gpus=[gpu(24)], cores=16), book, extra={"run.purpose": "development"})
    assert advice.mode == "resource-efficient"
    assert _ids(advice) == {"mode.resource-efficient.development"}
    assert [rid for rid, _ in advice.overruled] == ["mode.standard.high-end"]
    assert "overrules mode.standard.high-end" in advice.describe()


@pytest.mark.parametrize("purpose", ["production", "speed"])
def test_production_or_speed_purpose_decides_between_the_lists(book, purpose):
    hw = make_hw(ram_gb=24, gpus=[])
    assert recommend_mode(hw, book).mode is None
    advice = recommend_mode(hw, book, extra={"run.purpose": purpose})
    assert advice.mode == "standard" and _ids(advice) == {"mode.standard.production"}


def test_a_limited_machine_beats_a_production_purpose_and_says_so(book):
    advice = recommend_mode(make_hw(ram_gb=8, gpus=[gpu(4)]), book, extra={"run.purpose": "production"})
    assert advice.mode == "resource-efficient"
    assert _ids(advice) == {"mode.resource-efficient.limited-ram", "mode.resource-efficient.limited-gpu"}
    assert [rid for rid, _ in advice.overruled] == ["mode.standard.production"]
