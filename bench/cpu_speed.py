"""The planner's CPU throughput model against measured tokens/s, for one catalogue model, side by side.

Usage:
    python bench/cpu_speed.py [--model gpt2] [--seq 1024] [--micro 1,2,4] [--precision bf16] [--steps 3]

Every (micro-batch, checkpointing) pair trains `--steps` timed AdamW steps after one warm-up, each in
its own fresh process (the model built from its config, random tokens, autocast when 16-bit), and
prints measured tokens/s next to the planner's score (`overseer_plan.plan.candidate_speed`, the number
`overseer plan --explain` ranks by), both as ratios to the best row, so the two columns compare
directly. The configurations run in an interleaved order, once per `--rounds`, to spread machine noise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, resource, sys, time
import torch
from overseer_plan.estimate import _resolve
from transformers import AutoModelForCausalLM
model, mb, seq, ckpt, precision, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "on", sys.argv[5], int(sys.argv[6])
torch.manual_seed(0)
config = _resolve(model).config
m = AutoModelForCausalLM.from_config(config)
if ckpt:
    m.gradient_checkpointing_enable()
m.train()
opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
times = []
for i in range(steps + 1):
    x = torch.randint(0, config.vocab_size, (mb, seq))
    t = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = m(input_ids=x, labels=x).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - t)
print(json.dumps({"step_s": times[1:], "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(model: str, mb: int, seq: int, ckpt: bool, precision: str, steps: int) -> dict:
    cmd = [sys.executable, "-c", _CHILD, model, str(mb), str(seq), "on" if ckpt else "off", precision, str(steps)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(REPO), timeout=3600)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return {"tokens_per_s": mb * seq * len(out["step_s"]) / sum(out["step_s"]), "step_s": out["step_s"],
            "maxrss_mib": round(out["maxrss_mib"], 1)}


def score(model: str, mb: int, seq: int, ckpt: bool, precision: str, native_bf16: bool) -> float:
    from overseer_plan.config import TrainingConfig
    from overseer_plan.plan import Candidate, candidate_speed, estimate_for

    cfg = TrainingConfig(batch_size=mb, gradient_accumulation_steps=1, max_sequence_length=seq, use_gpu=False,
                         gradient_checkpointing=ckpt, mixed_precision=precision != "fp32",
                         mixed_precision_dtype="bf16")
    c = Candidate(device="cpu", batch_size=mb, gradient_accumulation_steps=1, gradient_checkpointing=ckpt,
                  precision=precision, max_sequence_length=seq)
    return candidate_speed(model, cfg, c, native_bf16, estimate_for(model, cfg, "cpu"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gpt2")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--micro", default="1,2,4")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    from overseer_plan.probe import probe

    native = probe().cpu.has_native_bf16()
    pairs = [(int(m), ck) for m in args.micro.split(",") for ck in (False, True)]
    runs: dict[tuple[int, bool], list[dict]] = {p: [] for p in pairs}
    t0 = time.perf_counter()
    for r in range(args.rounds):
        for mb, ck in (pairs if r % 2 == 0 else pairs[::-1]):
            runs[(mb, ck)].append(measure(args.model, mb, args.seq, ck, args.precision, args.steps))
    rows = []
    for (mb, ck), got in runs.items():
        ok = [g["tokens_per_s"] for g in got if "tokens_per_s" in g]
        rows.append({"micro": mb, "checkpointing": ck, "runs": got,
                     "tokens_per_s": sorted(ok)[len(ok) // 2] if ok else None,
                     "score": score(args.model, mb, args.seq, ck, args.precision, native)})
    best_tps = max(r["tokens_per_s"] or 0 for r in rows)
    best_score = max(r["score"] for r in rows)
    pick = max(rows, key=lambda r: r["score"])
    print(f"{args.model}, seq {args.seq}, {args.precision}, {args.steps} timed steps per run, "
          f"{args.rounds} round(s), {time.perf_counter() - t0:.0f} s; native bf16: {native}")
    print("| micro | ckpt | measured tokens/s | measured / best | planner score / best | peak RSS MiB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        tps = r["tokens_per_s"]
        rss = max((g.get("maxrss_mib", 0) for g in r["runs"]), default=0)
        print(f"| {r['micro']} | {'on' if r['checkpointing'] else 'off'} | "
              f"{'failed' if tps is None else f'{tps:.1f}'} | "
              f"{'-' if tps is None else f'{tps / best_tps:.2f}'} | {r['score'] / best_score:.2f} | {rss:.0f} |")
    got = pick["tokens_per_s"]
    print(f"planner's pick among these: micro {pick['micro']}, checkpointing {'on' if pick['checkpointing'] else 'off'}"
          f": {'failed' if got is None else f'{got / best_tps:.2f}'} of the best measured")
    if args.out:
        args.out.write_text(json.dumps({"model": args.model, "seq": args.seq, "precision": args.precision,
                                        "date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
