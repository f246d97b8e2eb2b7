"""How long `probe()` and a cold `overseer probe --json` take, against the cost of starting Python.

Usage:
    python bench/probe_speed.py                      # print the results
    python bench/probe_speed.py --write bench/results/probe_speed.md

(a) probe() in this process: the first call (pays for lazy imports) and the median of N warm calls.
(b) cold processes, interleaved so that machine noise hits every command alike:
    `python -c pass`, `python -m overseer_plan probe --json`, and the installed `overseer probe --json`
    when it is on PATH. Medians and the ratio to bare Python.
(c) the address-space check: `prlimit --as=4294967296 python -m overseer_plan probe --json`, when
    prlimit exists, and the RAM fields it reports.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from overseer_plan.units import fmt_bytes  # noqa: E402


def in_process(n: int) -> dict[str, float]:
    """Seconds to import the probe, for the first probe() (lazy imports: psutil, pynvml), and the median/max of n more."""
    start = time.perf_counter()
    from overseer_plan.probe import probe

    imported = time.perf_counter()
    probe()
    first = time.perf_counter() - imported
    times = []
    for _ in range(n):
        t = time.perf_counter()
        probe()
        times.append(time.perf_counter() - t)
    return {"import_s": imported - start, "first_s": first, "median_s": statistics.median(times), "max_s": max(times)}


def cold(commands: dict[str, list[str]], reps: int) -> dict[str, list[float]]:
    """Wall seconds per command, run round-robin `reps` times after one unmeasured warm-up round."""
    out: dict[str, list[float]] = {name: [] for name in commands}
    for rep in range(reps + 1):
        for name, argv in commands.items():
            t = time.perf_counter()
            subprocess.run(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            if rep:  # round 0 fills the page cache; not measured
                out[name].append(time.perf_counter() - t)
    return out


_WATCHED = ("overseer_plan.cli", "overseer_plan.hardware", "typer", "pydantic", "overseer_plan.probe",
            "psutil", "pynvml", "torch")


def import_costs() -> dict[str, float]:
    """Cumulative import seconds of the heaviest modules in a cold `overseer probe --json` (-X importtime)."""
    argv = [sys.executable, "-X", "importtime", "-m", "overseer_plan", "probe", "--json"]
    res = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=True)
    costs = {}
    for line in res.stderr.splitlines():
        parts = line.split("|")
        if line.startswith("import time:") and len(parts) == 3 and parts[2].strip() in _WATCHED:
            costs[parts[2].strip()] = int(parts[1]) / 1e6
    return costs


def prlimit_check() -> str | None:
    """The RAM part of `overseer probe --json` under a 4 GiB address-space limit, as one line."""
    if not shutil.which("prlimit"):
        return None
    argv = ["prlimit", "--as=4294967296", sys.executable, "-m", "overseer_plan", "probe", "--json"]
    res = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=True)
    ram = json.loads(res.stdout)["ram"]
    keys = ("limit_bytes", "limit_source", "effective_bytes", "available_bytes")
    return "`prlimit --as=4294967296 python -m overseer_plan probe --json` -> ram: " + json.dumps(
        {k: ram[k] for k in keys})


def machine_line() -> str:
    from overseer_plan.probe import probe

    hw = probe()
    gpus = ", ".join(g.name for g in hw.gpus or []) or f"no GPU ({hw.unavailable.get('gpus', '?')})"
    return (f"{hw.cpu.model}, {hw.cpu.logical_cores} logical cores ({hw.cpu.usable_cores} usable), "
            f"RAM {fmt_bytes(hw.ram.total_bytes)}, {gpus}; {hw.software.os}, Python {hw.software.python}")


def report(args: argparse.Namespace) -> str:
    commands = {"python -c pass": [sys.executable, "-c", "pass"],
                "python -m overseer_plan probe --json": [sys.executable, "-m", "overseer_plan", "probe", "--json"]}
    if shutil.which("overseer"):
        commands["overseer probe --json"] = ["overseer", "probe", "--json"]
    inproc = in_process(args.n)
    runs = cold(commands, args.reps)
    base = statistics.median(runs["python -c pass"])
    lines = [
        "# probe speed", "",
        f"- Command: `python {' '.join(sys.argv)}` (from the repository root)",
        f"- Date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine (from probe()): {machine_line()}", "",
        "## probe() in process", "",
        f"- `import overseer_plan.probe` (pydantic models included): {inproc['import_s'] * 1000:.1f} ms",
        f"- first probe() call (imports psutil and pynvml): {inproc['first_s'] * 1000:.1f} ms",
        f"- warm calls: median {inproc['median_s'] * 1000:.1f} ms, max {inproc['max_s'] * 1000:.1f} ms "
        f"over {args.n} (target: 300 ms)", "",
        f"## Cold processes (interleaved, {args.reps} rounds, medians)", "",
        "| command | median | min | max | ratio to `python -c pass` | overhead |",
        "|---|---|---|---|---|---|",
    ]
    for name, times in runs.items():
        med = statistics.median(times)
        lines.append(f"| `{name}` | {med * 1000:.0f} ms | {min(times) * 1000:.0f} ms | {max(times) * 1000:.0f} ms "
                     f"| {med / base:.1f}x | +{(med - base) * 1000:.0f} ms |")
    if "overseer probe --json" not in runs:
        lines.append("\n(The `overseer` console script is not on PATH here, so it was not timed.)")
    costs = import_costs()
    lines += ["", "Cumulative import time inside one cold run (`-X importtime`; nested, so they do not add up): "
              + ", ".join(f"`{m}` {costs[m] * 1000:.0f} ms" for m in _WATCHED if m in costs)
              + ("" if "torch" in costs else "; torch not imported.")]
    check = prlimit_check()
    if check:
        lines += ["", "## Address-space limit", "", f"- {check}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="warm in-process probe() calls")
    parser.add_argument("--reps", type=int, default=10, help="rounds of cold processes")
    parser.add_argument("--write", type=Path, help="also write the Markdown report to this file")
    args = parser.parse_args()
    text = report(args)
    sys.stdout.write(text)
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
