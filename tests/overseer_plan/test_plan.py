"""The planner on synthetic machines: mode choice, the fit within budget, determinism, explanations."""

from __future__ import annotations

import pytest
from _hw import GiB, gpu, make_hw

from overseer_plan.config import TrainingConfig
from overseer_plan.overrides import with_overrides
from overseer_plan.plan import Workload, make_plan
from overseer_plan.rules import load_rulebook


def _plan(hw, model="gpt2", validate=False, **cfg):
    wl = Workload(model=model, config=TrainingConfig(**cfg), validate_plan=validate)
    return make_plan(hw, wl, load_rulebook())


def test_small_laptop_gets_resource_efficient_within_75_percent_of_a_4gib_gpu() -> None:
    hw = with_overrides(make_hw(), ram_bytes=8 * GiB, gpu_mem_bytes=4 * GiB)
    plan = _plan(hw)
    assert plan.mode == "resource-efficient" and plan.feasible and plan.device == "cuda"
    assert plan.estimate["peak_bytes"] <= 0.75 * 4 * GiB
    assert plan.config.effective_batch_size() == 64
    # Settings the fit did not need to touch come straight from the resource-efficient preset.
    assert (plan.config.learning_rate, plan.config.save_steps, plan.config.max_ram_percent) == (5e-5, 200, 70.0)
    assert any(r.startswith("mode.resource-efficient.limited-gpu") for r in plan.mode_reasons)


def test_big_idle_workstation_gets_standard_values() -> None:
    hw = make_hw(ram_gb=64, others_gb=1, gpus=[gpu(24)])
    plan = _plan(hw)
    assert plan.mode == "standard" and plan.device == "cuda"
    c = plan.config
    assert (c.gradient_checkpointing, c.learning_rate, c.max_gpu_percent, c.num_workers) == (False, 1e-4, 90.0, 1)
    assert c.effective_batch_size() == 64
    assert c.mixed_precision_dtype == "bf16"  # compute capability 8.6 runs bf16 natively


def test_container_limit_below_host_ram_makes_it_resource_efficient() -> None:
    hw = make_hw(ram_gb=64, limit_gb=12, limit_source="cgroup v2 memory.max", gpus=[gpu(24)])
    plan = _plan(hw)
    assert plan.mode == "resource-efficient"
    assert any("limited-ram" in r for r in plan.mode_reasons)


@pytest.mark.parametrize("ram_gib", [3, 4, 6, 12])
def test_fit_never_exceeds_the_budget_and_keeps_the_effective_batch(ram_gib: int) -> None:
    hw = with_overrides(make_hw(), ram_bytes=ram_gib * GiB, cpu_only=True)
    plan = _plan(hw, model="pythia-160m")
    if not plan.feasible:
        assert all(c.rejected for c in plan.candidates)
        return
    assert plan.estimate["peak_bytes"] <= plan.budget_bytes
    assert plan.config.effective_batch_size() == 64
    for c in plan.candidates:
        if c.rejected is None or c.rejected.startswith("fits"):
            assert c.peak_bytes <= plan.budget_bytes


def test_cpu_candidates_are_judged_by_the_long_run_peak() -> None:
    from overseer_plan.plan import estimate_for

    hw = with_overrides(make_hw(), ram_bytes=12 * GiB, cpu_only=True)
    # Without accumulation: the 3-step protocol the estimate predicts makes only 3 passes.
    plan = _plan(hw, model="pythia-160m", batch_size=4, gradient_accumulation_steps=1)
    assert plan.feasible and plan.config.gradient_accumulation_steps == 1
    assert plan.estimate["long_run_extra_bytes"] > 0
    assert plan.headroom_bytes() == (plan.budget_bytes - plan.estimate["peak_bytes"]
                                     - plan.estimate["long_run_extra_bytes"])
    chosen = next(c for c in plan.candidates if c.rejected is None)
    assert chosen.peak_bytes == plan.estimate["peak_bytes"] + plan.estimate["long_run_extra_bytes"]
    est = estimate_for("pythia-160m", plan.config, "cpu")
    assert est.long_run_peak_bytes == chosen.peak_bytes


