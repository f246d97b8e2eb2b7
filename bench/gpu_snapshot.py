"""What is live at a real CUDA step's allocation peak, by allocating code (diagnoses estimator gaps).

    python bench/gpu_snapshot.py ROW_KEY [ROW_KEY ...] --out DIR     (on a GPU machine)

ROW_KEY is a row of bench/gpu_accuracy.py (e.g. 'gpt2|b8|s1024|ga1|ckpt0|bf16|default'). Each row
runs the GPU protocol in a fresh process with `torch.cuda.memory._record_memory_history` on, and
writes DIR/<n>.json: the peak of allocated bytes, the blocks live at that moment (size and the
innermost Python frames that allocated them) and the segments reserved by then.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def _frames(ev: dict, n: int = 6) -> list[str]:
    out = []
    for f in ev.get("frames", []):
        name = f.get("filename", "")
        if "torch/utils/_python_dispatch" in name or name.endswith("gpu_snapshot.py"):
            continue
        short = name.split("site-packages/")[-1]
        out.append(f"{short}:{f.get('line')} {f.get('name')}")
        if len(out) == n:
            break
    return out


def analyse(snapshot: dict) -> dict:
    trace = snapshot["device_traces"][0]
    live: dict[int, dict] = {}
    allocated = peak = peak_at = 0
    peak_live: list[dict] = []
    segments = reserved = peak_reserved = 0
    for i, ev in enumerate(trace):
        action, addr, size = ev["action"], ev["addr"], ev["size"]
        if action == "alloc":
            live[addr] = {"size": size, "i": i, "frames": _frames(ev)}
            allocated += size
            if allocated > peak:
                peak = allocated
                peak_live = [dict(v) for v in live.values()]
                peak_at = i
        elif action == "free_completed":
            got = live.pop(addr, None)
            if got is not None:
                allocated -= got["size"]
        elif action == "segment_alloc":
            segments += 1
            reserved += size
            peak_reserved = max(peak_reserved, reserved)
        elif action == "segment_free":
            reserved -= size
    peak_live.sort(key=lambda b: -b["size"])
    full = [[ev["action"][:7], ev["size"], ev["addr"], _frames(ev, 3)] for ev in trace
            if ev["action"] in ("alloc", "free_completed", "segment_alloc")]
    return {"all_events": full,"peak_allocated": peak, "peak_event": peak_at, "events": len(trace),
            "peak_reserved_in_trace": peak_reserved, "segments": segments,
            "live_at_peak": peak_live[:400], "live_count": len(peak_live),
            "small_live_bytes": sum(b["size"] for b in peak_live[400:])}


def run_row(key: str, out: Path) -> None:
    import torch
    from gpu_accuracy import _parse_key, job

    from overseer_plan._measure import run_job

    torch.cuda.memory._record_memory_history(max_entries=2_000_000, stacks="python")
    res = run_job(job(_parse_key(key)))
    snap = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    got = analyse(snap)
    got.update({"key": key, "max_reserved": res["max_reserved_bytes"], "max_allocated": res["max_allocated_bytes"]})
    out.write_text(json.dumps(got, indent=1) + "\n")
    print(f"{key}: max_allocated {res['max_allocated_bytes'] / 2**20:.1f} MiB, trace peak {got['peak_allocated'] / 2**20:.1f}"
          f", {got['live_count']} blocks live at peak, {got['events']} events", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rows", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # child mode
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.one is not None:
        run_row(args.rows[args.one], out / f"{args.one}.json")
        return
    for i in range(len(args.rows)):  # a fresh process per row, as the protocol wants
        subprocess.run([sys.executable, __file__, *args.rows, "--out", str(out), "--one", str(i)], check=False)
    merged = [json.loads((out / f"{i}.json").read_text()) for i in range(len(args.rows)) if (out / f"{i}.json").exists()]
    (out / "all.json").write_text(json.dumps(merged) + "\n")


if __name__ == "__main__":
    main()
