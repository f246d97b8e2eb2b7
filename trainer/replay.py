"""Earlier rounds' data for continuous learning: the replay sample and the held-out evaluation.

Each complete round keeps its token file in run_dir/continuous/round-N/ (hard-linked from the token
cache when possible), with the ids of its new-data training and held-out blocks: replay and
evaluation need earlier data after the download cache has replaced an older version of a URL.

Replay: a round trains on its new files plus replay.jsonl, a seeded sample of earlier rounds'
*training* blocks (never their held-out blocks), decoded back to text, sized so that replay is
`replay_fraction` (f) of the round's tokens: round(f / (1 - f) x est_new_tokens / block_len) blocks.

Held-out data: the loop holds out `eval_fraction` of a round's blocks (`data.split_blocks`). The
replay file comes first in the round's data, so blocks after its tokens are pure new data; the held
out ones among them are the round's "new" evaluation set, and later rounds' "earlier" set. The
earlier sample is drawn from a seed fixed per round, so the losses before and after a round compare
the same blocks.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from overseer_plan._io import atomic_write_bytes, fsync_dir, hash_file
from trainer.rounds import RoundRecord

STORE_NAME = "continuous"
_REPLAY_SALT, _EVAL_SALT = 0x5E9, 0xE7A2  # seed streams of their own: replay and eval samples never collide


@dataclass
class _Blocks:
    """Some blocks of a token file."""

    tokens: np.ndarray
    block_len: int
    ids: np.ndarray

    def block(self, i: int) -> np.ndarray:
        start = int(self.ids[i]) * self.block_len
        return np.asarray(self.tokens[start:start + self.block_len])


# -------------------------------------------------------------------- the round store
def round_dir(run_dir: Path, number: int) -> Path:
    return run_dir / STORE_NAME / f"round-{number}"


def replay_path(run_dir: Path, number: int) -> Path:
    return round_dir(run_dir, number) / "replay.jsonl"


def stored_blocks(run_dir: Path, record: RoundRecord, which: str) -> _Blocks:
    """A complete round's new-data blocks: `which` is "train" or "eval"."""
    d = round_dir(run_dir, record.round)
    tokens = np.memmap(d / "tokens.bin", dtype=record.dtype, mode="r", shape=(record.n_tokens,))
    with np.load(d / "split.npz") as split:
        return _Blocks(tokens, record.block_len, split[which])


def store_round(run_dir: Path, record: RoundRecord, data: Any) -> None:
    """Keep the round's token file and its new-data train/eval block ids; record their shape."""
    d = round_dir(run_dir, record.round)
    d.mkdir(parents=True, exist_ok=True)
    _link_or_copy(data.path, d / "tokens.bin")
    first = _first_new_block(record.replay_tokens, data.block_len)
    buf = io.BytesIO()
    np.savez(buf, train=data.train_ids[data.train_ids >= first], eval=data.eval_ids[data.eval_ids >= first])
    atomic_write_bytes(d / "split.npz", buf.getvalue())
    record.n_tokens, record.block_len, record.dtype = data.n_tokens, data.block_len, data.dtype


