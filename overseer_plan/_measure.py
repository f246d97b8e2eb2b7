"""The measurement protocol: the real peak of a few training steps on this machine's CPU.

This is what "measured" means for the estimator (bench/estimator_accuracy.py) and what
`overseer estimate --calibrate` fits its factors on. A fresh Python process:

1. imports torch and transformers (and the library the run needs: peft for LoRA, bitsandbytes
   for 8-bit AdamW, transformers.optimization for Adafactor) and records its resident set size (RSS);
2. builds the model with ``AutoModelForCausalLM.from_config(config)`` (random weights);
3. creates ``torch.optim.AdamW`` (or the optimizer named in the job);
4. runs ``steps`` optimizer steps on random token batches of the given shape with
   ``labels = input_ids``, ``grad_accum`` micro-batches per step, autocast bf16/fp16 for
   mixed precision, ``model.gradient_checkpointing_enable()`` when asked;
   ``bf16-pure`` builds the model in bf16 (parameters, gradients and optimizer states), and the
   other optimizers are the trainer's (`trainer.optim.make_optimizer`: SGD with momentum,
   transformers' Adafactor with an external learning rate, bitsandbytes' AdamW8bit);
   with ``"lora": {"rank": r, "targets": [...]}`` the base is frozen and peft's
   ``get_peft_model`` adds LoRA adapters (alpha 2r, the job's dropout), and the optimizer gets the
   trainable (adapter) parameters only, as a peft fine-tuning script does;
5. reports ``ru_maxrss`` minus the RSS recorded after the imports.

With ``"device": "cuda"`` in the job (the GPU protocol) the model is built the same way on the
host, moved with ``model.to("cuda")`` (what accelerate's ``prepare`` does), the batches are made on
the device and autocast is CUDA's; the report adds ``torch.cuda.max_memory_reserved()`` and
``max_memory_allocated()`` after the steps and the CUDA context: device memory in use (NVML, which
creates no context) before ``torch.cuda.init()``, and ``mem_get_info()`` after initialisation and
again after the steps, where it includes the kernels loaded lazily by the first step. The context
figures are only meaningful when no other process allocates on the device meanwhile (the GPU
benchmark measures them in processes of their own).

Run as ``python -m overseer_plan._measure`` with a JSON job on stdin; it prints one JSON
line. `measure()` does that in a subprocess so the caller's own memory never mixes in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss_bytes() -> int:
    """Current RSS from /proc (Linux); falls back to ru_maxrss elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _maxrss_bytes() -> int:
    import resource

    # Linux reports ru_maxrss in KiB (macOS in bytes; this protocol is for Linux).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _nvml_device0(read: Any) -> int | None:
    """`read(pynvml, handle)` on device 0 inside an NVML session (NVML creates no CUDA context);
    None without NVML or when it refuses: these figures are optional."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return read(pynvml, pynvml.nvmlDeviceGetHandleByIndex(0))
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - NVML missing or refused
        return None


def _nvml_used_bytes() -> int | None:
    """Device 0's used memory from NVML."""
    return _nvml_device0(lambda nv, h: int(nv.nvmlDeviceGetMemoryInfo(h).used))


