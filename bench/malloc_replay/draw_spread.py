"""Each row's spread of replay draws: would keeping the largest of more draws follow the real heap?

    python bench/malloc_replay/draw_spread.py [--fresh 4] [--forks 6] [--perturb malloc|python]
                                              [--only calibration|matrix] [--out FILE]

For every calibration point (calibration._CALIBRATION_RUNS) and every matrix row
(bench/estimator_accuracy.py), the replay job `estimate()` runs, drawn `--fresh` times in fresh
processes (two side by side, as `estimate()` starts them) and `--forks` times in forks of this
process: `malloc` forks perturb glibc's heap only (replay_draws.py), `python` forks also move
where Python's objects land (`python_perturbation`). Appends one JSON line per
row (with the deterministic tensor-level model's inputs) to bench/results/replay_draws.jsonl or
`--out`; a run resumes where a previous one stopped. `draw_spread_fit.py` pools the files and turns
them into matrix errors for each way of keeping draws.
The twenty-third pass (BENCHMARKS.md section 2) ran `--fresh 4 --forks 6` (22 min), `--fresh 4
--forks 0 --out bench/results/replay_draws_fresh2.jsonl` (18 min) and `--fresh 0 --forks 6 --perturb
python --out bench/results/replay_draws_pyforks.jsonl` (6 min).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))
OUT = HERE.parents[1] / "bench" / "results" / "replay_draws.jsonl"


def rows(only: str | None) -> list[tuple[str, dict, int, int, bool, str, int]]:
    """(set, model config, batch, seq, checkpointing, precision, grad_accum) per row."""
    from estimator_accuracy import FAMILIES, _rows

    from overseer_plan import calibration

    out = []
    if only in (None, "calibration"):
        out += [("calibration", dict(m), b, s, ck, p, 1) for m, b, s, ck, p in calibration._CALIBRATION_RUNS]
    if only in (None, "matrix"):
        out += [("matrix:" + f, dict(FAMILIES[f]), b, s, ck, p, ga) for f, b, s, ck, p, ga in _rows(False)]
    return out


def python_perturbation(rng, libc) -> list:
    """Besides glibc's small blocks, move where Python's objects land (a random number of small
    objects kept alive) and add medium glibc blocks: a fork shares its parent's address layout and
    hash seed, the two things that make fresh processes' heaps differ (chaos_sources.py)."""
    from replay_draws import _glibc_perturbation

    objects = [(rng.random(),) * rng.randrange(1, 8) for _ in range(rng.randrange(0, 20000))]
    blocks = _glibc_perturbation(rng, libc)
    blocks += [libc.malloc(rng.randrange(4096, 1 << 18)) for _ in range(rng.randrange(0, 8))]
    return [objects, blocks]


def key(row: tuple) -> str:
    name, model, b, s, ck, p, ga = row
    return json.dumps([name, model, b, s, ck, p, ga], sort_keys=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fresh", type=int, default=4, help="draws in fresh processes (two at a time)")
    ap.add_argument("--forks", type=int, default=6, help="draws in perturbed forks of this process")
    ap.add_argument("--only", choices=["calibration", "matrix"])
    ap.add_argument("--perturb", choices=["malloc", "python"], default="malloc",
                    help="forks perturb glibc's heap only (replay_draws.py) or Python's objects too")
    ap.add_argument("--out", type=Path, default=OUT, help="JSONL to append to (draw_spread_fit.py pools every file given)")
    args = ap.parse_args()
    import transformers

    transformers.logging.set_verbosity_error()
    from replay_draws import _forked_draws

    from overseer_plan import heap_replay
    from overseer_plan.estimate import EstimateConfig
    from overseer_plan.models import resolve_model_config

    done = set()
    if args.out.exists():
        done = {json.loads(line)["key"] for line in args.out.read_text().splitlines() if line.strip()}
    warmed = heap_replay.warm_up()
    for row in rows(args.only):
        if key(row) in done:
            continue
        name, model, b, s, ck, p, ga = row
        t0 = time.perf_counter()
        config = resolve_model_config(dict(model))
        # What trace_inputs replays: two micro-batches whatever the accumulation.
        cfg = EstimateConfig(batch_size=b, seq_len=s, gradient_checkpointing=ck, precision=p, grad_accum=min(ga, 2))
        depth = int(config.num_hidden_layers)
        fresh: list[int] = []
        first = None
        while len(fresh) < args.fresh:
            got = heap_replay.replay(config, cfg, [depth], repeats=min(2, args.fresh - len(fresh)))
            if got is None:
                sys.exit("the real-allocator replay is unavailable here (needs glibc >= 2.33)")
            first = first or got[0][0]
            fresh += [int(r["growth"]) for r in got[0]]
        job = heap_replay._job(config, cfg, depth)
        if not args.forks:
            forks = []
        elif args.perturb == "python":
            forks = [int(x * 2**20) for x in _forked_draws(job, warmed, args.forks, python_perturbation, salt=len(done))]
        else:
            forks = [int(x * 2**20) for x in _forked_draws(job, warmed, args.forks)]
        done.add(key(row))
        rec = {"key": key(row), "set": name, "model": model, "batch": b, "seq": s, "ckpt": ck, "precision": p,
               "ga": ga, "fresh": fresh, "forks": forks, "sim_peak": first and first["sim_peak"], "churn": first and first["churn"],
               "wall_s": round(time.perf_counter() - t0, 1)}
        with args.out.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"{name:22} {b}x{s} ck={int(ck)} {p:5} ga={ga}: fresh {[round(x / 2**20) for x in fresh]} "
              f"forks {[round(x / 2**20) for x in forks]} ({rec['wall_s']} s)", flush=True)


if __name__ == "__main__":
    main()
