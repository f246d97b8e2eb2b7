"""Calibration file handling and the host allocator model (overseer_plan/calibration.py)."""

from __future__ import annotations

import json
import warnings

import pytest

from overseer_plan import calibration as cal_mod
from overseer_plan.calibration import DEFAULTS, load_calibration, simulate_glibc
from overseer_plan.estimate import EstimateConfig, LoraSettings, estimate

MiB = 2**20


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OVERSEER_CACHE_DIR", str(tmp_path))


def _write(tmp_path, **cpu):
    import torch

    data = DEFAULTS.model_dump(mode="json")
    data["torch_version"] = torch.__version__
    data["cpu"].update(cpu)
    (tmp_path / "calibration.json").write_text(json.dumps(data))


def test_defaults_without_a_file():
    cal, notes = load_calibration()
    assert cal == DEFAULTS and "shipped defaults" in notes[0]


def test_file_is_used_when_present(tmp_path):
    base = estimate("overseer-tiny", EstimateConfig())
    _write(tmp_path, constant_bytes=DEFAULTS.cpu.constant_bytes + 100 * MiB)
    est = estimate("overseer-tiny", EstimateConfig())
    assert est.peak_bytes == base.peak_bytes + 100 * MiB
    assert any(str(tmp_path) in n for n in est.notes)


@pytest.mark.parametrize(
    "field,offset,plain,shifted,note",
    [("half_precision_bytes", -20 * MiB, EstimateConfig(), EstimateConfig(precision="bf16"), "16-bit matmuls"),
     ("frozen_base_bytes", -30 * MiB, EstimateConfig(), EstimateConfig(lora=LoraSettings(rank=4)),
      "frozen base (LoRA)"),
     ("frozen_half_bytes", 25 * MiB, EstimateConfig(lora=LoraSettings(rank=4)),
      EstimateConfig(lora=LoraSettings(rank=4), precision="bf16"), "frozen base (LoRA, 16-bit matmuls)")],
    ids=["half-precision-for-16-bit-runs-only", "frozen-base-for-lora-runs-only",
         "frozen-half-for-16-bit-lora-runs-only"],
)
def test_estimate_applies_an_offset_to_its_runs_only(tmp_path, field, offset, plain, shifted, note):
    _write(tmp_path, **{field: 0})
    base_plain, base_shifted = estimate("overseer-tiny", plain), estimate("overseer-tiny", shifted)
    _write(tmp_path, **{field: offset})
    assert estimate("overseer-tiny", plain).peak_bytes == base_plain.peak_bytes
    est = estimate("overseer-tiny", shifted)
    assert est.peak_bytes == base_shifted.peak_bytes + offset
    assert any(note in n for n in est.notes)


def test_a_file_written_before_the_frozen_base_offset_gets_the_shipped_one(tmp_path):
    import torch

    data = DEFAULTS.model_dump(mode="json")
    data["torch_version"] = torch.__version__
    del data["cpu"]["frozen_base_bytes"]
    (tmp_path / "calibration.json").write_text(json.dumps(data))
    cal, _ = load_calibration()
    assert cal.cpu.frozen_base_bytes == DEFAULTS.cpu.frozen_base_bytes < 0


def test_a_file_written_before_the_frozen_half_offset_gets_the_shipped_one(tmp_path):
    import torch

    data = DEFAULTS.model_dump(mode="json")
    data["torch_version"] = torch.__version__
    data["cpu"]["frozen_base_bytes"] = -7 * MiB
    del data["cpu"]["frozen_half_bytes"]
    (tmp_path / "calibration.json").write_text(json.dumps(data))
    cal, _ = load_calibration()
    assert cal.cpu.frozen_base_bytes == -7 * MiB  # the file's own fit is kept
    assert cal.cpu.frozen_half_bytes == DEFAULTS.cpu.frozen_half_bytes > 0