def _nvml_process_bytes() -> int | None:
    """This process's device memory as NVML (and nvidia-smi) report it; None where NVML cannot say."""
    def read(nv: Any, h: Any) -> int | None:
        for proc in nv.nvmlDeviceGetComputeRunningProcesses(h):
            if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                return int(proc.usedGpuMemory)
        return None

    return _nvml_device0(read)


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run the protocol in *this* process (call it only in a fresh subprocess)."""
    t0 = time.perf_counter()
    import torch
    import transformers

    opt_name = job.get("optimizer", "adamw")
    if opt_name != "adamw":
        from trainer.optim import make_optimizer
    # The library the optimizer comes from is imported before the baseline, as a script that uses it
    # does at its top (transformers.optimization for Adafactor, bitsandbytes for 8-bit AdamW; SGD is
    # torch's). Either may import transformers' modelling stack, which the growth then no longer
    # shows (overseer_plan/preload.py; the estimate knows).
    if opt_name == "adafactor":
        import transformers.optimization  # noqa: F401
    if opt_name == "adamw8bit":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            pass  # make_optimizer says what to install
    lora = job.get("lora")
    if lora:
        import peft  # before the baseline: a peft script has it loaded before it trains
    device = job.get("device", "cpu")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, not {device!r}")
    cuda: dict[str, Any] = {}
    if device == "cuda":
        cuda["device_used_before_init_bytes"] = _nvml_used_bytes()
    rss_after_import = _rss_bytes()
    maxrss_after_import = _maxrss_bytes()
    if device == "cuda":
        torch.cuda.init()
        free, total = torch.cuda.mem_get_info()
        cuda["device_used_after_init_bytes"] = total - free
        cuda["device_total_bytes"] = total
    torch.manual_seed(int(job.get("seed", 0)))

    cfg_dict = dict(job["config"])
    model_type = cfg_dict.pop("model_type")
    config = transformers.AutoConfig.for_model(model_type, **cfg_dict)
    precision = job.get("precision", "fp32")
    if precision not in ("fp32", "bf16", "fp16", "bf16-pure"):
        raise ValueError(f"precision must be fp32, bf16, fp16 or bf16-pure, not {precision!r}")
    kwargs: dict[str, Any] = {}
    if job.get("attention"):
        kwargs["attn_implementation"] = job["attention"]
    if precision == "bf16-pure":
        kwargs["dtype"] = torch.bfloat16
    model = transformers.AutoModelForCausalLM.from_config(config, **kwargs)
    if job.get("gradient_checkpointing"):
        # transformers 5 checkpoints non-reentrantly by default (the trace pins the same).
        model.gradient_checkpointing_enable()
    if lora:
        rank = int(lora["rank"])
        model = peft.get_peft_model(model, peft.LoraConfig(r=rank, lora_alpha=2 * rank,
                                                           lora_dropout=float(lora.get("dropout", 0.0)),
                                                           target_modules=lora["targets"], task_type="CAUSAL_LM"))
    model.train()
    if device == "cuda":
        model.to("cuda")

    params = [p for p in model.parameters() if p.requires_grad]
    if opt_name == "adamw":
        opt = torch.optim.AdamW(params, lr=1e-4)
    else:
        # What the trainer runs for the memory-lean optimizers (its AdamW differs only in betas).
        opt = make_optimizer(opt_name, [{"params": params}], 1e-4)

    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    b, s, ga = int(job["batch_size"]), int(job["seq_len"]), int(job.get("grad_accum", 1))
    vocab = int(config.vocab_size)
    for _ in range(int(job.get("steps", 3))):
        for _ in range(ga):
            ids = torch.randint(0, vocab, (b, s), device=device)
            if amp_dtype is not None:
                with torch.autocast(device, dtype=amp_dtype):
                    loss = model(input_ids=ids, labels=ids).loss
            else:
                loss = model(input_ids=ids, labels=ids).loss
            (loss / ga).backward()
            del loss, ids
        opt.step()
        opt.zero_grad(set_to_none=True)

    if device == "cuda":
        torch.cuda.synchronize()
        free, total = torch.cuda.mem_get_info()
        stats = torch.cuda.memory_stats()
        cuda.update({
            "max_reserved_bytes": torch.cuda.max_memory_reserved(),
            "max_allocated_bytes": torch.cuda.max_memory_allocated(),
            "reserved_end_bytes": torch.cuda.memory_reserved(),
            "allocated_end_bytes": torch.cuda.memory_allocated(),
            "device_used_end_bytes": total - free,
            "alloc_retries": int(stats.get("num_alloc_retries", 0)),
            "segments_peak": int(stats.get("segment.all.peak", 0)),
            "process_used_end_bytes": _nvml_process_bytes(),
            "gpu_name": torch.cuda.get_device_name(0),
            "cuda_version": torch.version.cuda,
        })
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "device": device,
        **cuda,
        "peak_delta_bytes": _maxrss_bytes() - rss_after_import,
        "rss_after_import_bytes": rss_after_import,
        "maxrss_after_import_bytes": maxrss_after_import,
        "final_rss_bytes": _rss_bytes(),
        "num_params": n_params,
        "param_dtype": str(next(model.parameters()).dtype),
        "optimizer": type(opt).__name__,
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "num_threads": torch.get_num_threads(),
        "wall_s": time.perf_counter() - t0,
    }


def measure(job: dict[str, Any], *, timeout_s: float = 1800.0) -> dict[str, Any]:
    """Run the protocol for `job` in a fresh subprocess and return its JSON report.

    `job` keys: config (HF config dict with model_type), batch_size, seq_len, grad_accum,
    precision ('fp32'|'bf16'|'fp16'|'bf16-pure'), gradient_checkpointing,
    optimizer ('adamw'|'sgd'|'adafactor'|'adamw8bit', the last with bitsandbytes),
    attention (None = the transformers default), steps (3), seed, device ('cpu' | 'cuda'),
    lora ({'rank': r, 'targets': [module names]}; needs peft).
    """
    proc = subprocess.run(
        [sys.executable, "-m", "overseer_plan._measure"],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"measurement subprocess failed (exit {proc.returncode}): {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(run_job(json.loads(sys.stdin.read()))))
