"""How a deep model's replayed heap is carried from its reduced traced depths to full depth.

    python bench/deep_extrapolation.py [--draws 2]      # ~3 min on 2 cores

Deep models are traced at 2 and 4 layers (trace.py). For each held-out deep row below, each draw
runs the real-allocator replay at both depths (heap_replay.replay, as estimate() does) and prints
the replay half's error against the row's measured peak two ways:
- line: the replayed heap growths at 2 and 4 layers, one process each, extended along their line
  to full depth (what traced estimates did until 2026-12-07);
- scaled: the larger of the 4-layer replays (`heap_replay.REPEATS` processes) times the tensor-level
  model's heap at full depth over the same at 4 layers (`calibration.replay_at_full_depth`, shipped).
The rows are estimator_heldout.py's DEEP_ROWS and MODERN_DEEP_ROWS but the accumulation one; the
measured peaks are the means of 2 protocol runs from `python bench/estimator_heldout.py --rows
deep` and `--rows modern-deep` on 2026-12-07 (dev box, torch 2.13.0+cpu, transformers 5.23.0);
re-measure them there after a change to torch, transformers or the machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
MiB = 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=2)
    args = ap.parse_args()
    import transformers

    transformers.logging.set_verbosity_error()
    from estimator_heldout import DEEP_ROWS, MODERN_DEEP_ROWS

    from overseer_plan import heap_replay
    from overseer_plan.calibration import (
        DEFAULTS,
        cpu_rss_from_replay,
        is_half_precision,
        replay_at_full_depth,
    )
    from overseer_plan.estimate import EstimateConfig
    from overseer_plan.models import resolve_model_config
    from overseer_plan.trace import extrapolate_depths

    # Measured peaks of DEEP_ROWS + MODERN_DEEP_ROWS, in order (None: not in this table).
    measured_mib = [3140, 4430, 4195, 3280, 4037, 2901, None, 9293]
    rows = [(m, s, real) for (m, s), real in zip(DEEP_ROWS + MODERN_DEEP_ROWS, measured_mib, strict=True)
            if real is not None]
    print("| row | measured MiB | replay half, line (per draw) | replay half, scaled (per draw) |")
    print("|---|---|---|---|")
    for model, settings, measured in rows:
        config = resolve_model_config(model if isinstance(model, str) else dict(model))
        cfg, layers = EstimateConfig(**settings), int(config.num_hidden_layers)
        depths = [2, 4]
        line, scaled = [], []
        for _ in range(args.draws):
            runs = heap_replay.replay(config, cfg, depths)
            if runs is None:
                sys.exit("the real-allocator replay is unavailable here (needs glibc >= 2.33)")
            two, four, largest = runs[0][0], runs[1][0], max(r["growth"] for r in runs[1])
            sim = extrapolate_depths(depths, [two["sim_peak"], four["sim_peak"]], layers)
            churn = extrapolate_depths(depths, [two["churn"], four["churn"]], layers)
            line.append(extrapolate_depths(depths, [two["growth"], four["growth"]], layers))
            scaled.append(replay_at_full_depth(largest, four["sim_peak"], four["churn"], sim, churn, DEFAULTS))

        half = is_half_precision(cfg.precision)
        line_cells, scaled_cells = (
            ", ".join(f"{cpu_rss_from_replay(v, DEFAULTS, half=half) / MiB / measured - 1:+.1%}" for v in values)
            for values in (line, scaled))

        name = model if isinstance(model, str) else "SmolLM2-135M shape"
        shown = ", ".join(f"{k} {v}" for k, v in settings.items())
        print(f"| {name}, {shown} | {measured} | {line_cells} | {scaled_cells} |", flush=True)


if __name__ == "__main__":
    main()
