"""What makes one row's heap differ between processes: the address layout, the hash seed, or timing?

    python bench/malloc_replay/chaos_sources.py [--runs 4] [--real-runs 3]

The row is the matrix's GPT-2-style 8 x 512 checkpointed fp32 (bench/estimator_accuracy.py), whose
real runs span 982-1250 MiB. Each condition starts fresh processes with address-space randomisation
on or off (`setarch -R`) and PYTHONHASHSEED fixed or random, and prints:
- the replay's heap growth (`python -m overseer_plan.heap_replay`, the job `estimate()` sends), and
- the real protocol's ru_maxrss growth (`python -m overseer_plan._measure`).
If the runs under ASLR off and a fixed seed are identical, nothing else (thread timing) matters.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE.parent))
MiB = 2**20
CONDITIONS = [("off", "0"), ("off", "random"), ("on", "0"), ("on", "random")]


def run(module: str, payload: dict, aslr: str, seed: str) -> float:
    env = dict(os.environ)
    env.pop("MALLOC_PERTURB_", None)
    if seed == "random":
        env.pop("PYTHONHASHSEED", None)
    else:
        env["PYTHONHASHSEED"] = seed
    cmd = (["setarch", "-R"] if aslr == "off" else []) + [sys.executable, "-m", module]
    out = subprocess.run(cmd, input=json.dumps(payload), capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return (got[0]["growth"] if module.endswith("heap_replay") else got["peak_delta_bytes"]) / MiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=4, help="replay processes per condition")
    ap.add_argument("--real-runs", type=int, default=3, help="protocol runs per condition (~15 s each)")
    args = ap.parse_args()
    if shutil.which("setarch") is None:
        sys.exit("needs setarch (util-linux) to turn address-space randomisation off")
    from estimator_accuracy import FAMILIES, protocol_job

    from overseer_plan import heap_replay
    from overseer_plan.estimate import EstimateConfig
    from overseer_plan.models import resolve_model_config

    config = resolve_model_config(dict(FAMILIES["gpt2-4x256"]))
    settings = EstimateConfig(batch_size=8, seq_len=512, gradient_checkpointing=True, precision="fp32")
    replay_job = {"jobs": [heap_replay._job(config, settings, config.num_hidden_layers)]}
    real_job = protocol_job("gpt2-4x256", 8, 512, True, "fp32", 1)
    print("ASLR  hash seed | replay heap growth MiB | real ru_maxrss growth MiB")
    for aslr, seed in CONDITIONS:
        replays = [run("overseer_plan.heap_replay", replay_job, aslr, seed) for _ in range(args.runs)]
        reals = [run("overseer_plan._measure", real_job, aslr, seed) for _ in range(args.real_runs)]
        print(f"{aslr:4}  {seed:9} | {', '.join(f'{x:.0f}' for x in replays)} | {', '.join(f'{x:.0f}' for x in reals)}",
              flush=True)


if __name__ == "__main__":
    main()
