"""Wall time of traced CPU estimates in fresh processes, optionally against another checkout side by side.

    python bench/trace_speed.py [--ref DIR] [--models qwen2-0.5b,llama-3.2-1b,...] [--rounds 2]

Each estimate runs in its own process (after `import transformers`, as `_time_traced` in
estimator_accuracy.py does), with an empty cache directory, so the model's census and the trace
are both computed: what a first `overseer estimate --method traced` on a model costs. With
`--ref`, the same models are timed with that checkout's code in alternation with this one, so
machine noise hits both alike; the ratio is the comparison. A 4-layer matrix row (traced whole,
two replay processes) is timed as well.
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


def _time(checkout: Path, model: object, settings: dict) -> dict:
    code = (
        "import json,time,transformers;transformers.logging.set_verbosity_error();"
        "from overseer_plan.estimate import estimate,EstimateConfig;t=time.perf_counter();"
        f"e=estimate({model!r},EstimateConfig(**{settings!r}),method='traced',device='cpu');"
        "print(json.dumps({'wall_s':time.perf_counter()-t,'peak':e.peak_bytes,"
        "'replay':any('real-allocator' in n for n in e.notes)}))"
    )
    with tempfile.TemporaryDirectory(prefix="overseer-speed-") as cache:
        env = {**os.environ, "OVERSEER_CACHE_DIR": cache, "PYTHONPATH": str(checkout)}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=checkout, env=env,
                             check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", type=Path, default=None, help="another checkout to time side by side")
    ap.add_argument("--models", default="qwen2-0.5b,llama-3.2-1b,llama-2-7b")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    cases = [(m, dict(batch_size=1, seq_len=1024)) for m in args.models.split(",")] + [MATRIX_ROW]
    checkouts = [("this", ROOT)] + ([("ref", args.ref.resolve())] if args.ref else [])
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for model, settings in cases:
            label = model if isinstance(model, str) else "gpt2-4x256 8x512 ckpt"
            for name, path in checkouts:
                got = _time(path, model, settings)
                if not got["replay"]:
                    raise SystemExit(f"{label}: the real-allocator replay did not run ({name})")
                times.setdefault((label, name), []).append(got["wall_s"])
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


if __name__ == "__main__":
    main()