def test_more_memory_never_gives_a_smaller_micro_batch() -> None:
    sizes = []
    for ram in (4, 8, 16, 32):
        plan = _plan(with_overrides(make_hw(), ram_bytes=ram * GiB, cpu_only=True), model="pythia-160m",
                     resource_efficient_mode=True)
        sizes.append(plan.config.batch_size if plan.feasible else 0)
    assert sizes == sorted(sizes)


def test_the_same_inputs_give_the_same_plan() -> None:
    hw = with_overrides(make_hw(), ram_bytes=8 * GiB, gpu_mem_bytes=4 * GiB)
    assert _plan(hw).model_dump_json() == _plan(hw).model_dump_json()


def test_explicit_settings_win_and_are_explained() -> None:
    hw = make_hw(ram_gb=64, gpus=[gpu(24)])
    plan = _plan(hw, batch_size=8, gradient_accumulation_steps=8, learning_rate=3e-4)
    assert (plan.config.batch_size, plan.config.gradient_accumulation_steps, plan.config.learning_rate) == (8, 8, 3e-4)
    rules = {d.setting: d.rule for d in plan.decisions}
    assert rules["batch_size"] == "user" and rules["learning_rate"] == "user"


def test_train_auto_may_resplit_an_explicit_batch_but_keeps_the_product() -> None:
    hw = with_overrides(make_hw(), ram_bytes=5 * GiB, cpu_only=True)
    wl = Workload(model="pythia-160m", config=TrainingConfig(batch_size=32, gradient_accumulation_steps=2),
                  resplit_batch=True, validate_plan=False)
    plan = make_plan(hw, wl)
    assert plan.feasible and plan.config.effective_batch_size() == 64 and plan.config.batch_size < 32


def test_sequence_capped_at_the_models_maximum() -> None:
    plan = _plan(make_hw(ram_gb=32), model="overseer-tiny")
    assert plan.config.max_sequence_length == 512
    assert any(d.rule == "model" for d in plan.decisions if d.setting == "max_sequence_length")


def test_every_setting_has_a_reason() -> None:
    plan = _plan(with_overrides(make_hw(), ram_bytes=8 * GiB, gpu_mem_bytes=4 * GiB))
    settings = {d.setting for d in plan.decisions}
    assert {"batch_size", "gradient_accumulation_steps", "max_sequence_length", "learning_rate",
            "gradient_checkpointing", "mixed_precision", "num_workers", "pin_memory", "save_steps",
            "eval_steps", "logging_steps", "memory_check_interval", "max_ram_percent", "max_gpu_percent"} <= settings
    assert all(d.why for d in plan.decisions)


def test_nothing_fits_is_reported_not_hidden() -> None:
    hw = with_overrides(make_hw(), ram_bytes=1 * GiB, cpu_only=True)
    plan = _plan(hw, model="gpt2-large")
    assert not plan.feasible and plan.estimate is None
    assert all(c.rejected for c in plan.candidates)


def test_traced_validation_confirms_the_winner_for_a_small_model() -> None:
    plan = _plan(make_hw(ram_gb=16), model="overseer-tiny", validate=True)
    assert plan.feasible and plan.validation and plan.validation.startswith("traced dry run")


def test_a_model_without_sdpa_is_planned_with_the_eager_attention_it_will_run(tmp_path) -> None:
    from transformers import BloomConfig

    BloomConfig(n_layer=2, hidden_size=64, n_head=4, vocab_size=1000).save_pretrained(tmp_path)
    plan = _plan(make_hw(ram_gb=16), model=str(tmp_path))
    assert plan.feasible and plan.config.attention == "eager"
    why = {d.setting: d for d in plan.decisions}["attention"]
    assert why.rule == "model" and "no SDPA" in why.why
    # A model with SDPA keeps the preset's choice and needs no decision about it.
    gpt2 = _plan(make_hw(ram_gb=16))
    assert gpt2.config.attention == "sdpa"
    assert "attention" not in {d.setting for d in gpt2.decisions}


