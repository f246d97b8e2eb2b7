"""Batch-size search under a hard memory cap: `overseer train --auto` vs HF `Trainer(auto_find_batch_size=True)`.

Usage:
    python bench/oom_search.py                       # 2 GiB address-space cap, print JSON figures
    python bench/oom_search.py --cap-gib 2 --json bench/results/oom_search.json

Both tools get the same model (GPT-2 style: 4 layers, width 256, vocab 8000, 512 positions, random
init from the same config), the same data (the standard library's source as byte tokens, packed in
512-token blocks by trainer/data.py), the same request (batch 64 x 512 tokens, accumulation 1) and
the same cap: RLIMIT_AS set in the child before exec (what `prlimit --as` does), with
MALLOC_ARENA_MAX=2 for both so glibc's per-thread arenas do not eat the address space.
Each runs in its own process, one after the other, and reports:
    first_step_s    launch (process creation) to the end of the first optimizer step
    steady_sps      samples/s over the steps after the first
    overhead_s      first_step_s minus the first step's samples at the steady rate
    effective_batch sequences per optimizer step actually trained
    steps_lost      optimizer steps completed and then thrown away (restarts)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": 4, "n_embd": 256, "n_head": 4,
         "vocab_size": 8000, "n_positions": 512, "bos_token_id": 1, "eos_token_id": 2, "use_cache": False}
REQUEST = {"batch": 64, "seq": 512}


def _capped(cap_bytes: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap_bytes, cap_bytes))
    return apply


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "MALLOC_ARENA_MAX": "2", "OVERSEER_CACHE_DIR": str(cache),
            "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def run_overseer(work: Path, cap: int, steps: int) -> dict:
    run = work / "overseer-run"
    cmd = [sys.executable, "-m", "overseer_plan", "train", "--auto", "--model", str(work / "model"),
           "--batch-size", str(REQUEST["batch"]), "--gradient-accumulation-steps", "1",
           "--max-sequence-length", str(REQUEST["seq"]), "--max-steps", str(steps), "--output", str(run), "--cpu-only"]
    done, wall = _run_capped(cmd, work, cap)
    if done.returncode != 0:
        return {"tool": "overseer", "error": done.stderr[-1500:], "returncode": done.returncode}
    summary = json.loads((run / "summary.json").read_text())
    events = [json.loads(x) for x in (run / "events.jsonl").read_text().splitlines()]
    initial_eval_s = next((e.get("seconds", 0.0) for e in events if e["event"] == "eval" and e["step"] == 0), 0.0)
    plan = next((e["text"] for e in events if e["event"] == "note" and e["text"].startswith("plan")), None)
    sps = summary["steady_samples_per_s"]
    first = summary["time_to_first_step_s"]
    return {"tool": "overseer train --auto", "first_step_s": first, "steady_sps": sps,
            "overhead_s": round(first - REQUEST["batch"] / sps, 2), "initial_eval_s": initial_eval_s,
            "effective_batch": summary["effective_batch_size"], "steps_lost": 0,
            "oom_retries": summary["oom_events"], "micro_batch": summary["config"]["batch_size"],
            "accumulation": summary["config"]["gradient_accumulation_steps"], "precision": summary["precision"],
            "optimizer_steps": summary["optimizer_steps"], "plan": plan, "wall_s": round(wall, 1)}


def _run_capped(cmd: list[str], work: Path, cap: int) -> tuple[subprocess.CompletedProcess, float]:
    """Run one tool under the address-space cap; its result and wall time."""
    t0 = time.time()
    done = subprocess.run(cmd, env=_env(work / "cache"), preexec_fn=_capped(cap), capture_output=True, text=True,
                          cwd=str(REPO), timeout=1800)
    return done, time.time() - t0


def run_hf(work: Path, cap: int, steps: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--hf-child", str(work), "--steps", str(steps)]
    done, wall = _run_capped(cmd, work, cap)
    if done.returncode != 0:
        return {"tool": "hf", "error": done.stderr[-1500:], "returncode": done.returncode}
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["wall_s"] = round(wall, 1)
    return out


def hf_child(work: Path, steps: int) -> None:
    """Runs inside the capped child: HF Trainer with auto_find_batch_size on the same blocks."""
    import psutil
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainerCallback, TrainingArguments

    from trainer.corpus import embedded_sources
    from trainer.data import PackedBlocks, prepare_data
    from trainer.model import resolve_config
    from trainer.tokenizer import ByteTokenizer, encoder_for

    start = psutil.Process().create_time()
    data = prepare_data(embedded_sources(), encoder_for(ByteTokenizer(vocab_size=8000)), block_len=REQUEST["seq"],
                        seed=42, eval_fraction=0.05, cache_dir=work / "cache")
    blocks = PackedBlocks(data)

    class Blocks(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(data.train_ids)

        def __getitem__(self, i: int) -> dict:
            x = blocks[int(data.train_ids[i])]
            return {"input_ids": x, "labels": x}

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[tuple[float, int, int]] = []  # (time, global_step, batch)
            self.completed = 0

        def on_step_end(self, args, state, control, **kw):
            self.completed += 1
            self.ends.append((time.time(), state.global_step, state.train_batch_size))

    torch.manual_seed(42)
    model = AutoModelForCausalLM.from_config(resolve_config(str(work / "model")))
    clock = Clock()
    args = TrainingArguments(output_dir=str(work / "hf-run"), per_device_train_batch_size=REQUEST["batch"],
                             gradient_accumulation_steps=1, auto_find_batch_size=True, max_steps=steps,
                             learning_rate=1e-4, save_strategy="no", report_to=[], logging_steps=1000,
                             use_cpu=True, dataloader_num_workers=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=Blocks(), callbacks=[clock])
    trainer.train()
    batch = trainer.state.train_batch_size
    final = [e for e in clock.ends if e[2] == batch]
    first = final[0][0] - start
    steady = (len(final) - 1) * batch / (final[-1][0] - final[0][0]) if len(final) > 1 else None
    print(json.dumps({"tool": "transformers.Trainer(auto_find_batch_size=True)", "first_step_s": round(first, 2),
                      "steady_sps": round(steady, 3) if steady else None,
                      "overhead_s": round(first - batch / steady, 2) if steady else None,
                      "effective_batch": batch * args.gradient_accumulation_steps,
                      "steps_lost": clock.completed - len(final), "oom_retries": _hf_retries(REQUEST["batch"], batch),
                      "micro_batch": batch, "accumulation": 1, "precision": "fp32",
                      "optimizer_steps": trainer.state.global_step}))


def _hf_retries(start: int, final: int) -> int:
    # accelerate's find_executable_batch_size reduces by int(b * 0.9) per OOM (PR #3684).
    n, b = 0, start
    while b > final:
        b, n = int(b * 0.9), n + 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cap-gib", type=float, default=2.0)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--hf-child", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--only", choices=["overseer", "hf"], default=None)
    a = ap.parse_args()
    if a.hf_child:
        hf_child(a.hf_child, a.steps)
        return
    cap = int(a.cap_gib * 2**30)
    with tempfile.TemporaryDirectory(prefix="oom-search-") as tmp:
        work = Path(tmp)
        (work / "model").mkdir()
        (work / "model" / "config.json").write_text(json.dumps(MODEL))
        results = {"cap_bytes": cap, "request": REQUEST, "steps": a.steps, "machine": _machine(), "runs": []}
        if a.only != "hf":
            results["runs"].append(run_overseer(work, cap, a.steps))
        if a.only != "overseer":
            results["runs"].append(run_hf(work, cap, a.steps * 2))
    text = json.dumps(results, indent=2)
    print(text)
    if a.json:
        a.json.write_text(text + "\n")


def _machine() -> dict:
    import platform

    import psutil

    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "ram_gib": round(psutil.virtual_memory().total / 2**30, 1), "load_avg_1m": os.getloadavg()[0],
            "python": platform.python_version()}


if __name__ == "__main__":
    main()
