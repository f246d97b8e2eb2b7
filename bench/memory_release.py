"""What giving freed heap memory back to the system buys on CPU, and costs.

    python bench/memory_release.py --between-rounds             # continuous learning, GPT-2 124M
    python bench/memory_release.py [--steps 20] [--repeats 3]   # after every optimizer step

Between rounds (what the trainer does): one continuous-learning round of GPT-2 124M from scratch
(4 x 256 tokens, 3 steps, resource-efficient preset on CPU) in a fresh process; the process's
RSS when the round is complete, and after `trainer.memory.release_freed_memory()`, which the
round's end now calls before the process waits for new data.

After every optimizer step (measured, not adopted): each run is a fresh process that builds a model from its config and trains `--steps` AdamW
steps on random batches, as the estimator's protocol does (overseer_plan/_measure.py). With
`release` on, it calls `trainer.memory.release_freed_memory()` after every optimizer step, as the
trainer does in resource-efficient mode. Reported per run: ru_maxrss growth over the post-import
RSS (the peak the kernel's OOM killer sees), the RSS left between steps (what the rest of the
machine can not use while training runs), and the mean step time after two warm-up steps.
The two settings alternate run by run, so machine noise falls on both alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = {
    "gpt2 5x320, 6 x 256, checkpointed": {"family": "gpt2", "batch": 6, "seq": 256, "ckpt": True},
    "gpt2 5x320, 6 x 256": {"family": "gpt2", "batch": 6, "seq": 256, "ckpt": False},
    "llama 4x256 gqa, 4 x 512, checkpointed": {"family": "llama", "batch": 4, "seq": 512, "ckpt": True},
    "gpt2 5x320, 6 x 256, checkpointed, accumulation 4": {"family": "gpt2", "batch": 6, "seq": 256, "ckpt": True,
                                                          "accum": 4},
}
CONFIGS = {
    "gpt2": {"model_type": "gpt2", "n_layer": 5, "n_embd": 320, "n_head": 5, "vocab_size": 9000,
             "n_positions": 1024},
    "llama": {"model_type": "llama", "num_hidden_layers": 4, "hidden_size": 256, "intermediate_size": 688,
              "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 8000,
              "max_position_embeddings": 1024},
}

CHILD = r"""
import json, resource, statistics, sys, threading, time
import torch, transformers
from trainer.memory import release_freed_memory
job = json.loads(sys.argv[1])
transformers.logging.set_verbosity_error()
torch.manual_seed(0)
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
rss0 = rss()
cfg = dict(job["config"]); kind = cfg.pop("model_type")
model = transformers.AutoModelForCausalLM.from_config(transformers.CONFIG_MAPPING[kind](**cfg))
if job["ckpt"]:
    model.gradient_checkpointing_enable()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
samples, sampling = [], [False, True]
def sample():  # time-averaged RSS: what the rest of the machine can not use while training runs
    while sampling[1]:
        if sampling[0]:
            samples.append(rss() - rss0)
        time.sleep(0.01)
sampler = threading.Thread(target=sample, daemon=True); sampler.start()
between, times, released = [], [], []
for i in range(job["steps"]):
    sampling[0] = i >= 2
    t = time.perf_counter()
    for _ in range(job["accum"]):
        ids = torch.randint(0, cfg["vocab_size"], (job["batch"], job["seq"]))
        (model(input_ids=ids, labels=ids).loss / job["accum"]).backward()
    opt.step(); opt.zero_grad(set_to_none=True)
    if job["release"]:
        released.append(release_freed_memory().freed_bytes)
    times.append(time.perf_counter() - t)
    between.append(rss() - rss0)
sampling[1] = False
print(json.dumps({"mean": statistics.mean(samples), "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0,
                  "between": statistics.mean(between[2:]), "step_s": statistics.mean(times[2:]),
                  "released": statistics.mean(released) if released else 0}))
"""


ROUND = r"""
import sys, tempfile
from pathlib import Path
import psutil
from overseer_plan.config import TrainingConfig
from trainer.continuous import run_continuous
class Said:
    def __init__(self): self.said = []
    def start(self, **kw): pass
    def update(self, *a): pass
    def close(self): pass
    def message(self, text): self.said.append((psutil.Process().memory_info().rss, text))
d = Path(tempfile.mkdtemp()); data = d / "data"; data.mkdir()
(data / "a.txt").write_text(("the model learns to predict the next byte of text " * 40 + "\n") * 300)
cfg = TrainingConfig(resource_efficient_mode=True, model="gpt2", data=[str(data)], output_dir=str(d / "run"),
                     batch_size=4, gradient_accumulation_steps=1, max_sequence_length=256, max_steps=3, use_gpu=False,
                     num_workers=0, eval_max_batches=2)
said = Said()
run_continuous(cfg, rounds=1, use_monitor=False, reporter=said, token_cache_dir=d / "tok")
for rss, text in said.said:
    print(f"{rss / 2**20:8.0f} MiB  {text[:100]}")
"""


def run(case: dict, release: bool, steps: int) -> dict:
    job = {"accum": 1, **case, "config": CONFIGS[case["family"]], "release": release, "steps": steps}
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(job)], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--cases", nargs="*", default=None, help="case numbers (0-based) to run; default all")
    ap.add_argument("--between-rounds", action="store_true", help="measure the release after a continuous round")
    args = ap.parse_args()
    if args.between_rounds:
        print("RSS of the process at each message of one continuous-learning round:")
        subprocess.run([sys.executable, "-c", ROUND], cwd=ROOT, check=True)
        return
    mib = 2**20
    rows = {}
    print("| case | setting | peak RSS growth MiB (runs) | mean RSS growth MiB | RSS between steps MiB | step s | released per step MiB |")
    print("|---|---|---|---|---|---|---|")
    for i, (name, case) in enumerate(CASES.items()):
        if args.cases is not None and str(i) not in args.cases:
            continue
        got: dict[bool, list[dict]] = {False: [], True: []}
        for r in range(args.repeats):
            for release in ((False, True) if r % 2 == 0 else (True, False)):
                got[release].append(run(case, release, args.steps))
        rows[name] = {("release" if k else "default"): v for k, v in got.items()}
        for release in (False, True):
            runs = got[release]
            peaks = [x["peak"] / mib for x in runs]
            print(f"| {name} | {'release each step' if release else 'default'} | {statistics.median(peaks):.0f} "
                  f"({min(peaks):.0f}-{max(peaks):.0f}) | {statistics.median(x['mean'] / mib for x in runs):.0f} | {statistics.median(x['between'] / mib for x in runs):.0f} | "
                  f"{statistics.median(x['step_s'] for x in runs):.3f} | "
                  f"{statistics.median(x['released'] / mib for x in runs):.0f} |")
        d, rel = got[False], got[True]
        print(f"|  | ratio release/default | {statistics.median(x['peak'] for x in rel) / statistics.median(x['peak'] for x in d):.2f} | "
              f"{statistics.median(x['mean'] for x in rel) / statistics.median(x['mean'] for x in d):.2f} | "
              f"{statistics.median(x['between'] for x in rel) / statistics.median(x['between'] for x in d):.2f} | "
              f"{statistics.median(x['step_s'] for x in rel) / statistics.median(x['step_s'] for x in d):.2f} | |")
    if args.out:
        args.out.write_text(json.dumps({"steps": args.steps, "repeats": args.repeats, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
