"""Cost of the resource monitor: training tokens/s with and without it, same run otherwise.

Usage:
    python bench/monitor_overhead.py [--pairs 3] [--steps 12] [--interval 1.0]

Trains overseer-tiny (fp32, micro-batch 8 x 512, no checkpoints, no eval) in this process, alternating
monitor off / on so that machine noise hits both alike, and reports the median steady tokens/s of
each and the relative difference, plus the cost of one sample (duty cycle = cost / interval),
which is the noise-free bound on what the thread can take from training. The interval defaults to 1 s, 15-30x more often than the presets
(30 s standard, 15 s resource-efficient), to make the cost visible if there is one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def one_run(root: Path, *, monitor: bool, steps: int, interval: float, cache: Path) -> float:
    from overseer_plan.config import TrainingConfig
    from trainer.loop import Trainer

    cfg = TrainingConfig(output_dir=str(root), max_steps=steps, batch_size=8, gradient_accumulation_steps=1,
                         max_sequence_length=512, learning_rate=1e-3, eval_steps=10_000, eval_max_batches=1,
                         logging_steps=1, save_steps=10_000, num_workers=0, mixed_precision=False,
                         memory_check_interval=interval, use_gpu=False)
    trainer = Trainer(cfg, use_monitor=monitor, cache_dir=cache)
    try:
        trainer.setup()
        result = trainer.train()
    finally:
        trainer.close()
    return result.steady_samples_per_s * 512


def sample_cost_s(n: int = 200) -> float:
    """Mean wall time of one monitor sample (RAM, cgroup, CPU; temperatures every 10th), no file writes."""
    import time

    from trainer.monitor import ResourceMonitor

    mon = ResourceMonitor(interval_s=1.0, ram_percent=85, gpu_percent=90, path=None)
    mon.sample()  # warm: the first call imports torch (training has already done so)
    t0 = time.perf_counter()
    for _ in range(n):
        mon.sample()
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--interval", type=float, default=1.0)
    a = ap.parse_args()
    rates: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory(prefix="monitor-bench-") as tmp:
        for i in range(a.pairs):
            for mode in ("off", "on") if i % 2 == 0 else ("on", "off"):
                rates[mode].append(one_run(Path(tmp) / f"{mode}{i}", monitor=mode == "on", steps=a.steps,
                                           interval=a.interval, cache=Path(tmp) / "cache"))
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    cost = sample_cost_s()
    print(json.dumps({"tokens_per_s_off": [round(x) for x in rates["off"]],
                      "tokens_per_s_on": [round(x) for x in rates["on"]], "median_off": round(off),
                      "median_on": round(on), "overhead_percent": round(100 * (off - on) / off, 2),
                      "interval_s": a.interval, "steps": a.steps, "sample_cost_ms": round(cost * 1000, 3),
                      "duty_cycle_percent": round(100 * cost / a.interval, 4)}, indent=2))


if __name__ == "__main__":
    main()
