"""Estimator accuracy on a GPU: predicted vs measured `torch.cuda` peaks of real training steps.

Two halves, so the GPU is held only for measuring:

    python bench/gpu_accuracy.py measure --out bench/results/gpu_measurements.json --workers 6
        (on the GPU machine) the issue's GPU protocol (overseer_plan/_measure.py with device
        'cuda': 3 AdamW steps, max_memory_reserved / max_memory_allocated, the CUDA context)
        over the CPU benchmark's matrix plus held-out catalogue shapes. Matrix rows run in
        `--workers` parallel processes (each process's allocator peaks are its own); the
        context rows run one at a time, since they read device-wide memory.
    python bench/gpu_accuracy.py report --measurements bench/results/gpu_measurements.json
        (anywhere; no GPU needed) both estimators with device='cuda' for every measured row,
        errors against max_memory_reserved, written to bench/results/gpu_accuracy.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from estimator_accuracy import ACCUM_ROWS, BATCHES, CKPT, FAMILIES, PRECISION, SEQS  # noqa: E402

# Shapes a GPU user trains, from the catalogue, none in the matrix (sequence 1024-2048, 16-bit).
HELD_OUT = [
    ("gpt2", 8, 1024, False, "fp32", 1, None),
    ("gpt2", 8, 1024, False, "bf16", 1, None),
    ("gpt2", 8, 1024, True, "bf16", 1, "eager"),
    ("gpt2-medium", 4, 1024, True, "bf16", 2, None),
    ("pythia-160m", 8, 1024, False, "bf16", 1, None),
    ("qwen2-0.5b", 4, 1024, False, "bf16", 1, None),
    ("qwen2-0.5b", 2, 2048, True, "bf16-pure", 1, None),
    ("llama-3.2-1b", 2, 2048, True, "bf16", 1, None),
    ("llama-3.2-1b", 4, 1024, False, "bf16-pure", 1, None),
]
# A second held-out set, measured after the trace and allocator model were fixed on the rows above
# (2026-11-24), to check them on shapes they were not tuned on: fp32 GQA, long sequences, deep
# models, accumulation with a large vocabulary and a 7B-shaped model in pure bf16.
HELD_OUT_2 = [
    ("qwen2-0.5b", 8, 512, False, "fp32", 1, None),
    ("qwen2-0.5b", 4, 1024, False, "bf16", 4, None),
    ("llama-3.2-1b", 1, 4096, True, "bf16", 1, None),
    ("gpt2-large", 2, 1024, True, "bf16", 1, None),
    ("gpt2-medium", 8, 512, False, "fp32", 1, None),
    ("pythia-160m", 4, 2048, False, "fp32", 1, None),
    ("gpt2", 16, 512, True, "bf16", 1, "eager"),
    ("pythia-160m", 8, 1024, True, "bf16-pure", 2, None),
    ("llama-2-7b", 1, 512, True, "bf16-pure", 1, None),
]
# Context rows (run alone): one per family and precision at the smallest shape.
CONTEXT_ROWS = [(f, 1, 256, False, p, 1, None) for f in FAMILIES for p in PRECISION]


def matrix_rows() -> list[tuple]:
    rows = [(*r, 1, None) for r in itertools.product(FAMILIES, BATCHES, SEQS, CKPT, PRECISION)]
    return rows + [(*r, None) for r in ACCUM_ROWS]


def model_config(name: str) -> dict:
    if name in FAMILIES:
        return dict(FAMILIES[name])
    return json.loads((ROOT / "overseer_plan" / "catalog" / f"{name}.json").read_text())["config"]


def row_key(row: tuple) -> str:
    name, b, s, ckpt, prec, ga, attn = row
    return f"{name}|b{b}|s{s}|ga{ga}|ckpt{int(ckpt)}|{prec}|{attn or 'default'}"


def job(row: tuple) -> dict:
    name, b, s, ckpt, prec, ga, attn = row
    return {"config": model_config(name), "batch_size": b, "seq_len": s, "gradient_checkpointing": ckpt,
            "precision": prec, "grad_accum": ga, "steps": 3, "device": "cuda", "attention": attn}


def _measure_one(row: tuple) -> tuple[str, dict]:
    from overseer_plan._measure import measure

    try:
        return row_key(row), measure(job(row), timeout_s=600)
    except Exception as e:  # noqa: BLE001 - record and go on: one failing row must not lose the rest
        return row_key(row), {"error": str(e)}


def cmd_measure(args: argparse.Namespace) -> None:
    out = Path(args.out)
    store = json.loads(out.read_text()) if out.exists() else {"runs": {}, "context": {}}
    rows = HELD_OUT_2 if args.held_out_2 else (matrix_rows() if not args.held_out_only else []) + HELD_OUT
    rows = [r for r in rows if (not args.only or args.only in row_key(r)) and not (args.skip and args.skip in row_key(r))]
    todo = [r for r in rows for _ in range(args.repeats - len(store["runs"].get(row_key(r), [])))]
    t0 = time.time()
    with concurrent.futures.ThreadPoolExecutor(args.workers) as pool:
        for i, (key, res) in enumerate(pool.map(_measure_one, todo)):
            store["runs"].setdefault(key, []).append(res)
            got = res.get("max_reserved_bytes")
            print(f"[{i + 1}/{len(todo)} {time.time() - t0:5.0f}s] {key}: "
                  + (f"reserved {got / 2**20:.1f} MiB allocated {res['max_allocated_bytes'] / 2**20:.1f} MiB"
                     if got is not None else res.get("error", "?")), flush=True)
            out.write_text(json.dumps(store, indent=1, sort_keys=True) + "\n")
    for row in CONTEXT_ROWS[: args.context_rows]:
        key, res = _measure_one(row)
        store["context"].setdefault(key, []).append(res)
        print(f"context {key}: " + json.dumps({k: v for k, v in res.items() if "device" in k or "process" in k}),
              flush=True)
        out.write_text(json.dumps(store, indent=1, sort_keys=True) + "\n")


def _parse_key(key: str) -> tuple:
    name, b, s, ga, ckpt, prec, attn = key.split("|")
    return (name, int(b[1:]), int(s[1:]), ckpt == "ckpt1", prec, int(ga[2:]), None if attn == "default" else attn)


def cmd_report(args: argparse.Namespace) -> None:
    os.environ["OVERSEER_CACHE_DIR"] = tempfile.mkdtemp(prefix="overseer-bench-")
    import transformers

    transformers.logging.set_verbosity_error()
    from overseer_plan.estimate import EstimateConfig, estimate
    from overseer_plan.models import resolve_model_config

    store = json.loads(Path(args.measurements).read_text())
    rows = []
    for key, runs in sorted(store["runs"].items()):
        good = [r for r in runs if "max_reserved_bytes" in r]
        if not good:
            print(f"{key}: no successful run ({runs[0].get('error')})")
            continue
        name, b, s, ckpt, prec, ga, attn = _parse_key(key)
        model = model_config(name) if name in FAMILIES else name
        # The protocol builds the model from its config with defaults: KV cache on unless the config says off.
        kv = bool(getattr(resolve_model_config(model), "use_cache", True))
        cfg = EstimateConfig(batch_size=b, seq_len=s, gradient_checkpointing=ckpt, precision=prec, grad_accum=ga,
                             attention=attn or "sdpa", kv_cache=kv)
        an = estimate(model, cfg, device="cuda")
        tr = estimate(model, cfg, device="cuda", method="traced")
        reserved = statistics.median(r["max_reserved_bytes"] for r in good)
        allocated = statistics.median(r["max_allocated_bytes"] for r in good)
        row = {"key": key, "held_out": name not in FAMILIES, "second": _parse_key(key) in HELD_OUT_2, "reserved": reserved, "allocated": allocated,
               "reserved_runs": [r["max_reserved_bytes"] for r in good],
               "analytic": an.reserved_bytes, "traced": tr.reserved_bytes,
               "traced_allocated": tr.allocated_bytes, "live": tr.live_tensor_bytes, "phase": tr.peak_phase}
        rows.append(row)
        print(f"{key:48} reserved {reserved / 2**20:8.1f} MiB  analytic {row['analytic'] / reserved - 1:+6.1%}  "
              f"traced {row['traced'] / reserved - 1:+6.1%}  allocated {allocated / 2**20:8.1f} "
              f"traced {row['traced_allocated'] / allocated - 1:+6.1%}", flush=True)
    report = _report(rows, store)
    print(report)
    if args.rows_out:
        Path(args.rows_out).write_text(json.dumps(rows, indent=1) + "\n")
    if args.out:
        Path(args.out).write_text(report)


def _stats(rows: list[dict], key: str, against: str = "reserved") -> str:
    if not rows:
        return "(no rows)"
    errs = [r[key] / r[against] - 1 for r in rows]
    return (f"median {statistics.median(abs(e) for e in errs):.1%}, max {max(abs(e) for e in errs):.1%}, "
            f"worst under {min(errs):+.1%}, {sum(e < -0.03 for e in errs)} rows under -3%")


def _report(rows: list[dict], store: dict) -> str:
    matrix = [r for r in rows if not r["held_out"]]
    held = [r for r in rows if r["held_out"] and not r.get("second")]
    second = [r for r in rows if r.get("second")]
    some = next((r for runs in store["runs"].values() for r in runs if "gpu_name" in r), {})
    lines = [
        "# Estimator accuracy on a GPU",
        "",
        f"GPU: {some.get('gpu_name')}, CUDA {some.get('cuda_version')}, torch {some.get('torch_version')}, "
        f"transformers {some.get('transformers_version')}. Generated {time.strftime('%Y-%m-%d')} by "
        "`python bench/gpu_accuracy.py report`.",
        "",
        f"- matrix ({len(matrix)} rows), traced vs max_memory_reserved: {_stats(matrix, 'traced')}",
        f"- matrix, analytic vs max_memory_reserved: {_stats(matrix, 'analytic')}",
        f"- matrix, traced allocator model vs max_memory_allocated: {_stats(matrix, 'traced_allocated', 'allocated')}",
        f"- catalogue shapes, first set ({len(held)} rows), traced: {_stats(held, 'traced')}",
        f"- catalogue shapes, first set, analytic: {_stats(held, 'analytic')}",
        f"- catalogue shapes, second set ({len(second)} rows, measured after the model was fixed on the rows above; "
        f"nothing tuned on them), traced: {_stats(second, 'traced')}",
        f"- second set, analytic: {_stats(second, 'analytic')}",
        "",
        "| row | reserved MiB | allocated MiB | analytic | traced | traced allocated |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['key']} | {r['reserved'] / 2**20:.1f} | {r['allocated'] / 2**20:.1f} | "
                     f"{r['analytic'] / r['reserved'] - 1:+.1%} | {r['traced'] / r['reserved'] - 1:+.1%} | "
                     f"{r['traced_allocated'] / r['allocated'] - 1:+.1%} |")
    ctx = [(k, r) for k, runs in store.get("context", {}).items() for r in runs if "device_used_end_bytes" in r]
    if ctx:
        lines += ["", "## CUDA context (rows run alone)", "",
                  "| row | used before init | after init | after steps | reserved at end | context at end |",
                  "|---|---|---|---|---|---|"]
        for k, r in ctx:
            before = r.get("device_used_before_init_bytes") or 0
            lines.append(
                f"| {k} | {before / 2**20:.0f} | {(r['device_used_after_init_bytes'] - before) / 2**20:.0f} | "
                f"{(r['device_used_end_bytes'] - before) / 2**20:.0f} | {r['reserved_end_bytes'] / 2**20:.0f} | "
                f"{(r['device_used_end_bytes'] - before - r['reserved_end_bytes']) / 2**20:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure", help="run the GPU protocol (needs a CUDA device)")
    m.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu_measurements.json"))
    m.add_argument("--workers", type=int, default=4)
    m.add_argument("--repeats", type=int, default=1)
    m.add_argument("--context-rows", type=int, default=len(CONTEXT_ROWS))
    m.add_argument("--held-out-only", action="store_true")
    m.add_argument("--held-out-2", action="store_true", help="only the second held-out set")
    m.add_argument("--only", default=None, help="only rows whose key contains this")
    m.add_argument("--skip", default=None, help="no rows whose key contains this")
    r = sub.add_parser("report", help="predict every measured row and compare (no GPU needed)")
    r.add_argument("--measurements", default=str(ROOT / "bench" / "results" / "gpu_measurements.json"))
    r.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu_accuracy.md"))
    r.add_argument("--rows-out", default=str(ROOT / "bench" / "results" / "gpu_rows.json"))
    args = ap.parse_args()
    {"measure": cmd_measure, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
