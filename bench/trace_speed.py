"""Wall time of traced CPU estimates in fresh processes, optionally against another checkout side by side.

    python bench/trace_speed.py [--ref DIR] [--models qwen2-0.5b,llama-3.2-1b,...] [--rounds 2] [--memory]

Each estimate runs in its own process (after `import transformers`, as `_time_traced` in
estimator_accuracy.py does), with an empty cache directory, so the model's census and the trace
are both computed: what a first `overseer estimate --method traced` on a model costs. With
`--ref`, the same models are timed with that checkout's code in alternation with this one, so
machine noise hits both alike; the ratio is the comparison. A 4-layer matrix row (traced whole,
two replay processes) is timed as well.

`--memory` also samples the RAM of the whole process tree (the estimating process and its replay
processes and forks) every 50 ms: the peak of the summed PSS, which counts a shared library's pages
once across the processes that map them, and of the summed RSS, which counts them once per process.
Reading smaps costs CPU, so times taken with it run a little long.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MATRIX_ROW = ({"model_type": "gpt2", "n_layer": 4, "n_embd": 256, "n_head": 4, "vocab_size": 8000,
               "n_positions": 1024}, dict(batch_size=8, seq_len=512, gradient_checkpointing=True))


def _tree_memory(proc: subprocess.Popen[str]) -> dict:
    """Until `proc` exits: the peak over 50 ms samples of its tree's summed PSS and summed RSS, in bytes."""
    import time

    import psutil

    root = psutil.Process(proc.pid)
    peak_pss = peak_rss = procs_at_peak = 0
    while proc.poll() is None:
        pss = rss = 0
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            break
        for p in tree:
            try:
                info = p.memory_full_info()
            except psutil.Error:  # it exited between the listing and the read
                continue
            pss, rss = pss + info.pss, rss + info.rss
        if pss > peak_pss:
            peak_pss, procs_at_peak = pss, len(tree)
        peak_rss = max(peak_rss, rss)
        time.sleep(0.05)
    return {"tree_pss": peak_pss, "tree_rss": peak_rss, "procs": procs_at_peak}


def _time(checkout: Path, model: object, settings: dict, memory: bool = False) -> dict:
    code = (
        "import json,time,transformers;transformers.logging.set_verbosity_error();"
        "from overseer_plan.estimate import estimate,EstimateConfig;t=time.perf_counter();"
        f"e=estimate({model!r},EstimateConfig(**{settings!r}),method='traced',device='cpu');"
        "print(json.dumps({'wall_s':time.perf_counter()-t,'peak':e.peak_bytes,"
        "'replay':any('real-allocator' in n for n in e.notes)}))"
    )
    with tempfile.TemporaryDirectory(prefix="overseer-speed-") as cache:
        env = {**os.environ, "OVERSEER_CACHE_DIR": cache, "PYTHONPATH": str(checkout)}
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=checkout, env=env)
        mem = _tree_memory(proc) if memory else {}
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"estimate failed in {checkout}: {err.strip().splitlines()[-1:]}")
    return {**json.loads(out.strip().splitlines()[-1]), **mem}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", type=Path, default=None, help="another checkout to time side by side")
    ap.add_argument("--models", default="qwen2-0.5b,llama-3.2-1b,llama-2-7b")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--memory", action="store_true", help="also sample the process tree's RAM (see above)")
    args = ap.parse_args()
    cases = [(m, dict(batch_size=1, seq_len=1024)) for m in args.models.split(",")] + [MATRIX_ROW]
    checkouts = [("this", ROOT)] + ([("ref", args.ref.resolve())] if args.ref else [])
    times: dict[tuple[str, str], list[float]] = {}
    mems: dict[tuple[str, str], list[dict]] = {}
    for _ in range(args.rounds):
        for model, settings in cases:
            label = model if isinstance(model, str) else "gpt2-4x256 8x512 ckpt"
            for name, path in checkouts:
                got = _time(path, model, settings, args.memory)
                if not got["replay"]:
                    raise SystemExit(f"{label}: the real-allocator replay did not run ({name})")
                times.setdefault((label, name), []).append(got["wall_s"])
                if args.memory:
                    mems.setdefault((label, name), []).append(got)
    print("| estimate | this checkout s (runs) | " + ("ref s (runs) | this / ref |" if args.ref else ""))
    print("|---|---|" + ("---|---|" if args.ref else ""))
    for model, _ in cases:
        label = model if isinstance(model, str) else "gpt2-4x256 8x512 ckpt"
        mine = times[(label, "this")]
        row = f"| {label} | {statistics.median(mine):.1f} ({', '.join(f'{t:.1f}' for t in mine)}) |"
        if args.ref:
            ref = times[(label, "ref")]
            row += (f" {statistics.median(ref):.1f} ({', '.join(f'{t:.1f}' for t in ref)}) | "
                    f"{statistics.median(mine) / statistics.median(ref):.2f} |")
        print(row)
    if args.memory:
        print("\n| estimate | checkout | tree PSS peak MiB (runs) | tree RSS peak MiB | processes at the PSS peak |")
        print("|---|---|---|---|---|")
        for (label, name), got in mems.items():
            pss = [g["tree_pss"] / 2**20 for g in got]
            print(f"| {label} | {name} | {max(pss):.0f} ({', '.join(f'{x:.0f}' for x in pss)}) | "
                  f"{max(g['tree_rss'] for g in got) / 2**20:.0f} | {max(g['procs'] for g in got)} |")


if __name__ == "__main__":
    main()
