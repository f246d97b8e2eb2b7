"""Ladder rungs: exact config changes, and each rung's verdict consistent with its numbers."""

from __future__ import annotations

from _hw import GiB, make_hw

from overseer_plan.config import TrainingConfig
from overseer_plan.ladder import apply_change, walk_ladder
from overseer_plan.overrides import with_overrides
from overseer_plan.rules import load_rulebook


def test_halving_the_batch_keeps_the_effective_batch_exactly() -> None:
    rung = load_rulebook()["ladder.oom.batch-size"]
    cfg = TrainingConfig(resource_efficient_mode=True)  # 4 x 16
    seen = []
    while (cfg := apply_change(cfg, rung)) is not None:
        seen.append((cfg.batch_size, cfg.gradient_accumulation_steps))
    assert seen == [(2, 32), (1, 64)]


def test_halving_follows_divisors_of_an_odd_effective_batch() -> None:
    rung = load_rulebook()["ladder.oom.batch-size"]
    cfg = TrainingConfig(batch_size=12, gradient_accumulation_steps=1)
    steps = []
    while (cfg := apply_change(cfg, rung)) is not None:
        steps.append(cfg.batch_size * cfg.gradient_accumulation_steps)
        assert cfg.batch_size * cfg.gradient_accumulation_steps == 12
    assert steps == [12, 12, 12]  # 12 -> 6 -> 3 -> 1


def test_spec_rung_values() -> None:
    book = load_rulebook()
    re = TrainingConfig(resource_efficient_mode=True)
    assert apply_change(re, book["ladder.oom.sequence-length"]).max_sequence_length == 512
    acc = apply_change(re, book["ladder.oom.gradient-accumulation"])
    assert (acc.batch_size, acc.gradient_accumulation_steps) == (2, 32)
    assert apply_change(re, book["ladder.oom.mixed-precision-off"]).mixed_precision is False
    assert apply_change(re, book["ladder.oom.gradient-checkpointing"]) is None  # already on
    assert apply_change(re, book["ladder.slow.learning-rate"]).learning_rate == 7e-5
    # From standard's 1e-4 the spec's "increase slightly (e.g. to 7e-5)" has nothing to raise: never a decrease.
    assert apply_change(TrainingConfig(), book["ladder.slow.learning-rate"]) is None
    assert apply_change(re, book["ladder.overwhelmed.close-apps"]) is None  # an action, not a setting


def test_oom_walk_on_a_small_gpu_reports_numbers_and_honest_verdicts() -> None:
    hw = with_overrides(make_hw(), ram_bytes=8 * GiB, gpu_mem_bytes=4 * GiB)
    cfg = TrainingConfig(resource_efficient_mode=True)
    report = walk_ladder("oom", cfg, hw, model="gpt2", device="cuda", rulebook=load_rulebook())
    assert [r.step for r in report.rungs] == sorted(r.step for r in report.rungs)
    for r in report.rungs:
        if r.peak_before_bytes is not None and r.verdict != "no effect":
            assert (r.verdict == "helps") == (r.peak_after_bytes < r.peak_before_bytes * 0.995), r
    by_rule = {r.rule: r for r in report.rungs}
    assert by_rule["ladder.oom.batch-size"].verdict == "helps"
    assert by_rule["ladder.oom.sequence-length"].verdict == "helps"
    assert report.final["batch_size"] < 4 and report.final["max_sequence_length"] == 512


def test_overwhelmed_names_the_biggest_other_processes() -> None:
    from overseer_plan.hardware import ProcessMemory

    hw = make_hw(ram_gb=16, others_gb=6, top=[ProcessMemory(pid=7, name="chrome", memory_bytes=3 * GiB)])
    report = walk_ladder("overwhelmed", TrainingConfig(resource_efficient_mode=True), hw, model="overseer-tiny",
                         device="cpu", rulebook=load_rulebook())
    first = report.rungs[0]
    assert first.verdict == "advice" and "chrome" in first.detail
    assert [r.rule for r in report.rungs][1] == "ladder.overwhelmed.cpu-only"


def test_slow_walk_compares_with_standard_mode() -> None:
    hw = make_hw(ram_gb=64)
    report = walk_ladder("slow", TrainingConfig(resource_efficient_mode=True, max_sequence_length=512), hw,
                         model="overseer-tiny", device="cpu", rulebook=load_rulebook())
    std = report.rungs[0]
    assert std.rule == "ladder.slow.standard-mode" and std.speed_ratio is not None
