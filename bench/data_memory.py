"""Peak memory of tokenising/packing and of training on a corpus several times larger than the run's RAM budget.

    python bench/data_memory.py --sizes-mib 200 2048 --budget-mib 768 --write bench/results/data_memory.md

For each corpus size a fresh child process (so every figure starts from the same baseline):

1. is given the RAM budget as RLIMIT_DATA: the cap on private writable memory (heap, anonymous
   mmaps), which is where a corpus loaded into RAM would have to live. The memory-mapped token file
   is file-backed, clean and reclaimable, so it is not charged; a control child shows the cap is real
   by reading the corpus into memory under the same budget and failing with MemoryError;
2. imports torch, transformers and the trainer, records its peak RSS (VmHWM) and resets the peak
   (`/proc/self/clear_refs` 5, Linux >= 4.0);
3. tokenises and packs the corpus with `trainer.data.prepare_data` (the call the loop makes) and
   records the phase's peak RSS;
4. trains `--steps` optimizer steps of overseer-tiny through `trainer.pipeline.run_pipeline` (the
   CLI's path; the token cache from phase 3 is hit) and records that phase's peak RSS.

The corpus is random words (~12 words a line) in 64 MiB files; the byte-level tokenizer makes one
uint16 token per byte, so the token file is twice the corpus.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20
_FILE_MIB = 64
_WORDS = ("the of and to in is was for on that with as by at from his it an were are which this be or has had not "
          "but first one their its new after who they have her she two been other when there all during into "
          "school time may years more most only over city some world would where later up such used many can "
          "state about national out known university united then made").split()


# ---------------------------------------------------------------------- the parent
def main() -> None:
    args = _parse()
    if args.child:
        return _child(args)
    if args.control:
        return _control(Path(args.control))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="overseer-data-memory-"))
    try:
        rows = [_measure(work, size, args) for size in args.sizes_mib]
        control = _run_child(["--control", str(_corpus(work, max(args.sizes_mib)))], args.budget_mib)
        report = _report(rows, control, args)
        print(report)
        if args.write:
            Path(args.write).write_text(report, encoding="utf-8")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes-mib", type=int, nargs="+", default=[200, 2048], help="corpus sizes in MiB")
    p.add_argument("--budget-mib", type=int, default=768, help="RLIMIT_DATA given to each run, MiB")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps to train")
    p.add_argument("--workdir", help="where corpora, token caches and runs go (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--write", help="write the Markdown report here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--control", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p.parse_args()


def _measure(work: Path, size_mib: int, args: argparse.Namespace) -> dict:
    t0 = time.time()
    corpus = _make_corpus(_corpus(work, size_mib), size_mib)
    made_s = time.time() - t0
    out = work / f"run-{size_mib}"
    shutil.rmtree(out, ignore_errors=True)
    row = _run_child(["--child", str(corpus), "--out", str(out), "--steps", str(args.steps)], args.budget_mib)
    tokens = sum(f.stat().st_size for f in (out / "tokens").glob("*.tokens"))
    return {**row, "size_mib": size_mib, "corpus_bytes": _tree_bytes(corpus), "token_file_bytes": tokens,
            "generate_s": round(made_s, 1), "budget_bytes": args.budget_mib * MiB}


def _run_child(argv: list[str], budget_mib: int) -> dict:
    limit = budget_mib * MiB

    def cap() -> None:  # runs in the child before exec
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, __file__, *argv], cwd=REPO, env=env, preexec_fn=cap,
                          capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"child {argv} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def _corpus(work: Path, size_mib: int) -> Path:
    return work / f"corpus-{size_mib}mib"


def _make_corpus(root: Path, size_mib: int) -> Path:
    """`size_mib` MiB of text in 64 MiB files, built from 16 seeded 1 MiB pieces (reused when present)."""
    marker = root / ".complete"
    if marker.is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    rng = random.Random(size_mib)
    pieces = [_piece(rng) for _ in range(16)]
    for i in range(0, size_mib, _FILE_MIB):
        with open(root / f"part-{i // _FILE_MIB:04d}.txt", "wb") as fh:
            for _ in range(min(_FILE_MIB, size_mib - i)):
                fh.write(pieces[rng.randrange(len(pieces))])
    marker.write_text("ok")
    return root


def _piece(rng: random.Random) -> bytes:
    lines, size = [], 0
    while size < MiB:
        line = " ".join(rng.choice(_WORDS) for _ in range(12)) + "\n"
        lines.append(line)
        size += len(line)
    return "".join(lines).encode()[:MiB]


def _tree_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in root.glob("*.txt"))


# ---------------------------------------------------------------------- the children
def _status() -> dict[str, int]:
    """VmHWM, VmRSS, RssAnon, RssFile, VmData of this process in bytes."""
    keys = ("VmHWM", "VmRSS", "RssAnon", "RssFile", "VmData")
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in keys:
                out[key] = int(value.split()[0]) * 1024
    return out


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _child(args: argparse.Namespace) -> None:
    import transformers

    from overseer_plan.config import TrainingConfig
    from trainer.corpus import find_sources
    from trainer.data import prepare_data
    from trainer.pipeline import run_pipeline
    from trainer.tokenizer import ByteTokenizer, encoder_for

    transformers.logging.set_verbosity_error()
    out, corpus = Path(args.out), args.child
    phases = {"import": _status()}
    _reset_peak()
    t0 = time.time()
    data = prepare_data(find_sources([corpus]), encoder_for(ByteTokenizer()), block_len=512, seed=42,
                        eval_fraction=0.05, cache_dir=out / "tokens")
    phases["tokenise"] = {**_status(), "seconds": round(time.time() - t0, 1), "n_tokens": data.n_tokens}
    _reset_peak()
    config = TrainingConfig(resource_efficient_mode=True, data=[corpus], output_dir=str(out / "run"),
                            max_steps=args.steps, batch_size=4, gradient_accumulation_steps=1, eval_max_batches=2,
                            use_gpu=False, num_workers=0, save_steps=1000)
    t0 = time.time()
    result = run_pipeline(config, token_cache_dir=out / "tokens").result
    phases["train"] = {**_status(), "seconds": round(time.time() - t0, 1), "steps": result.optimizer_steps,
                       "block_len": result.config["max_sequence_length"]}
    print(json.dumps(phases))


def _control(corpus: Path) -> None:
    """Read the corpus into RAM under the same budget: it must fail."""
    held, done = [], 0
    try:
        for f in sorted(corpus.glob("*.txt")):
            held.append(f.read_bytes())
            done += len(held[-1])
        print(json.dumps({"control": f"read all {done // MiB} MiB (the budget did not bind)"}))
    except MemoryError:
        held.clear()
        print(json.dumps({"control": f"MemoryError after reading {done // MiB} MiB into RAM"}))


# ---------------------------------------------------------------------- the report
def _mib(n: int) -> str:
    return f"{n / MiB:,.0f} MiB"


def _report(rows: list[dict], control: dict, args: argparse.Namespace) -> str:
    import psutil

    cmd = "python bench/data_memory.py --sizes-mib " + " ".join(map(str, args.sizes_mib)) + \
          f" --budget-mib {args.budget_mib} --steps {args.steps} --write bench/results/data_memory.md"
    head = [
        "# Data pipeline memory: corpus size vs peak RSS", "",
        f"- Command: `{cmd}` (from the repository root)",
        f"- Date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, "
        f"{psutil.virtual_memory().total / 2**30:.1f} GiB RAM, no GPU; {platform.platform()}, Python {platform.python_version()}",
        f"- RAM budget per run: RLIMIT_DATA = {args.budget_mib} MiB (heap and anonymous memory; see the docstring)",
        f"- Control: under the same budget, reading the {max(args.sizes_mib)} MiB corpus into memory: {control['control']}",
        "", "| corpus | token file | tokenise | peak RSS tokenise (anon / file at end) | train | peak RSS train "
        "(anon / file at end) | peak RSS after imports |", "|---|---|---|---|---|---|---|"]
    body = []
    for r in rows:
        tok, tr = r["tokenise"], r["train"]
        body.append(f"| {_mib(r['corpus_bytes'])} | {_mib(r['token_file_bytes'])} | {tok['seconds']} s | "
                    f"{_mib(tok['VmHWM'])} ({_mib(tok['RssAnon'])} / {_mib(tok['RssFile'])}) | {tr['steps']} steps, "
                    f"{tr['seconds']} s | {_mib(tr['VmHWM'])} ({_mib(tr['RssAnon'])} / {_mib(tr['RssFile'])}) | "
                    f"{_mib(r['import']['VmHWM'])} |")
    return "\n".join(head + body + _reading(rows)) + "\n"


def _reading(rows: list[dict]) -> list[str]:
    """What the table says: how much of the added corpus shows up as added peak RSS."""
    small, big = rows[0], rows[-1]
    added = big["corpus_bytes"] - small["corpus_bytes"]
    if added <= 0:
        return []
    grew = {p: big[p]["VmHWM"] - small[p]["VmHWM"] for p in ("tokenise", "train")}
    blocks = big["tokenise"]["n_tokens"] // big["train"]["block_len"]
    return [
        "", "## Reading", "",
        f"- {_mib(added)} more corpus ({big['corpus_bytes'] / small['corpus_bytes']:.0f}x) added "
        f"{_mib(grew['tokenise'])} to the tokenising peak and {_mib(grew['train'])} to the training peak "
        f"({100 * grew['tokenise'] / added:.1f}% and {100 * grew['train'] / added:.1f}% of the added bytes); "
        f"the {_mib(big['corpus_bytes'])} corpus ran within the {_mib(big['budget_bytes'])} budget, which a "
        "corpus read into RAM could not (the control).",
        f"- What grows is the block index, not the data: {blocks:,} blocks of {big['train']['block_len']} tokens, "
        f"kept as int64 arrays of {_mib(8 * blocks)} each (`data.split_blocks`: the permutation and the sorted "
        "train/eval ids; `data.StepBatchSampler`: the epoch's permutation of the train ids). Tokenising holds one "
        "~1 MiB piece of one document at a time; training one step's batch; the token file is memory-mapped "
        "and only the blocks a step reads are paged in (RssFile stays at the shared libraries' size).",
        f"- Seconds are wall time (load average {os.getloadavg()[0]:.1f} on this machine at the end of the run: "
        "other jobs shared it); compare memory, not speed.",
    ]



if __name__ == "__main__":
    main()
