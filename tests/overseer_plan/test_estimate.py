"""The estimate API, the analytic method and the CLI (overseer_plan/estimate.py, commands/estimate.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from overseer_plan.errors import UserInputError
from overseer_plan.estimate import EstimateConfig, LoraSettings, MemoryEstimate, estimate

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "estimate"
LLAMA = {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 128, "intermediate_size": 352,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 2000, "max_position_embeddings": 1024}
GPT2 = {"model_type": "gpt2", "n_layer": 2, "n_embd": 128, "n_head": 4, "vocab_size": 2000, "n_positions": 1024}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OVERSEER_CACHE_DIR", str(tmp_path / "cache"))


def cfg(**kw) -> EstimateConfig:
    return EstimateConfig(**{"batch_size": 2, "seq_len": 128, **kw})


def test_result_shape_and_breakdown_sums_to_peak():
    est = estimate("overseer-tiny", cfg())
    assert isinstance(est, MemoryEstimate)
    assert est.method == "analytic" and est.device == "cpu"
    assert sum(est.breakdown.model_dump().values()) == est.peak_bytes
    assert est.host_peak_bytes > est.peak_bytes > est.live_tensor_bytes > 0
    assert est.peak_phase in ("forward", "backward", "optimizer")
    assert est.model_info.num_params == est.model_info.trainable_params == 787_584


@pytest.mark.parametrize("model", [LLAMA, GPT2])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_more_batch_or_sequence_means_more_memory(model, device):
    peaks = [estimate(model, cfg(batch_size=b, seq_len=s), device=device).peak_bytes
             for b, s in [(1, 128), (2, 128), (4, 128), (4, 256), (4, 512)]]
    assert peaks == sorted(peaks) and len(set(peaks)) == len(peaks)


@pytest.mark.parametrize("model", [LLAMA, GPT2])
def test_checkpointing_lowers_activations(model):
    plain = estimate(model, cfg(batch_size=8, seq_len=512))
    ckpt = estimate(model, cfg(batch_size=8, seq_len=512, gradient_checkpointing=True))
    assert ckpt.live_tensor_bytes < plain.live_tensor_bytes


def test_eager_attention_costs_more_than_sdpa():
    sdpa = estimate(LLAMA, cfg(batch_size=4, seq_len=1024))
    eager = estimate(LLAMA, cfg(batch_size=4, seq_len=1024, attention="eager"))
    assert eager.breakdown.activations > sdpa.breakdown.activations


def test_lora_drops_base_gradients_and_optimizer_states():
    full = estimate(LLAMA, cfg())
    lora = estimate(LLAMA, cfg(lora=LoraSettings(rank=8)))
    assert lora.model_info.trainable_params < full.model_info.trainable_params / 10
    # q_proj 128->128 and v_proj 128->64 per layer: r * (in + out)
    assert lora.model_info.trainable_params == 2 * 8 * ((128 + 128) + (128 + 64))
    assert lora.breakdown.optimizer_states < full.breakdown.optimizer_states / 10
    assert lora.peak_bytes < full.peak_bytes


def test_grad_accumulation_keeps_gradients_alive():
    one = estimate(LLAMA, cfg(batch_size=8, seq_len=512))
    many = estimate(LLAMA, cfg(batch_size=8, seq_len=512, grad_accum=4))
    assert many.breakdown.gradients > 0 and many.peak_bytes > one.peak_bytes


@pytest.mark.parametrize("method", ["analytic", "traced"])
def test_accumulation_counts_heap_churn_of_two_micro_batches_however_many(method):
    from overseer_plan.calibration import DEFAULTS

    one = estimate(GPT2, cfg(grad_accum=1), method=method)
    two = estimate(GPT2, cfg(grad_accum=2), method=method)
    eight = estimate(GPT2, cfg(grad_accum=8), method=method)
    # The fragmentation allowance (overhead) grows from one micro-batch's churn to two, then stays.
    assert two.breakdown.overhead > one.breakdown.overhead > DEFAULTS.cpu.constant_bytes
    assert eight.peak_bytes == pytest.approx(two.peak_bytes, rel=0.02)


def test_traced_churn_counts_two_micro_batches_however_many():
    # The churn the traced allowance is fed (overhead also holds the allocator model's heap gap,
    # which need not grow with accumulation): two micro-batches' worth from GA 2 on.
    from overseer_plan import estimate as estimate_module
    from overseer_plan.models import resolve_model_config

    config = resolve_model_config(GPT2)
    churn = {k: estimate_module.trace_inputs(config, cfg(grad_accum=k), "cpu")["churn"] for k in (1, 2, 8)}
    assert churn[2] > 1.5 * churn[1]
    assert churn[8] == churn[2]


def test_checkpointing_adds_a_heap_gap_to_the_closed_form():
    off, on = estimate(GPT2, cfg(batch_size=8, seq_len=512)), estimate(GPT2, cfg(batch_size=8, seq_len=512,
                                                                                  gradient_checkpointing=True))
    # The recompute's holes: the closed form's CPU peak exceeds its live tensors by more with checkpointing.
    assert on.peak_bytes - on.live_tensor_bytes > off.peak_bytes - off.live_tensor_bytes


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_data_parallel_adds_ddp_gradient_buckets_per_process(device):
    one = estimate(LLAMA, cfg(), device=device)
    two = estimate(LLAMA, cfg(num_processes=2), device=device)
    four = estimate(LLAMA, cfg(num_processes=4), device=device)
    buckets = one.model_info.trainable_params * 4
    assert two.breakdown.gradients - one.breakdown.gradients == buckets
    assert two.peak_bytes - one.peak_bytes >= buckets and four.peak_bytes == two.peak_bytes  # per process


def test_optimizers_order_by_state_size():
    states = {o: estimate(LLAMA, cfg(optimizer=o)).breakdown.optimizer_states
              for o in ("adamw", "sgd", "adamw8bit", "adafactor")}
    assert states["adamw"] > states["sgd"] > states["adamw8bit"] > states["adafactor"] > 0


def test_bf16_pure_halves_parameters():
    assert estimate(LLAMA, cfg(precision="bf16-pure")).breakdown.parameters * 2 == \
        estimate(LLAMA, cfg()).breakdown.parameters


def test_cuda_peak_is_the_allocator_reserve_plus_the_measured_context():
    for method in ("analytic", "traced"):
        est = estimate(LLAMA, cfg(), device="cuda", method=method)
        assert est.cuda_context_bytes > 256 * 2**20  # measured on an H100: 271-287 MiB
        assert est.peak_bytes == est.reserved_bytes + est.cuda_context_bytes
        # Two 32 MiB cuBLAS workspaces are allocated through the caching allocator.
        assert est.allocated_bytes >= est.live_tensor_bytes + 64 * 2**20
        assert est.reserved_bytes >= est.allocated_bytes
        assert est.breakdown.overhead >= est.cuda_context_bytes
        assert any("measured" in n for n in est.notes)
    cpu = estimate(LLAMA, cfg())
    assert cpu.reserved_bytes is None and cpu.cuda_context_bytes == 0


def test_analytic_is_fast_after_first_call():
    estimate("llama-3.1-8b", cfg())
    c = cfg(batch_size=4, seq_len=2048, precision="bf16")
    t0 = time.perf_counter()
    for _ in range(50):
        estimate("llama-3.1-8b", c, device="cuda")
    assert (time.perf_counter() - t0) / 50 < 0.005


def test_from_training_config_adapter():
    c = EstimateConfig.from_training_config(
        batch_size=4, gradient_accumulation_steps=2, max_sequence_length=256, mixed_precision=True,
        gradient_checkpointing=True, optimizer="AdamW", use_gpu=False, learning_rate=1e-4,
    )
    assert (c.batch_size, c.grad_accum, c.seq_len, c.precision, c.optimizer) == (4, 2, 256, "bf16", "adamw")


@pytest.mark.parametrize(
    "kwargs, words",
    [({"batch_size": 0}, "batch_size must be at least 1"), ({"seq_len": -5}, "seq_len must be at least 1"),
     ({"precision": "fp8"}, "precision")],
)
def test_bad_settings_are_user_errors(kwargs, words):
    with pytest.raises(UserInputError, match=words):
        EstimateConfig.build(**kwargs)


def test_sequence_longer_than_max_positions():
    with pytest.raises(UserInputError, match="max positions"):
        estimate("overseer-tiny", cfg(seq_len=4096))


def test_unknown_lora_target():
    with pytest.raises(UserInputError, match="not linear layers"):
        estimate(LLAMA, cfg(lora=LoraSettings(rank=4, targets=["nope"])))


# --- CLI -----------------------------------------------------------------------------------

def _app() -> typer.Typer:
    from overseer_plan.commands.estimate import estimate_command

    app = typer.Typer()
    app.command("estimate")(estimate_command)

    @app.command("other")
    def _other() -> None:  # a second command keeps `estimate` a named sub-command
        pass

    return app


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_cli_table_and_json():
    runner = CliRunner()
    res = runner.invoke(_app(), ["estimate", "--batch-size", "2", "--seq-len", "128"])
    assert res.exit_code == 0, res.output
    assert "MiB" in res.output and "peak" in res.output
    assert "live at the peak (in backward):" in res.output
    # One step, peak early in backward: the gradients do not exist yet, and the table says why it shows 0.
    assert "(not created yet at the peak)" in res.output
    accum = runner.invoke(_app(), ["estimate", "--batch-size", "2", "--seq-len", "128", "--grad-accum", "4"]).output
    assert "not created yet" not in accum  # kept across micro-batches, so present at the peak
    res = runner.invoke(_app(), ["estimate", "--model", str(ASSETS / "tiny-gpt2"), "--seq-len", "128", "--json", "--device", "cuda"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert {"peak_bytes", "host_peak_bytes", "breakdown", "peak_phase", "method"} <= set(data)
    assert data["peak_bytes"] == data["reserved_bytes"] + data["cuda_context_bytes"]
    res = runner.invoke(_app(), ["estimate", "--seq-len", "128", "--device", "cuda"])
    assert "reserved" in res.output and "CUDA context" in res.output


def test_cli_lora_flags_reach_the_estimate():
    runner = CliRunner()
    base = ["estimate", "--model", str(ASSETS / "tiny-gpt2"), "--seq-len", "128", "--lora-rank", "4"]
    plain = json.loads(runner.invoke(_app(), [*base, "--json"]).stdout)
    res = runner.invoke(_app(), [*base, "--lora-targets", "c_attn,c_proj", "--lora-dropout", "0.1", "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got["config"]["lora"] == {"rank": 4, "targets": ["c_attn", "c_proj"], "dropout": 0.1}
    assert got["model_info"]["trainable_params"] > plain["model_info"]["trainable_params"]
    assert got["breakdown"]["activations"] > plain["breakdown"]["activations"]
    table = runner.invoke(_app(), [*base, "--lora-targets", "c_attn", "--lora-dropout", "0.05"]).output
    assert "LoRA r=4 on c_attn dropout 0.05" in table


@pytest.mark.parametrize(
    "args",
    [
        ["--batch-size", "0"],
        ["--seq-len", "-3"],
        ["--seq-len", "100000"],
        ["--model", "no-such-model"],
        ["--model", str(ASSETS / "malformed-config.json")],
        ["--model", str(ASSETS / "bert-config.json")],
        ["--model", str(ASSETS / "unbuildable-config.json")],  # pad_token_id outside its vocabulary
        ["--precision", "fp8"],
        ["--lora-rank", "0"],
        ["--lora-dropout", "0.1"],
        ["--lora-rank", "4", "--lora-dropout", "1.5"],
        ["--lora-rank", "4", "--lora-targets", ","],
        ["--lora-rank", "4", "--lora-targets", "no_such_proj"],
        *([["--calibrate", "--device", "cuda"]] if not _cuda() else []),
    ],
)
def test_cli_bad_input_exit_2_one_line(args):
    res = CliRunner().invoke(_app(), ["estimate", *args])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("overseer: error:")


@pytest.mark.parametrize("method", ["analytic", "traced"])
def test_a_model_without_sdpa_is_estimated_with_eager_attention(method):
    # transformers has no SDPA path for Bloom: from_config(attn_implementation="sdpa") raises, and
    # from_config() alone (the benchmark protocol, the trainer) takes eager.
    bloom = {"model_type": "bloom", "n_layer": 2, "hidden_size": 64, "n_head": 4, "vocab_size": 500}
    cfg = EstimateConfig(batch_size=2, seq_len=128)
    est = estimate(bloom, cfg, method=method)
    assert est.config.attention == "eager"
    assert any("no SDPA attention" in n for n in est.notes)
    eager = estimate(bloom, cfg.model_copy(update={"attention": "eager"}), method=method)
    assert est.peak_bytes == eager.peak_bytes
