"""Matrix errors of the traced estimate if the replay half kept the largest of n draws, n = 2..10.

    python bench/malloc_replay/draw_spread_fit.py [--pool fresh|forks|both]
    python bench/malloc_replay/draw_spread_fit.py --simulate 2+0:mean,4+0:mean,2+2:mean [--forks python] [--spread K]

Reads every bench/results/replay_draws*.jsonl (draw_spread.py's, and replay_draws_row_under.jsonl: 32
more fresh draws of the row under -5%), pooling one row's draws across files. For each statistic the replay constant
and its half-precision offset are refitted on the calibration points only (as refit_calibration.py
does, against bench/results/calibration_measurements.json); the allocator-model half is refitted the
same way from the same traces. The statistic's value per row is its expectation over the row's
draws (the largest of n drawn without replacement from the pool, exactly, from the order
statistics), so a row's figure does not hang on one draw. Errors are against the stored 21-run
medians of bench/results/estimator_rows.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from math import comb
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
MiB = 2**20


def load(forks: str = "malloc") -> list[dict]:
    """Every row of bench/results/replay_draws*.jsonl, the draws of one row pooled across files.

    `forks`: which forks count as the row's fork draws: "malloc" (glibc-perturbed, the files
    without "pyforks" in their name) or "python" (draw_spread.py --perturb python, the pyforks file)."""
    merged: dict[str, dict] = {}
    for path in sorted((ROOT / "bench/results").glob("replay_draws*.jsonl")):
        python_forks = "pyforks" in path.name
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            r = json.loads(line)
            if python_forks != (forks == "python"):
                r["forks"] = []
            if r["key"] in merged:
                merged[r["key"]]["fresh"] += r["fresh"]
                merged[r["key"]]["forks"] += r["forks"]
            elif not python_forks:
                merged[r["key"]] = r
            else:
                continue
    return list(merged.values())


def compare(recs: list[dict]) -> None:
    """Are the fork draws like fresh processes' draws? Per row: fork mean - fresh mean and the ratio
    of their standard deviations, summarised over the rows that have both."""
    both = [r for r in recs if len(r["fresh"]) > 1 and len(r["forks"]) > 1]
    if not both:
        return
    shift = [(statistics.fmean(r["forks"]) - statistics.fmean(r["fresh"])) / MiB for r in both]
    sd_f = [statistics.stdev(r["fresh"]) / MiB for r in both]
    sd_k = [statistics.stdev(r["forks"]) / MiB for r in both]
    q = statistics.quantiles
    print(f"forks vs fresh over {len(both)} rows: mean shift median {statistics.median(shift):+.1f} MiB "
          f"(quartiles {q(shift, n=4)[0]:+.1f}, {q(shift, n=4)[2]:+.1f}); sd fresh median {statistics.median(sd_f):.1f}, "
          f"forks {statistics.median(sd_k):.1f} MiB; sd correlation {statistics.correlation(sd_f, sd_k):.2f}")


def expected_max(draws: list[int], n: int) -> float:
    """E[max of n drawn without replacement from `draws`]."""
    xs = sorted(draws)
    d = len(xs)
    return sum(x * comb(i, n - 1) for i, x in enumerate(xs)) / comb(d, n)


class Inputs:
    """The stored draws with what both analyses need: calibration points and their measurements, the
    matrix rows with their stored medians, and the allocator model refitted on the calibration points
    (its fit does not depend on the replay statistic)."""

    def __init__(self, forks: str) -> None:
        from overseer_plan import calibration as cal

        self.recs = load(forks)
        self.cal_recs = [r for r in self.recs if r["set"] == "calibration"]
        self.measured_cal = [m * MiB for m in json.loads(
            (ROOT / "bench/results/calibration_measurements.json").read_text())["measured_mib"]]
        if len(self.cal_recs) != len(self.measured_cal):
            sys.exit("replay_draws.jsonl lacks calibration points; run draw_spread.py --only calibration")
        stored = {(r["family"], r["batch"], r["seq"], r["ckpt"], r["precision"], r["ga"]): r["measured"]
                  for r in json.loads((ROOT / "bench/results/estimator_rows.json").read_text())}
        # (record, family, measured median, half precision, churn as trace_inputs scales it)
        self.rows = [(r, r["set"].split(":", 1)[1], stored[(r["set"].split(":", 1)[1], r["batch"], r["seq"], r["ckpt"],
                                                           r["precision"], r["ga"])],
                      cal.is_half_precision(r["precision"]), r["churn"] * cal.churn_microbatches(r["ga"]) / min(r["ga"], 2))
                     for r in self.recs if r["set"].startswith("matrix:")]
        self.frac, self.constant, self.churn_offset = cal.fit_churn_factors(
            [(r["sim_peak"], r["churn"], y, cal.is_half_precision(r["precision"]))
             for r, y in zip(self.cal_recs, self.measured_cal, strict=True)])

    def calibration(self, replay_stat: list[float]) -> tuple[object, int]:
        """The shipped calibration with every CPU factor refitted, the replay constant on `replay_stat`
        (one value per calibration point); and that constant."""
        from overseer_plan import calibration as cal

        fit = cal.fit_replay_constant([(x, y, cal.is_half_precision(r["precision"]))
                                       for x, r, y in zip(replay_stat, self.cal_recs, self.measured_cal, strict=True)])
        assert fit is not None
        rconst, roffset = fit
        cpu = cal.DEFAULTS.cpu.model_copy(update={
            "churn_fraction": self.frac, "constant_bytes": self.constant, "replay_constant_bytes": rconst,
            "half_precision_bytes": cal.half_precision_offset(self.churn_offset, roffset)})
        return cal.DEFAULTS.model_copy(update={"cpu": cpu}), rconst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", choices=["fresh", "forks", "both"], default="both")
    ap.add_argument("--forks", choices=["malloc", "python"], default="malloc", help="which fork draws (see load)")
    ap.add_argument("--spread", type=float, default=0.0, metavar="K",
                    help="with --simulate: keep the largest draw plus K times the drawn draws' range")
    ap.add_argument("--simulate", metavar="DESIGNS",
                    help="e.g. 2+0:mean,2+2:replay: fresh+fork draws kept (largest), 'mean' of both halves or 'replay' alone")
    args = ap.parse_args()
    data = Inputs(args.forks)
    if args.simulate:
        simulate(data, [(int(d.split("+")[0]), int(d.split("+")[1].split(":")[0]), d.split(":")[1])
                        for d in args.simulate.split(",")], 300, spread=args.spread)
        return
    from overseer_plan import calibration as cal

    def pool(r: dict) -> list[int]:
        return {"fresh": r["fresh"], "forks": r["forks"], "both": r["fresh"] + r["forks"]}[args.pool]

    print(f"allocator model refit: churn_fraction {data.frac:.4f} constant {data.constant / MiB:.1f} MiB offset "
          f"{data.churn_offset / MiB:+.1f} MiB (shipped {cal.DEFAULTS.cpu.churn_fraction:.4f}, "
          f"{cal.DEFAULTS.cpu.constant_bytes / MiB:.1f})")
    compare(data.recs)
    n_max = min(len(pool(r)) for r in data.recs)
    if n_max == 0:
        sys.exit(f"no {args.pool} draws stored")
    print(f"{len(data.rows)} matrix rows; pool {args.pool}, {n_max} draws per row at least")
    print("n | replay const MiB | traced median/max/worst, under -5%, over +10% | replay half alone | GPT-2 8x512 ck fp32 | llama 4x256 ck fp32")
    for n in range(1, n_max + 1):
        calib, rconst = data.calibration([expected_max(pool(r), n) for r in data.cal_recs])
        errs, rerrs, marks = [], [], {}
        for r, fam, m, half, churn in data.rows:
            rep = cal.cpu_rss_from_replay(expected_max(pool(r), n), calib, half=half)
            alloc = cal.cpu_rss_from_sim(r["sim_peak"], calib, churn, half=half)
            e = ((rep + alloc) / 2 - m) / m * 100
            errs.append(e)
            rerrs.append((rep - m) / m * 100)
            if r["ckpt"] and r["precision"] == "fp32" and r["ga"] == 1 and (r["batch"], r["seq"], fam) in (
                    (8, 512, "gpt2-4x256"), (4, 256, "llama-4x256-gqa")):
                marks[fam] = f"{e:+.1f}% (replay {rerrs[-1]:+.1f}%)"

        def summary(es: list[float]) -> str:
            return (f"{statistics.median(abs(e) for e in es):.1f}% / {max(abs(e) for e in es):.1f}% / "
                    f"{min(es):+.1f}%, {sum(e < -5 for e in es)}, {sum(e > 10 for e in es)}")

        print(f"{n} | {rconst / MiB:.1f} | {summary(errs)} | {summary(rerrs)} | {marks.get('gpt2-4x256', '-')} | "
              f"{marks.get('llama-4x256-gqa', '-')}")


def simulate(data: Inputs, designs: list[tuple[int, int, str]], iterations: int, seed: int = 0,
             spread: float = 0.0) -> None:
    """Monte Carlo of whole matrix passes: per design (fresh draws, fork draws, halves), each pass
    draws that many of each row's stored draws at random, keeps the largest, and scores the matrix.
    The replay constant is fitted on the calibration points' average of the same statistic. Prints
    the share of passes that meet each CPU target and the 90th percentile of rows under -5%.
    `spread` > 0 adds that many times the drawn draws' range to their largest, a margin that grows
    with the spread the draws show."""
    import random

    from overseer_plan import calibration as cal

    rng = random.Random(seed)

    def draw(r: dict, nf: int, nk: int) -> float:
        got = rng.sample(r["fresh"], nf) + rng.sample(r["forks"], nk)
        return max(got) + spread * (max(got) - min(got))

    print(f"{len(data.rows)} matrix rows, {iterations} simulated passes per design")
    print("fresh+forks halves | const MiB | median of (median, max, worst) | passes: median<=5, max<=10, none<-5, all three | under rows p90")
    for nf, nk, halves in designs:
        calib, rconst = data.calibration([statistics.fmean(draw(r, nf, nk) for _ in range(400)) for r in data.cal_recs])
        fixed = [(r, m, half, cal.cpu_rss_from_sim(r["sim_peak"], calib, churn, half=half))
                 for r, _, m, half, churn in data.rows]
        meds, maxs, worsts, unders, ok = [], [], [], [], [0, 0, 0, 0]
        for _ in range(iterations):
            errs = []
            for r, m, half, alloc in fixed:
                rep = cal.cpu_rss_from_replay(draw(r, nf, nk), calib, half=half)
                est = rep if halves == "replay" else (rep + alloc) / 2
                errs.append((est - m) / m * 100)
            med, mx, worst = statistics.median(abs(e) for e in errs), max(abs(e) for e in errs), min(errs)
            under = sum(e < -5 for e in errs)
            meds.append(med), maxs.append(mx), worsts.append(worst), unders.append(under)
            flags = (med <= 5, mx <= 10, under == 0)
            for i, f in enumerate(flags):
                ok[i] += f
            ok[3] += all(flags)
        q = statistics.quantiles(unders, n=10)[-1]
        print(f"{nf}+{nk} {halves:6} | {rconst / MiB:.1f} | {statistics.median(meds):.1f}% / {statistics.median(maxs):.1f}% / "
              f"{statistics.median(worsts):+.1f}% | {ok[0] / iterations:.0%} {ok[1] / iterations:.0%} {ok[2] / iterations:.0%} "
              f"{ok[3] / iterations:.0%} | {q:.0f}")


if __name__ == "__main__":
    main()