def test_purpose_picks_the_mode_where_the_machine_does_not() -> None:
    hw = make_hw(ram_gb=24, gpus=[])
    dev, prod = _plan(hw, purpose="development"), _plan(hw, purpose="production")
    assert dev.mode == "resource-efficient" and dev.config.learning_rate == 5e-5
    assert prod.mode == "standard" and prod.config.learning_rate == 1e-4
    assert dev.mode_reasons[0].startswith("mode.resource-efficient.development")
    assert prod.mode_reasons[0].startswith("mode.standard.production")
    small = _plan(with_overrides(hw, ram_bytes=8 * GiB), purpose="production")
    assert small.mode == "resource-efficient"
    assert "mode.standard.production overruled: a resource-efficient reason above wins" in small.mode_reasons


def test_a_rule_chosen_standard_that_cannot_fit_falls_back_to_resource_efficient() -> None:
    plan = _plan(make_hw(ram_gb=24, gpus=[]), model="llama-2-7b", purpose="production")
    assert not plan.feasible and plan.mode == "resource-efficient"
    assert plan.mode_reasons[-1] == "fit: standard does not fit this budget; resource-efficient instead"


def test_cpu_penalty_constant_is_the_fitted_models_flops_per_token(tmp_path) -> None:
    from transformers import GPT2Config

    from overseer_plan.plan import _CPU_FIT_FLOPS_PER_TOKEN, flops_per_token, model_shape

    # bench/plan_quality.py's model, which _CPU_TRANSIENT_BYTES was fitted on, at its sequence 256.
    GPT2Config(n_layer=4, n_embd=256, n_head=4, vocab_size=8000, n_positions=512, bos_token_id=0,
               eos_token_id=0).save_pretrained(tmp_path)
    shape = model_shape(str(tmp_path))[1]
    assert flops_per_token(shape.linear_params, shape.num_layers, shape.heads * shape.head_dim, 256) \
        == _CPU_FIT_FLOPS_PER_TOKEN


def test_checkpointing_never_buys_speed_at_the_same_micro_batch_on_cpu() -> None:
    # The recompute runs the same ops on the same tensors, so on CPU a checkpointed candidate is charged
    # the un-checkpointed transient bytes: only the recompute factor separates the two.
    from overseer_plan.plan import Candidate, candidate_speed, estimate_for

    for mb in (1, 4):
        cfg = TrainingConfig(batch_size=mb, gradient_accumulation_steps=64 // mb, max_sequence_length=1024,
                             use_gpu=False, gradient_checkpointing=False)
        on = cfg.with_changes(gradient_checkpointing=True)
        speeds = [candidate_speed("gpt2", x, Candidate(device="cpu", batch_size=mb, gradient_accumulation_steps=64 // mb,
                                                        gradient_checkpointing=x.gradient_checkpointing,
                                                        precision="fp32", max_sequence_length=1024),
                                  False, estimate_for("gpt2", x, "cpu")) for x in (cfg, on)]
        assert speeds[1] == pytest.approx(speeds[0] * 3 / 4)


def test_gpt2_on_a_roomy_cpu_is_not_checkpointed() -> None:
    # Measured on the 2-core dev box (BENCHMARKS.md §3): GPT-2 124M at 1 x 1024 bf16 ran at 0.85x with
    # checkpointing; the old CPU penalty, unscaled by model size, chose it with 15 GiB to spare.
    hw = with_overrides(make_hw(ram_gb=24, others_gb=1), cpu_only=True)
    plan = _plan(hw, model="gpt2")
    assert plan.feasible and plan.device == "cpu"
    assert plan.config.gradient_checkpointing is False and plan.config.max_sequence_length == 1024
