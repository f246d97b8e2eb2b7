"""Estimator accuracy: predicted vs measured peak memory of real CPU training steps.

    python bench/estimator_accuracy.py            # full matrix (~15 min on 2 cores)
    python bench/estimator_accuracy.py --quick    # 6 rows, for iteration
    python bench/estimator_accuracy.py --family gpt2-4x256 --also-ckpt-batch 8   # a subset

"Measured" is the benchmark protocol in overseer_plan/_measure.py (fresh subprocess, ru_maxrss
growth over the post-import RSS, 3 AdamW steps). Predictions use the shipped calibration
defaults (a private empty cache dir is used so a local calibration file cannot leak in); the
defaults were fitted on separate calibration models (overseer_plan/calibration.py), none of
which is a row here. Also times the estimators, including a traced 7B-shaped config in its
own process with its ru_maxrss.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FAMILIES = {
    "gpt2-4x256": {"model_type": "gpt2", "n_layer": 4, "n_embd": 256, "n_head": 4, "vocab_size": 8000,
                   "n_positions": 1024},
    "llama-4x256-gqa": {"model_type": "llama", "num_hidden_layers": 4, "hidden_size": 256,
                        "intermediate_size": 688, "num_attention_heads": 8, "num_key_value_heads": 2,
                        "vocab_size": 16000, "max_position_embeddings": 1024, "tie_word_embeddings": False},
    "neox-4x256": {"model_type": "gpt_neox", "num_hidden_layers": 4, "hidden_size": 256,
                   "intermediate_size": 1024, "num_attention_heads": 4, "vocab_size": 16000,
                   "max_position_embeddings": 1024},
}
BATCHES, SEQS, CKPT, PRECISION = (1, 4, 8), (256, 512), (False, True), ("fp32", "bf16")
QUICK = [(f, b, 512, False, "fp32", 1) for f in FAMILIES for b in (1, 8)]
# Gradient accumulation, which every plan uses: 8 micro-batches of 2 x 256 per optimizer step.
ACCUM_ROWS = [(f, 2, 256, ckpt, prec, 8) for f in FAMILIES for ckpt in CKPT for prec in PRECISION]
MEASUREMENTS = ROOT / "bench" / "results" / "estimator_measurements.json"
TIMING_MODELS = ["llama-3.2-1b", "qwen2-0.5b", "llama-2-7b"]
_NOTES_MARKER = "<!-- analysis (hand-written, kept across re-runs) -->"


def _rows(quick: bool, families: list[str] | None = None,
          also_ckpt_batch: int | None = None) -> list[tuple[str, int, int, bool, str, int]]:
    """The matrix rows: all, `--quick`, or every row of `families` plus, from the other families,
    the checkpointed rows at batch `also_ckpt_batch`."""
    if quick:
        return QUICK
    rows = [(*r, 1) for r in itertools.product(FAMILIES, BATCHES, SEQS, CKPT, PRECISION)] + ACCUM_ROWS
    if families:
        rows = [r for r in rows if r[0] in families or (r[3] and r[1] == also_ckpt_batch)]
    return rows


def _row_key(fam: str, b: int, s: int, ckpt: bool, prec: str, ga: int) -> str:
    import torch
    import transformers

    return f"{fam}|b{b}|s{s}|ga{ga}|ckpt{int(ckpt)}|{prec}|steps3|torch {torch.__version__}|transformers {transformers.__version__}"


def protocol_job(fam: str, b: int, s: int, ckpt: bool, prec: str, ga: int) -> dict:
    """The measurement protocol's job (overseer_plan/_measure.py) for one matrix row."""
    return {"config": FAMILIES[fam], "batch_size": b, "seq_len": s, "gradient_checkpointing": ckpt,
            "precision": prec, "grad_accum": ga, "steps": 3}


