"""How many replay draws would help: the spread of one row's replayed heap growth over many draws.

    python bench/malloc_replay/replay_draws.py [BATCH SEQ on|off fp32|bf16] [--draws 8]

Draws come two ways: fresh processes (what `estimate()` uses, `heap_replay.REPEATS` at a time),
and forks of one warmed process, each of which first perturbs its heap with a few hundred small
blocks (a cheaper way to draw, since a fork skips the ~4 s of imports). The row is the matrix's
GPT-2-style model (bench/estimator_accuracy.py FAMILIES["gpt2-4x256"]); default 8 x 512 checkpointed
fp32, the row the traced estimate under-predicts. Prints each way's draws and the prediction their
median would give with the shipped replay constant.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
MiB = 2**20


def _glibc_perturbation(rng: random.Random, libc: ctypes.CDLL) -> list:
    """A few hundred small glibc blocks, kept by the caller."""
    return [libc.malloc(rng.randrange(16, 1024)) for _ in range(rng.randrange(1, 400))]


def _forked_draws(job: dict, warmed: int, draws: int, perturb=_glibc_perturbation, salt: int = 0) -> list[float]:
    """`draws` heap growths (MiB) of `job`, each in a fork of this process that first runs
    `perturb(rng, libc)` (seeded `salt * 1000 + draw`), two at a time."""
    from overseer_plan import heap_replay

    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    out: list[float] = []
    for first in range(0, draws, 2):  # two at a time: one per core
        children = []
        for seed in range(first, min(first + 2, draws)):
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(read_fd)
                kept = perturb(random.Random(salt * 1000 + seed), libc)
                result = heap_replay.run_job(job, warmed_heap_bytes=warmed)
                with os.fdopen(write_fd, "wb") as pipe:
                    pipe.write(json.dumps(result["growth"]).encode())
                del kept
                os._exit(0)
            os.close(write_fd)
            children.append((pid, read_fd))
        for pid, read_fd in children:
            with os.fdopen(read_fd, "rb") as pipe:
                out.append(json.loads(pipe.read()) / MiB)
            os.waitpid(pid, 0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shape", nargs="*", default=["8", "512", "on", "fp32"])
    ap.add_argument("--draws", type=int, default=8)
    args = ap.parse_args()
    b, s, ckpt, precision = int(args.shape[0]), int(args.shape[1]), args.shape[2] == "on", args.shape[3]
    import transformers

    transformers.logging.set_verbosity_error()
    from estimator_accuracy import FAMILIES

    from overseer_plan import heap_replay
    from overseer_plan.calibration import DEFAULTS
    from overseer_plan.estimate import EstimateConfig
    from overseer_plan.models import resolve_model_config

    config = resolve_model_config(dict(FAMILIES["gpt2-4x256"]))
    settings = EstimateConfig(batch_size=b, seq_len=s, gradient_checkpointing=ckpt, precision=precision)
    procs: list[float] = []
    while len(procs) < args.draws:
        runs = heap_replay.replay(config, settings, [config.num_hidden_layers], repeats=2)
        if runs is None:
            sys.exit("the real-allocator replay is unavailable here (needs glibc >= 2.33)")
        procs += [r["growth"] / MiB for r in runs[0]]
    warmed = heap_replay.warm_up()
    forks = _forked_draws(heap_replay._job(config, settings, config.num_hidden_layers), warmed, args.draws)
    constant = (DEFAULTS.cpu.replay_constant_bytes or 0) / MiB
    for name, draws in (("fresh processes", procs), ("perturbed forks", forks)):
        med = statistics.median(draws)
        print(f"{name:16} draws MiB {sorted(round(d) for d in draws)}; median {med:.0f}, "
              f"+ replay constant {constant:.1f} = {med + constant:.0f} MiB predicted by the replay half")


if __name__ == "__main__":
    main()
