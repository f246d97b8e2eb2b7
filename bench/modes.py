"""Resource-efficient vs standard mode on the same model and data: peak memory and tokens/s, plus the --auto plan.

Usage:
    python bench/modes.py [--steps 4] [--seq 512]

Each mode trains overseer-tiny (named explicitly, so the presets apply, not the embedded demo schedule)
on the embedded corpus in its own process (so peak RSS is that mode's
alone) with the mode's preset except max_steps, a fixed sequence length (the model's 512 positions cap
both presets) and CPU-only, and reports peak RSS (ru_maxrss), steady tokens/s and the config it ran.
The spec claims resource-efficient uses ~50-70% of standard's memory at ~40-60% of its speed.
The third run is `--auto` on the same machine: the plan it chose and the same two figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_mode(flag: str, work: Path, steps: int, seq: int) -> dict:
    run = work / flag.strip("-")
    cmd = [sys.executable, "-c", _CHILD, flag, str(run), str(steps), str(seq)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OVERSEER_CACHE_DIR": str(work / "cache")}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(REPO), timeout=1800)
    if done.returncode != 0:
        return {"mode": flag, "error": done.stderr[-1500:]}
    out = json.loads(done.stdout.strip().splitlines()[-1])
    summary = json.loads((run / "summary.json").read_text())
    cfg = summary["config"]
    return {"mode": flag, "peak_rss_mib": round(out["maxrss_kib"] / 1024, 1),
            "tokens_per_s": round(summary["steady_samples_per_s"] * cfg["max_sequence_length"], 1),
            "micro_batch": cfg["batch_size"], "accumulation": cfg["gradient_accumulation_steps"],
            "checkpointing": cfg["gradient_checkpointing"], "precision": summary["precision"],
            "num_workers": cfg["num_workers"], "seq": cfg["max_sequence_length"]}


_CHILD = """
import json, resource, sys
from overseer_plan.config import TrainingConfig
from trainer.run import train
flag, run, steps, seq = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
kw = dict(model="overseer-tiny", output_dir=run, max_steps=steps, max_sequence_length=seq, use_gpu=False, eval_steps=10_000,
          eval_max_batches=1, save_steps=10_000, logging_steps=1)
if flag == "--resource-efficient":
    kw["resource_efficient_mode"] = True
cfg = TrainingConfig(**kw)
train(cfg, auto=flag == "--auto", mode=None if flag == "--auto" else flag.strip("-"))
print(json.dumps({"maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="modes-bench-") as tmp:
        rows = [run_mode(flag, Path(tmp), a.steps, a.seq) for flag in ("--standard", "--resource-efficient", "--auto")]
    std, eff = rows[0], rows[1]
    ratios = {}
    if "error" not in std and "error" not in eff:
        ratios = {"memory_ratio": round(eff["peak_rss_mib"] / std["peak_rss_mib"], 3),
                  "speed_ratio": round(eff["tokens_per_s"] / std["tokens_per_s"], 3)}
    print(json.dumps({"runs": rows, **ratios}, indent=2))


if __name__ == "__main__":
    main()