def _measured(row: tuple, repeats: int, reuse: bool, store: dict) -> list[int]:
    """`repeats` protocol runs of a row (fresh processes), reusing stored runs when asked."""
    from overseer_plan._measure import measure

    key = _row_key(*row)
    runs = list(store.get(key, [])) if reuse else []
    while len(runs) < repeats:
        runs.append(int(measure(protocol_job(*row))["peak_delta_bytes"]))
    store[key] = runs
    return runs[:repeats]


def _time_traced(model: str, device: str) -> dict:
    """Trace a catalogue model in a fresh process; report wall time and the largest ru_maxrss of that
    process and of its children (on CPU the real-allocator replay runs in child processes)."""
    code = (
        "import json,resource,time,transformers;transformers.logging.set_verbosity_error();"
        "from overseer_plan.estimate import estimate,EstimateConfig;t=time.perf_counter();"
        f"e=estimate({model!r},EstimateConfig(batch_size=1,seq_len=1024),method='traced',device={device!r});"
        "print(json.dumps({'wall_s':time.perf_counter()-t,'maxrss':max(resource.getrusage(0).ru_maxrss,"
        "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)*1024,"
        "'peak':e.peak_bytes,'params':e.model_info.num_params,'replay':any('real-allocator' in n for n in e.notes)}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="6 rows (fp32, seq 512, batch 1 and 8) instead of 72")
    ap.add_argument("--family", action="append", choices=sorted(FAMILIES),
                    help="only this family's rows (repeatable); default all")
    ap.add_argument("--also-ckpt-batch", type=int, default=None,
                    help="with --family: also the other families' checkpointed rows at this batch size")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "estimator_accuracy.md"))
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--rows-out", default=None,
                    help="also write every row (measured runs, both methods, the traced estimate's two halves) as "
                         "JSON here (default when writing: bench/results/estimator_rows.json)")
    ap.add_argument("--repeats", type=int, default=21,
                    help="protocol runs per row in fresh processes; 'measured' is their median (default 21)")
    ap.add_argument("--reuse-measurements", action="store_true",
                    help=f"reuse runs stored in {MEASUREMENTS.relative_to(ROOT)} for the same row and torch/transformers "
                         "versions (measuring only what is missing); predictions are always recomputed")
    args = ap.parse_args()

    os.environ["OVERSEER_CACHE_DIR"] = tempfile.mkdtemp(prefix="overseer-bench-")
    import transformers

    transformers.logging.set_verbosity_error()
    from overseer_plan.estimate import EstimateConfig, estimate

    store = json.loads(MEASUREMENTS.read_text()) if MEASUREMENTS.exists() else {}
    rows = []
    t_start = time.time()
    for fam, b, s, ckpt, prec, ga in _rows(args.quick, args.family, args.also_ckpt_batch):
        cfg = EstimateConfig(batch_size=b, seq_len=s, gradient_checkpointing=ckpt, precision=prec, grad_accum=ga)
        runs = _measured((fam, b, s, ckpt, prec, ga), args.repeats, args.reuse_measurements, store)
        if not args.no_write:
            MEASUREMENTS.write_text(json.dumps(store, indent=1, sort_keys=True) + "\n")
        real = statistics.median(runs)
        estimate(FAMILIES[fam], cfg)  # first call builds the census
        t0 = time.perf_counter()
        for _ in range(20):
            an = estimate(FAMILIES[fam], cfg)
        an_ms = (time.perf_counter() - t0) / 20 * 1e3
        t0 = time.perf_counter()
        tr = estimate(FAMILIES[fam], cfg, method="traced")
        tr_s = time.perf_counter() - t0
        row = dict(family=fam, batch=b, seq=s, ckpt=ckpt, precision=prec, ga=ga, measured=real, runs=runs,
                   analytic=an.peak_bytes, traced=tr.peak_bytes, live=tr.live_tensor_bytes,
                   analytic_ms=an_ms, traced_s=tr_s, phase=tr.peak_phase,
                   replay=any("real-allocator" in n for n in tr.notes), **_heap_models(tr))
        rows.append(row)
        print(f"{fam:16} b={b} s={s} ga={ga} ckpt={int(ckpt)} {prec:5} measured {real / 2**20:7.0f} MiB "
              f"(runs {min(runs) / 2**20:.0f}-{max(runs) / 2**20:.0f})  analytic {an.peak_bytes / real - 1:+6.1%}  "
              f"traced {tr.peak_bytes / real - 1:+6.1%}", flush=True)

    timing = {(m, dev): _time_traced(m, dev) for m in TIMING_MODELS for dev in ("cuda", "cpu")}
    report = _report(rows, timing, args, time.time() - t_start)
    print(report)
    rows_out = args.rows_out or (None if args.no_write else str(ROOT / "bench" / "results" / "estimator_rows.json"))
    if rows_out:
        Path(rows_out).write_text(json.dumps(rows, indent=1) + "\n")
    if not args.no_write:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        # Hand-written analysis below the marker survives re-runs.
        old = out.read_text() if out.exists() else ""
        tail = old[old.index(_NOTES_MARKER):] if _NOTES_MARKER in old else ""
        out.write_text(report + ("\n" + tail if tail else ""))


