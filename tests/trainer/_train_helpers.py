"""Shared helpers for the trainer tests: a very small Llama config, a small corpus, a fast config."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

TINY_LLAMA = {
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 288, "hidden_size": 32,
    "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
    "max_position_embeddings": 128, "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2,
    "pad_token_id": 0, "use_cache": False,
}
_WORDS = ("the model learns to predict the next byte of text from all the bytes before it and memory "
          "is finite so the trainer steps down when an allocation fails").split()


class MessageLog:
    """A trainer Reporter that keeps the messages it is given (in `lines`) and ignores progress."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def start(self, **_kw: Any) -> None: ...
    def update(self, *_a: Any) -> None: ...
    def close(self) -> None: ...

    def message(self, text: str) -> None:
        self.lines.append(text)


def tiny_model_dir(root: Path) -> Path:
    """A directory with only config.json: trains from scratch with the byte-level tokenizer."""
    d = root / "tiny-model"
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(TINY_LLAMA), encoding="utf-8")
    return d


def tiny_corpus(root: Path, *, files: int = 4, words: int = 3000, seed: int = 0) -> Path:
    """A directory of deterministic pseudo-English text files (~16 KB each)."""
    d = root / "corpus"
    d.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    for i in range(files):
        text = " ".join(rng.choice(_WORDS) for _ in range(words))
        (d / f"part{i}.txt").write_text(text + "\n", encoding="utf-8")
    return d


def tiny_settings(root: Path, **overrides: Any) -> dict[str, Any]:
    """Settings for a run of a few seconds on CPU."""
    settings = {
        "model": str(tiny_model_dir(root)), "data": [str(tiny_corpus(root))], "output_dir": str(root / "run"),
        "max_steps": 6, "batch_size": 4, "gradient_accumulation_steps": 2, "max_sequence_length": 64,
        "learning_rate": 3e-3, "eval_steps": 3, "save_steps": 2, "logging_steps": 1, "num_workers": 0,
        "pin_memory": False, "mixed_precision": False, "use_gpu": False, "memory_check_interval": 0.2,
        "eval_max_batches": 2, "seed": 7,
    }
    settings.update(overrides)
    return settings


def tiny_config(root: Path, **overrides: Any) -> Any:
    from overseer_plan.config import TrainingConfig

    return TrainingConfig(**tiny_settings(root, **overrides))


def run_trainer(config: Any, *, resume: bool = False, cache_dir: Path | None = None, **kwargs: Any) -> Any:
    """Set up, train and close one Trainer; returns the TrainResult."""
    from trainer.loop import Trainer

    trainer = Trainer(config, resume=resume, cache_dir=cache_dir or Path(config.output_dir).parent / "cache", **kwargs)
    try:
        trainer.setup()
        return trainer.train()
    finally:
        trainer.close()


def write_config_yaml(root: Path, name: str = "cfg.yaml", **overrides: Any) -> Path:
    import yaml

    path = root / name
    path.write_text(yaml.safe_dump(tiny_settings(root, **overrides)), encoding="utf-8")
    return path


def cli_subprocess(args: list[str], *, env: dict[str, str] | None = None, cache: Path | None = None,
                   **popen: Any) -> subprocess.Popen:
    """`python -m overseer_plan ARGS` in a child process with the repo on PYTHONPATH."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    if cache is not None:
        full_env["OVERSEER_CACHE_DIR"] = str(cache)
    return subprocess.Popen([sys.executable, "-m", "overseer_plan", *args], env=full_env, cwd=str(REPO), **popen)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
