"""The real-allocator replay (overseer_plan/heap_replay.py) and how traced CPU estimates use it."""

from __future__ import annotations

import pytest

from overseer_plan import heap_replay
from overseer_plan.calibration import DEFAULTS, fit_replay_constant
from overseer_plan.estimate import EstimateConfig, estimate
from overseer_plan.models import resolve_model_config

GPT2 = {"model_type": "gpt2", "n_layer": 2, "n_embd": 128, "n_head": 4, "vocab_size": 2000, "n_positions": 1024}
needs_glibc = pytest.mark.skipif(heap_replay._libc() is None, reason="needs Linux with glibc >= 2.33")


@pytest.fixture(autouse=True)
def _replay_on(tmp_path, monkeypatch):
    monkeypatch.setenv("OVERSEER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(heap_replay.ENV_SWITCH, raising=False)


@needs_glibc
def test_replay_allocates_the_traced_tensors_without_touching_them():
    settings = EstimateConfig(batch_size=8, seq_len=512)
    runs = heap_replay.replay(resolve_model_config(dict(GPT2)), settings, [2], repeats=1)
    assert runs is not None
    got = runs[0][0]
    # Every live traced byte was really allocated, so the heap grew at least by the live peak ...
    assert got["growth"] >= 0.9 * got["live"] > 50 * 2**20
    # ... while the process's resident memory did not: the pages were never written.
    assert got["maxrss_growth"] < 0.25 * got["growth"]


@needs_glibc
def test_traced_cpu_estimate_is_the_mean_of_the_replayed_heap_and_the_allocator_model():
    from overseer_plan import estimate as estimate_module
    from overseer_plan.calibration import cpu_rss_from_replay, cpu_rss_from_sim, cpu_rss_from_trace

    settings = EstimateConfig(batch_size=4, seq_len=256)
    runs = heap_replay.replay(resolve_model_config(dict(GPT2)), settings, [2], repeats=2)
    assert runs is not None and len(runs) == 1 and len(runs[0]) == 2
    est = estimate(GPT2, settings, method="traced")
    assert any("mean of the real-allocator replay" in n for n in est.notes)
    key = estimate_module._trace_cache_key(estimate_module._resolve(GPT2).fingerprint, settings, "cpu")
    got = estimate_module._read_trace_cache(key)
    assert got is not None and got["growth"] >= got["growth_min"]
    replay = cpu_rss_from_replay(got["growth"], DEFAULTS)
    model = cpu_rss_from_sim(got["sim_peak"], DEFAULTS, got["churn"])
    assert est.peak_bytes == cpu_rss_from_trace(got["growth"], got["sim_peak"], got["churn"], DEFAULTS)
    assert min(replay, model) <= est.peak_bytes <= max(replay, model)
    # The heap varies between processes (that is why the largest of several is kept), but a
    # heap smaller than the live tensors or several times larger would be a broken replay.
    assert est.live_tensor_bytes * 0.9 <= got["growth"] <= est.live_tensor_bytes * 4


def test_switched_off_or_unavailable_falls_back_to_the_allocator_model(monkeypatch):
    monkeypatch.setenv(heap_replay.ENV_SWITCH, "0")
    assert not heap_replay.available()
    assert heap_replay.replay(resolve_model_config(dict(GPT2)), EstimateConfig(), [2]) is None
    est = estimate(GPT2, EstimateConfig(batch_size=2, seq_len=128), method="traced")
    assert any("replay unavailable" in n for n in est.notes)


@needs_glibc
def test_a_failing_replay_process_falls_back_instead_of_failing(monkeypatch):
    # A model type the subprocess cannot build makes every replay process exit non-zero.
    config = resolve_model_config(dict(GPT2))
    monkeypatch.setattr(type(config), "to_dict", lambda self: {"model_type": "no-such-model"})
    assert heap_replay.replay(config, EstimateConfig(batch_size=1, seq_len=64), [2], repeats=1) is None


def test_replay_constant_is_the_mean_residual_and_never_negative():
    assert fit_replay_constant([(100, 150, False), (200, 230, False)]) == (40, 0)
    assert fit_replay_constant([(100, 90, False)]) == (0, 0)
    assert fit_replay_constant([]) is None


def test_replay_half_precision_offset_is_the_difference_of_the_mean_residuals():
    assert fit_replay_constant([(100, 150, False), (200, 230, False), (100, 130, True), (200, 210, True)]) == (40, -20)
    assert fit_replay_constant([(100, 130, True)]) == (30, 0)


@needs_glibc
def test_a_calibration_without_a_replay_constant_keeps_the_allocator_model(tmp_path):
    from overseer_plan.calibration import calibration_path

    cal = DEFAULTS.model_copy(update={"cpu": DEFAULTS.cpu.model_copy(update={"replay_constant_bytes": None})})
    calibration_path().parent.mkdir(parents=True, exist_ok=True)
    calibration_path().write_text(cal.model_dump_json())
    est = estimate(GPT2, EstimateConfig(batch_size=2, seq_len=128), method="traced")
    assert any("no real-allocator replay constant" in n for n in est.notes)


@needs_glibc
def test_a_deep_model_replays_its_deeper_depth_in_every_process_and_the_shallower_as_a_fork():
    deep = resolve_model_config({**GPT2, "n_layer": 8})
    settings = EstimateConfig(batch_size=4, seq_len=256)
    with heap_replay.Workers(heap_replay.REPEATS) as workers:
        runs = heap_replay.replay(deep, settings, [2, 4], workers=workers)
        assert workers.take() is None  # the started processes were used, none was started beside them
    assert runs is not None and [len(r) for r in runs] == [1, heap_replay.REPEATS]
    two, fours = runs[0][0], runs[1]
    assert two["depth"] == 2 and all(r["depth"] == 4 for r in fours)
    # Each run really allocated its own trace: the deeper one holds more live bytes and more heap.
    assert all(four["live"] > two["live"] and four["growth"] > two["growth"] >= 0.9 * two["live"] for four in fours)


@needs_glibc
def test_workers_nobody_takes_are_stopped():
    workers = heap_replay.Workers(2)
    procs = list(workers._procs)
    assert len(procs) == 2 and all(p.poll() is None for p in procs)
    workers.close()
    assert all(p.poll() is not None for p in procs)


@needs_glibc
def test_a_cached_traced_estimate_leaves_no_replay_process_behind(monkeypatch):
    started: list = []
    real_start = heap_replay._start

    def spy():
        proc = real_start()
        started.append(proc)
        return proc

    monkeypatch.setattr(heap_replay, "_start", spy)
    settings = EstimateConfig(batch_size=2, seq_len=128)
    first = estimate(GPT2, settings, method="traced")
    again = estimate(GPT2, settings, method="traced")  # from the trace cache: its early workers go unused
    assert again.peak_bytes == first.peak_bytes
    assert any("reused this machine's cached result" in n for n in again.notes)
    assert len(started) == 2 * heap_replay.REPEATS and all(p.poll() is not None for p in started)


def test_a_replay_at_full_depth_is_unchanged_and_a_reduced_one_scales_with_the_tensor_level_heap():
    from overseer_plan.calibration import replay_at_full_depth

    cpu = DEFAULTS.cpu
    assert replay_at_full_depth(500.0, 300.0, 1000.0, 300.0, 1000.0, DEFAULTS) == 500.0
    # The tensor-level heap at full depth is twice the one the replay ran at: so is the replayed heap.
    at = cpu.scale * 300e6 + cpu.churn_fraction * 1000e6
    full_sim = 2 * at - cpu.churn_fraction * 3000e6
    assert replay_at_full_depth(500e6, 300e6, 1000e6, full_sim / cpu.scale, 3000e6, DEFAULTS) == pytest.approx(1000e6)


@needs_glibc
def test_a_deep_traced_estimate_scales_the_deepest_replay_rather_than_drawing_a_line_through_two():
    from overseer_plan import estimate as estimate_module
    from overseer_plan.calibration import cpu_rss_from_trace, replay_at_full_depth

    deep = {**GPT2, "n_layer": 10}
    settings = EstimateConfig(batch_size=4, seq_len=256)
    est = estimate(deep, settings, method="traced")
    assert any("at 4 layers; scaled to" in n and "MiB at 10 by the tensor-level model's heap" in n for n in est.notes)
    key = estimate_module._trace_cache_key(estimate_module._resolve(deep).fingerprint, settings, "cpu")
    got = estimate_module._read_trace_cache(key)
    assert got is not None and got["depths"] == [2, 4]
    # The cached growth is the 4-layer replay's, next to the tensor-level model's inputs at 4 layers.
    assert got["replayed_sim_peak"] < got["sim_peak"] and got["replayed_churn"] < got["churn"]
    heap = replay_at_full_depth(got["growth"], got["replayed_sim_peak"], got["replayed_churn"], got["sim_peak"],
                                got["churn"], DEFAULTS)
    assert heap > got["growth"]
    assert est.peak_bytes == cpu_rss_from_trace(heap, got["sim_peak"], got["churn"], DEFAULTS)