def _heap_models(tr: object) -> dict:
    """The traced CPU estimate's two halves (calibration.cpu_rss_from_trace), for the diagnostic rows:
    the replay's prediction from the heap growth in the estimate's note (rounded to 1 MiB), and the
    tensor-level allocator model's as twice the mean less that."""
    import re

    from overseer_plan import preload
    from overseer_plan.calibration import cpu_rss_from_replay, is_half_precision, load_calibration

    half, frozen = is_half_precision(tr.config.precision), tr.config.lora is not None
    cal = load_calibration()[0]
    for note in tr.notes:
        # "heap LOW-HIGH MiB over N processes, ..."; a deep model's adds "...; scaled to M MiB at 12 ..."
        got = re.search(r"real-allocator replay \(heap (?:\d+-)?(\d+) MiB", note)
        if got:
            scaled = re.search(r"scaled to (\d+) MiB", note)
            heap = int(scaled.group(1) if scaled else got.group(1))
            replay = cpu_rss_from_replay(heap * 2**20, cal, half=half, frozen=frozen)
            replay += preload.adjustment(tr.config, cal.imports)[0]
            return {"replay_only": replay, "allocator_only": 2 * tr.peak_bytes - replay}
    return {}


def _stats(rows: list[dict], key: str) -> dict:
    errs = [r[key] / r["measured"] - 1 for r in rows]
    return {"median_abs": statistics.median(abs(e) for e in errs), "max_abs": max(abs(e) for e in errs),
            "worst_under": min(errs), "n_under_5": sum(e < -0.05 for e in errs)}