def _first_new_block(replay_tokens: int, block_len: int) -> int:
    """The first block holding only new data: replay comes first, so ceil(replay_tokens / block_len)."""
    return -(-replay_tokens // block_len)


# -------------------------------------------------------------------- replay
def replay_block_count(pool_blocks: int, *, fraction: float, est_new_tokens: float, block_len: int) -> int:
    """Blocks to replay so that replay is `fraction` of the round's tokens (at least 1, at most the pool)."""
    want = fraction / (1 - fraction) * est_new_tokens / block_len
    return min(pool_blocks, max(1, round(want)))


def write_replay(path: Path, pool: list[_Blocks], k: int, encoder: Any, *, seed: int, number: int) -> tuple[int, str]:
    """Write round `number`'s replay sample of `k` blocks from `pool` as JSONL; (its tokens, its sha256)."""
    rng = np.random.default_rng([seed, number, _REPLAY_SALT])
    return _write_jsonl(path, _decoded(_sample(pool, k, rng), encoder), encoder)


def _sample(pool: list[_Blocks], k: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """`k` distinct blocks drawn uniformly from all of `pool`, in file order."""
    sizes = np.cumsum([len(b.ids) for b in pool])
    total = int(sizes[-1]) if len(sizes) else 0
    if total == 0 or k <= 0:
        return
    for g in np.sort(rng.choice(total, size=min(k, total), replace=False)):
        i = int(np.searchsorted(sizes, g, side="right"))
        yield pool[i].block(int(g - (sizes[i - 1] if i else 0)))


def _decoded(blocks: Iterable[np.ndarray], encoder: Any) -> Iterator[str]:
    """Blocks back to text, one document per piece between end-of-sequence tokens."""
    for block in blocks:
        cuts = np.flatnonzero(block == encoder.eos_id)
        for piece in np.split(block, cuts):
            text = encoder.tokenizer.decode(piece.tolist(), skip_special_tokens=True)
            if text:
                yield text


def _write_jsonl(path: Path, texts: Iterable[str], encoder: Any) -> tuple[int, str]:
    """Write {"text": ...} lines atomically; (tokens the data pipeline will make of them, sha256)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tokens, h = 0, hashlib.sha256()
    try:
        with open(tmp, "wb") as fh:
            for text in texts:
                line = (json.dumps({"text": text}) + "\n").encode("utf-8")
                fh.write(line)
                h.update(line)
                ids = encoder.encode(text)
                tokens += len(ids) + 1 if ids else 0  # as data._tokenise_to_file: document + eos
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return tokens, h.hexdigest()


def sha256_file(path: Path) -> str:
    return hash_file(path).hexdigest()


def _link_or_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # another filesystem, or no hard links: copy
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    fsync_dir(dst.parent)


# -------------------------------------------------------------------- held-out evaluation
def evaluate(model_path: Path, earlier: list[_Blocks], data: Any, *, replay_tokens: int, seed: int, number: int,
             max_batches: int, batch_size: int, seq_len: int, use_gpu: bool) -> tuple[float | None, float | None]:
    """(earlier, new) mean eval loss of the checkpoint at `model_path`; None for a set that is empty.

    `earlier` are earlier rounds' held-out blocks, sampled with a seed fixed by (seed, number);
    the new set is `data`'s held-out blocks past the replay. Each set is at most `max_batches`
    micro-batches of `batch_size` blocks.
    """
    first = _first_new_block(replay_tokens, data.block_len)
    tokens = np.memmap(data.path, dtype=data.dtype, mode="r", shape=(data.n_tokens,))
    new = _Blocks(tokens, data.block_len, data.eval_ids[data.eval_ids >= first])
    limit = max_batches * batch_size
    rng = np.random.default_rng([seed, number, _EVAL_SALT])
    with _eval_model(model_path, use_gpu=use_gpu) as (model, device):
        loss = functools.partial(_mean_loss, model, device, batch_size=batch_size, seq_len=seq_len)
        loss_earlier = loss(_sample(earlier, limit, rng)) if earlier else None
        loss_new = loss(new.block(i) for i in range(min(limit, len(new.ids))))
    return loss_earlier, loss_new


@contextlib.contextmanager
def _eval_model(path: Path, *, use_gpu: bool) -> Iterator[tuple[Any, Any]]:
    """The checkpoint's model in eval mode on the training device; freed on exit."""
    import torch
    from transformers import AutoModelForCausalLM

    device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).to(device).eval()
    try:
        yield model, device
    finally:
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _mean_loss(model: Any, device: Any, blocks: Iterable[np.ndarray], *, batch_size: int, seq_len: int) -> float | None:
    """Mean token loss over `blocks`, cut into sequences of `seq_len`, `batch_size` blocks at a time."""
    import torch

    total, count, batch = 0.0, 0, []

    def flush() -> None:
        nonlocal total, count
        seqs = torch.from_numpy(np.stack(batch).astype(np.int64)).reshape(-1, seq_len).to(device)
        total += float(model(input_ids=seqs, labels=seqs).loss) * seqs.shape[0]
        count += seqs.shape[0]
        batch.clear()

    with torch.no_grad():
        for block in blocks:
            batch.append(block)
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
    return total / count if count else None