@pytest.mark.parametrize("content", ["{not json", json.dumps({"cpu": {"scale": "x"}}), "[]"])
def test_malformed_file_is_ignored_with_a_warning(tmp_path, content):
    (tmp_path / "calibration.json").write_text(content)
    with pytest.warns(UserWarning, match="malformed"):
        est = estimate("overseer-tiny", EstimateConfig())
    assert any("malformed" in n for n in est.notes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert load_calibration()[0] == DEFAULTS


def test_other_torch_version_is_ignored(tmp_path):
    data = DEFAULTS.model_dump(mode="json")
    data["torch_version"] = "0.0.1"
    (tmp_path / "calibration.json").write_text(json.dumps(data))
    cal, notes = load_calibration()
    assert cal == DEFAULTS and "0.0.1" in notes[0]


def test_a_local_version_tag_does_not_void_the_file(tmp_path):
    # torch.__version__ is 2.11.0+cu130 where the installed distribution says 2.11.0 (seen on a GPU
    # machine): the same torch, so the file applies.
    from importlib.metadata import version

    data = DEFAULTS.model_dump(mode="json")
    data["torch_version"] = version("torch").split("+")[0] + "+cu130"
    data["cpu"]["constant_bytes"] = 123
    (tmp_path / "calibration.json").write_text(json.dumps(data))
    assert load_calibration()[0].cpu.constant_bytes == 123


def test_glibc_model_small_blocks_stay_resident_large_ones_return():
    # 1 MiB blocks start above the 128 KiB threshold (mmap'd, returned on free); freeing one
    # raises the threshold, so the next 1 MiB blocks come from the heap and stay resident.
    ev = [(1, MiB, "forward"), (1, -MiB, "forward"), (2, MiB, "forward"), (3, MiB, "forward"),
          (2, -MiB, "forward"), (3, -MiB, "forward"), (4, 64 * MiB, "forward")]
    peak = simulate_glibc(ev)
    assert peak == pytest.approx(2 * MiB + 64 * MiB, rel=0.01)


def test_glibc_model_reuses_freed_heap_space():
    small = 64 * 1024
    ev = [(1, small, "f"), (1, -small, "f"), (2, small, "f"), (2, -small, "f")]
    assert simulate_glibc(ev) < 2 * small


def test_calibration_path_honours_env(tmp_path):
    assert cal_mod.calibration_path() == tmp_path / "calibration.json"


def test_fit_churn_factors_recovers_fraction_and_constant():
    from overseer_plan.calibration import fit_churn_factors

    pts = [(sim, churn, sim + 0.05 * churn + 120 * MiB, False) for sim, churn in
           [(100 * MiB, 200 * MiB), (300 * MiB, 900 * MiB), (500 * MiB, 1600 * MiB)]]
    frac, const, offset = fit_churn_factors(pts)
    assert frac == pytest.approx(0.05) and const == pytest.approx(120 * MiB, abs=1) and offset == 0


def test_fit_churn_factors_separates_the_half_precision_offset():
    from overseer_plan.calibration import fit_churn_factors

    shapes = [(100 * MiB, 200 * MiB), (300 * MiB, 900 * MiB), (500 * MiB, 1600 * MiB)]
    pts = [(sim, churn, sim + 0.05 * churn + 120 * MiB - (17 * MiB if half else 0), half)
           for half in (False, True) for sim, churn in shapes]
    frac, const, offset = fit_churn_factors(pts)
    assert frac == pytest.approx(0.05)
    assert const == pytest.approx(120 * MiB, abs=1) and offset == pytest.approx(-17 * MiB, abs=1)


def test_half_precision_offset_applies_to_16_bit_steps_only():
    from overseer_plan.calibration import cpu_rss_from_replay, cpu_rss_from_sim, is_half_precision

    cal = DEFAULTS.model_copy(update={"cpu": DEFAULTS.cpu.model_copy(update={"half_precision_bytes": -17 * MiB})})
    assert cpu_rss_from_sim(100 * MiB, cal, half=True) == cpu_rss_from_sim(100 * MiB, cal) - 17 * MiB
    assert cpu_rss_from_replay(100 * MiB, cal, half=True) == cpu_rss_from_replay(100 * MiB, cal) - 17 * MiB
    assert [is_half_precision(p) for p in ("fp32", "bf16", "fp16", "bf16-pure")] == [False, True, True, True]


def test_heap_churn_counts_the_last_step_below_the_mmap_cap():
    from overseer_plan.calibration import heap_churn

    ev = [(0, 0, "forward0"), (1, 4 * MiB, "forward0"), (1, -4 * MiB, "backward0"),
          (0, 0, "forward1"), (2, 2 * MiB, "forward1"), (3, 64 * MiB, "forward1"), (0, 0, "optimizer1"),
          (4, 1 * MiB, "optimizer1"), (2, -2 * MiB, "optimizer1"), (0, 0, "done")]
    assert heap_churn(ev) == 3 * MiB  # step 1 only; the 64 MiB block is mmapped, not heap


def test_churn_allowance_adds_to_the_cpu_peak():
    from overseer_plan.calibration import cpu_rss_from_sim

    base = cpu_rss_from_sim(100 * MiB, DEFAULTS)
    assert cpu_rss_from_sim(100 * MiB, DEFAULTS, 1000 * MiB) == base + round(DEFAULTS.cpu.churn_fraction * 1000 * MiB)


def test_long_run_churn_allowance_is_one_more_micro_batch_and_only_at_ga_1():
    from overseer_plan.calibration import long_run_heap_bytes

    frac = DEFAULTS.cpu.churn_fraction
    assert long_run_heap_bytes(1000 * MiB, 1, DEFAULTS) == round(frac * 1000 * MiB)
    # With accumulation the estimate already counts two micro-batches' churn: a long run adds nothing.
    assert long_run_heap_bytes(2000 * MiB, 2, DEFAULTS) == 0
    assert long_run_heap_bytes(2000 * MiB, 16, DEFAULTS) == 0


def test_long_run_counts_blocks_just_under_the_mmap_cap_twice():
    from overseer_plan.calibration import edge_block_bytes, long_run_heap_bytes

    # 31.25 MiB (fp32 logits of 1 x 512 x 16000): heap or mapping by the dynamic threshold; 62.5 MiB
    # is always mapped, 8 MiB is ordinary heap churn.
    assert edge_block_bytes([62_500 * 1024, 32_000 * 1024, 8 * MiB]) == 32_000 * 1024
    assert edge_block_bytes([62_500 * 1024, 8 * MiB]) == 0
    assert edge_block_bytes([32 * MiB]) == 0  # with the chunk header it is over the cap
    base = long_run_heap_bytes(1000 * MiB, 1, DEFAULTS)
    assert long_run_heap_bytes(1000 * MiB, 1, DEFAULTS, [20 * MiB]) == base + 40 * MiB
    # With accumulation only the edge blocks are added: the churn is already counted twice.
    assert long_run_heap_bytes(1000 * MiB, 4, DEFAULTS, [20 * MiB]) == 40 * MiB


def test_estimate_reports_the_long_run_peak_on_cpu_only(tmp_path, monkeypatch):
    monkeypatch.setenv("OVERSEER_CACHE_DIR", str(tmp_path))
    one = estimate("gpt2", EstimateConfig(batch_size=2, seq_len=256))
    assert one.long_run_extra_bytes > 0
    assert one.long_run_peak_bytes == one.peak_bytes + one.long_run_extra_bytes
    assert one.long_run_host_peak_bytes == one.host_peak_bytes + one.long_run_extra_bytes
    assert any("long run" in n for n in one.notes)
    # The allowance is part of what accumulation already predicts for the 3-step protocol.
    accum = estimate("gpt2", EstimateConfig(batch_size=2, seq_len=256, grad_accum=4))
    assert accum.long_run_extra_bytes == 0
    assert accum.peak_bytes >= one.long_run_peak_bytes
    assert estimate("gpt2", EstimateConfig(batch_size=2, seq_len=256), device="cuda").long_run_extra_bytes == 0


def test_calibrate_measures_both_precisions_and_writes_a_usable_file(tmp_path, monkeypatch):
    # One tiny shape at fp32 and at bf16: real protocol subprocesses, the allocator model only.
    monkeypatch.setenv("OVERSEER_HEAP_REPLAY", "0")
    tiny = {"model_type": "gpt2", "n_layer": 1, "n_embd": 64, "n_head": 2, "vocab_size": 500, "n_positions": 128}
    monkeypatch.setattr(cal_mod, "_CALIBRATION_RUNS", tuple((tiny, 2, 64, False, p) for p in ("fp32", "bf16")))
    cal = cal_mod.calibrate(repeats=1)
    assert [p["precision"] for p in cal.points] == ["fp32", "bf16"]
    assert all(p["measured_bytes"] > 0 for p in cal.points)
    assert cal.cpu.replay_constant_bytes is None  # no replay ran
    # The offset is the bf16 residual minus the fp32 one (one shape: the churn slope is 0).
    resid = [p["measured_bytes"] - p["simulated_bytes"] for p in cal.points]
    assert cal.cpu.churn_fraction == 0 and abs(cal.cpu.half_precision_bytes - (resid[1] - resid[0])) <= 1
    assert load_calibration()[0] == cal