def _report(rows: list[dict], timing: dict, args: argparse.Namespace, wall: float) -> str:
    import torch
    import transformers

    mib = 2**20
    cmd = "python bench/estimator_accuracy.py" + (" --quick" if args.quick else "")
    cmd += f" --repeats {args.repeats}" if args.repeats != 15 else ""
    cmd += " --reuse-measurements" if args.reuse_measurements else ""
    cmd += "".join(f" --family {f}" for f in args.family or [])
    cmd += f" --also-ckpt-batch {args.also_ckpt_batch}" if args.also_ckpt_batch else ""
    out = [
        "# Estimator accuracy (CPU)",
        "",
        f"- Command: `{cmd}` ({wall / 60:.1f} min)",
        f"- Machine: 2-core x86-64 CPU, 24 GiB RAM, no GPU; torch {torch.__version__}, "
        f"transformers {transformers.__version__}; run {dt.date.today().isoformat()}",
        "- Measured: overseer_plan/_measure.py protocol (fresh process, ru_maxrss growth over post-import RSS, "
        f"3 AdamW steps, default attention = sdpa), {args.repeats} runs per row in fresh processes; the median is "
        "'measured' and the range is shown. Predictions: shipped calibration defaults, fitted on separate "
        "calibration models (overseer_plan/calibration.py), not on these rows.",
        "",
        "| family | batch | seq | accum | ckpt | precision | measured MiB (runs) | live tensors MiB | analytic MiB (err) | "
        "traced+cal MiB (err) | peak phase | analytic ms | traced s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["measured"]
        out.append(
            f"| {r['family']} | {r['batch']} | {r['seq']} | {r['ga']} | {'on' if r['ckpt'] else 'off'} | {r['precision']} | "
            f"{m / mib:.0f} ({min(r['runs']) / mib:.0f}-{max(r['runs']) / mib:.0f}) | {r['live'] / mib:.0f} | {r['analytic'] / mib:.0f} ({r['analytic'] / m - 1:+.1%}) | "
            f"{r['traced'] / mib:.0f} ({r['traced'] / m - 1:+.1%}) | {r['phase']} | {r['analytic_ms']:.2f} | "
            f"{r['traced_s']:.2f} |"
        )
    out += ["", "## Summary", "", "| method | median abs err | max abs err | worst under-prediction | rows under -5% | "
            "target |", "|---|---|---|---|---|---|"]
    for key, target in (("analytic", "median <= 10%, max <= 20%"),
                        ("traced", "median <= 5%, max <= 10%, no under-prediction worse than -5%")):
        st = _stats(rows, key)
        out.append(f"| {key} | {st['median_abs']:.1%} | {st['max_abs']:.1%} | {st['worst_under']:+.1%} | "
                   f"{st['n_under_5']}/{len(rows)} | {target} |")
    for key, what in (("replay_only", "traced, replay half alone (diagnostic)"),
                      ("allocator_only", "traced, allocator-model half alone (diagnostic)")):
        sub = [r for r in rows if key in r]
        if sub:
            st = _stats(sub, key)
            out.append(f"| {what} | {st['median_abs']:.1%} | {st['max_abs']:.1%} | {st['worst_under']:+.1%} | "
                       f"{st['n_under_5']}/{len(sub)} | - |")
    out += ["", "Per family (traced+calibrated):", ""]
    for fam in FAMILIES:
        sub = [r for r in rows if r["family"] == fam]
        if sub:
            st, sa = _stats(sub, "traced"), _stats(sub, "analytic")
            out.append(f"- {fam}: traced median {st['median_abs']:.1%}, max {st['max_abs']:.1%}, worst "
                       f"{st['worst_under']:+.1%}; analytic median {sa['median_abs']:.1%}, max {sa['max_abs']:.1%}")
    an_ms = [r["analytic_ms"] for r in rows]
    tr_s = [r["traced_s"] for r in rows]
    out += ["", "## Time per estimate", "",
            f"- analytic: median {statistics.median(an_ms):.2f} ms, max {max(an_ms):.2f} ms (target <= 5 ms)",
            f"- traced (matrix rows, incl. allocator replay): median {statistics.median(tr_s):.2f} s, "
            f"max {max(tr_s):.2f} s", "",
            f"- traced rows that used the real-allocator replay: {sum(r['replay'] for r in rows)}/{len(rows)}", "",
            "Traced catalogue models in a fresh process (batch 1 x 1024; wall includes the meta-device census; "
            "ru_maxrss is the largest of the process and, on CPU, its replay processes, each incl. torch import):", "",
            "| model | params | device | traced wall s | ru_maxrss MiB | replay | target |",
            "|---|---|---|---|---|---|---|"]
    for (name, dev), t in timing.items():
        target = "<= 30 s, <= 1 GiB" if t["params"] > 2e9 else "<= 10 s, <= 1 GiB"
        out.append(f"| {name} | {t['params'] / 1e9:.2f} B | {dev} | {t['wall_s']:.1f} | {t['maxrss'] / mib:.0f} | "
                   f"{'yes' if t['replay'] else 'no'} | {target} |")
    spreads = [(max(r["runs"]) - min(r["runs"])) / r["measured"] for r in rows if len(r["runs"]) > 1]
    if spreads:
        out += ["", "## Measurement noise", "",
                f"Spread (max - min) / median of the {args.repeats} runs per row: median {statistics.median(spreads):.1%}, "
                f"max {max(spreads):.1%}."]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
