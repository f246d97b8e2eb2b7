"""Plan quality under hard memory caps: the plan's choice vs every configuration of a grid.

For each cap (RLIMIT_AS, i.e. `prlimit --as`, set in fresh subprocesses), this benchmark
  1. plans in a capped subprocess (probe + make_plan, the planner free to split the batch),
  2. measures tokens/s of every grid configuration (micro-batch x gradient checkpointing at
     the same effective batch and sequence length) and of the plan's choice, each in its own
     capped subprocess, interleaved in one run so machine noise hits all of them alike,
and reports plan/best and every OOM. It also times `overseer plan` for the default model as
a cold process against `python -c "import torch, transformers"`, side by side.

    python bench/plan_quality.py                      # full run (~15 min on an idle 2-core box)
    python bench/plan_quality.py --caps 2.5 3.5 --quick
    BENCH_EFFECTIVE_BATCH=64 BENCH_SEQ=512 python bench/plan_quality.py   # a larger step
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GiB = 1024**3
# GPT-2-style model from the trainer benchmark reference: 4 layers, width 256, vocab 8000.
MODEL_CONFIG = {
    "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 8000, "n_positions": 512,
    "n_embd": 256, "n_layer": 4, "n_head": 4, "use_cache": False,
}
EFFECTIVE_BATCH, SEQ = int(os.environ.get("BENCH_EFFECTIVE_BATCH", 32)), int(os.environ.get("BENCH_SEQ", 256))


def _limit(cap_bytes: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap_bytes, cap_bytes))
    return apply


def _run_capped(args: list[str], cap_bytes: int, timeout: float = 600) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(os.cpu_count() or 1), PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout,
                       preexec_fn=_limit(cap_bytes), env=env)
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"error": f"exit {p.returncode}: {tail[0][:200]}"}


# ---------------------------------------------------------------- workers (run capped)
def worker_plan(model_dir: str) -> None:
    from overseer_plan.config import TrainingConfig
    from overseer_plan.plan import Workload, make_plan
    from overseer_plan.probe import probe

    hw = probe(output_dir=tempfile.gettempdir())
    cfg = TrainingConfig(batch_size=EFFECTIVE_BATCH, gradient_accumulation_steps=1, max_sequence_length=SEQ)
    plan = make_plan(hw, Workload(model=model_dir, config=cfg, mode="standard", resplit_batch=True))
    c = plan.config
    print(json.dumps({"feasible": plan.feasible, "batch_size": c.batch_size, "gc": c.gradient_checkpointing,
                      "precision": c.precision(), "budget_bytes": plan.budget_bytes,
                      "limit_bytes": hw.ram.limit_bytes, "peak_bytes": (plan.estimate or {}).get("peak_bytes")}))


def worker_measure(model_dir: str, micro: int, gc: bool, precision: str, steps: int) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    if gc:
        model.gradient_checkpointing_enable()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    data = torch.randint(0, MODEL_CONFIG["vocab_size"], (EFFECTIVE_BATCH, SEQ))
    accum = EFFECTIVE_BATCH // micro
    times = []
    try:
        for _ in range(steps + 1):  # the first step warms up (optimizer state, allocator)
            t0 = time.perf_counter()
            for i in range(accum):
                x = data[i * micro:(i + 1) * micro]
                with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                    loss = model(input_ids=x, labels=x).loss / accum
                loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
    except RuntimeError as e:
        if "can't allocate memory" in str(e) or "not enough memory" in str(e):
            print(json.dumps({"oom": True}))
            return
        raise
    tps = EFFECTIVE_BATCH * SEQ / statistics.median(times[1:])
    print(json.dumps({"oom": False, "tokens_per_s": tps}))


# ---------------------------------------------------------------- driver
def bench_cap(model_dir: str, cap_gib: float, micro_sizes: list[int], steps: int) -> dict:
    cap = int(cap_gib * GiB)
    plan = _run_capped(["--worker-plan", model_dir], cap)
    if "error" in plan:
        return {"cap_gib": cap_gib, "error": plan["error"]}
    precision = plan["precision"]
    grid = [(m, gc) for gc in (False, True) for m in micro_sizes]
    results = {}
    for m, gc in grid:  # each config in its own capped process, in a fixed interleaved order
        results[(m, gc)] = _run_capped(["--worker-measure", model_dir, str(m), str(int(gc)), precision, str(steps)], cap)
    chosen = (plan["batch_size"], plan["gc"])
    if chosen not in results:
        results[chosen] = _run_capped(["--worker-measure", model_dir, str(chosen[0]), str(int(chosen[1])), precision,
                                       str(steps)], cap)
    ok = {k: v["tokens_per_s"] for k, v in results.items() if not v.get("oom") and "tokens_per_s" in v}
    best = max(ok.items(), key=lambda kv: kv[1]) if ok else None
    plan_tps = ok.get(chosen)
    return {
        "cap_gib": cap_gib, "plan": plan, "precision": precision,
        "grid": {f"micro={m},gc={'on' if gc else 'off'}": v for (m, gc), v in results.items()},
        "best": {"config": f"micro={best[0][0]},gc={'on' if best[0][1] else 'off'}", "tokens_per_s": best[1]} if best else None,
        "plan_tokens_per_s": plan_tps,
        "plan_over_best": (plan_tps / best[1]) if (best and plan_tps) else None,
        "plan_oom": bool(results[chosen].get("oom")),
        "grid_ooms": sorted(k for k, v in results.items() if v.get("oom")),
    }


def cold_plan_timing(reps: int) -> dict:
    """Cold processes, interleaved with the import baseline; plus one first-ever run (empty cache dir:
    the model census and the traced dry run are computed, not read back)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with tempfile.TemporaryDirectory(prefix="overseer-cold-") as empty:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "overseer_plan", "plan"], capture_output=True, check=True,
                       env={**env, "OVERSEER_CACHE_DIR": empty})
        first = time.perf_counter() - t0
    base, plan = [], []
    for _ in range(reps):  # interleaved: noise hits both alike
        for sink, cmd in ((base, [sys.executable, "-c", "import torch, transformers"]),
                          (plan, [sys.executable, "-m", "overseer_plan", "plan"])):
            t0 = time.perf_counter()
            subprocess.run(cmd, capture_output=True, env=env, check=True)
            sink.append(time.perf_counter() - t0)
    b, p = statistics.median(base), statistics.median(plan)
    return {"import_torch_transformers_s": b, "overseer_plan_s": p, "ratio": p / b, "reps": reps,
            "first_run_empty_cache_s": first, "first_run_ratio": first / b}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--caps", type=float, nargs="+", default=[2.5, 3.0, 4.0], help="RLIMIT_AS caps in GiB")
    ap.add_argument("--steps", type=int, default=2, help="timed optimizer steps per configuration")
    ap.add_argument("--quick", action="store_true", help="fewer micro-batch sizes and repetitions")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "plan_quality.json")
    ap.add_argument("--worker-plan", nargs=1)
    ap.add_argument("--worker-measure", nargs=5)
    a = ap.parse_args()
    if a.worker_plan:
        return worker_plan(a.worker_plan[0])
    if a.worker_measure:
        d, m, gc, prec, steps = a.worker_measure
        return worker_measure(d, int(m), bool(int(gc)), prec, int(steps))
    model_dir = tempfile.mkdtemp(prefix="overseer-bench-model-")
    (Path(model_dir) / "config.json").write_text(json.dumps(MODEL_CONFIG))
    divisors = [d for d in range(1, EFFECTIVE_BATCH + 1) if EFFECTIVE_BATCH % d == 0]  # accumulation stays whole
    micro = divisors[1::2] if a.quick else divisors
    report = {"date": time.strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cores, no GPU", "model": MODEL_CONFIG,
              "effective_batch": EFFECTIVE_BATCH, "seq": SEQ, "caps": []}
    for cap in a.caps:
        r = bench_cap(model_dir, cap, micro, a.steps)
        report["caps"].append(r)
        print(json.dumps(r), flush=True)
    report["cold_plan"] = cold_plan_timing(3 if a.quick else 5)
    print(json.dumps(report["cold_plan"]))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
