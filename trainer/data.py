"""Tokenised, packed training data on disk, read back as fixed-length blocks.

1. Tokenise streaming (document by document) into a flat token file: doc + eos, doc + eos, ...
   written with np.ndarray.tofile, so RAM holds one document's tokens at a time, never the corpus.
2. The file is a cache keyed by (content hash of every source, tokenizer identity, block length):
   a second run on the same data skips step 1. Written under a temporary name and renamed, so a
   killed run never leaves a truncated cache behind.
3. Blocks of `block_len` tokens are read from an np.memmap. A seeded permutation holds out
   `eval_fraction` of them for evaluation.
4. Data order is a function of (seed, optimizer step) only: step s takes the global-batch-sized
   slice s of an endless stream of per-epoch permutations. The loader yields one optimizer step's
   full batch at a time, so the order does not depend on the micro-batch size, and resuming at step s
   needs nothing but s.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from overseer_plan.errors import UserInputError
from trainer.corpus import Source, iter_documents
from trainer.tokenizer import TextEncoder

_CACHE_VERSION = 1


@dataclass(frozen=True)
class TokenData:
    """A tokenised corpus cut into blocks, with its train/eval split."""

    path: Path
    """The flat token file (np.memmap-able)."""
    dtype: str
    """'uint16' or 'uint32'."""
    n_tokens: int
    block_len: int
    train_ids: np.ndarray
    """Block indices used for training (ascending)."""
    eval_ids: np.ndarray
    """Held-out block indices (ascending)."""

    @property
    def n_blocks(self) -> int:
        return self.n_tokens // self.block_len


def default_cache_dir() -> Path:
    """tokens/ under Overseer's cache ($OVERSEER_CACHE_DIR, else ~/.cache/overseer)."""
    from overseer_plan._io import cache_root

    return cache_root() / "tokens"


def prepare_data(sources: list[Source], encoder: TextEncoder, *, block_len: int, seed: int,
                 eval_fraction: float, cache_dir: Path | None = None) -> TokenData:
    """Tokenise (or reuse the cache) and split into train and eval blocks.

    Raises:
        UserInputError: the corpus is empty or too small for one training block and one eval block.
    """
    cache_dir = Path(cache_dir or default_cache_dir())
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserInputError(f"token cache {cache_dir}: cannot create it ({e.strerror or e}); set OVERSEER_CACHE_DIR "
                             "to a writable directory") from None
    key = _cache_key(sources, encoder, block_len)
    path, meta = cache_dir / f"{key}.tokens", cache_dir / f"{key}.json"
    if not (path.is_file() and meta.is_file()):
        _tokenise_to_file(sources, encoder, path, meta)
    info = json.loads(meta.read_text(encoding="utf-8"))
    n_blocks = info["n_tokens"] // block_len
    if n_blocks < 2:
        names = ", ".join(str(s.path) for s in sources[:3])
        raise UserInputError(f"the corpus ({names}) has {info['n_tokens']} tokens: too few for two blocks of "
                             f"{block_len}; add data or lower --max-sequence-length")
    train_ids, eval_ids = split_blocks(n_blocks, eval_fraction, seed)
    return TokenData(path, info["dtype"], info["n_tokens"], block_len, train_ids, eval_ids)


def split_blocks(n_blocks: int, eval_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, eval) block ids: a seeded permutation, the first `eval_fraction` (at least 1) held out."""
    perm = np.random.default_rng([seed, 0xE7A1]).permutation(n_blocks)
    n_eval = min(max(1, round(n_blocks * eval_fraction)), n_blocks - 1)
    return np.sort(perm[n_eval:]), np.sort(perm[:n_eval])


def _cache_key(sources: list[Source], encoder: TextEncoder, block_len: int) -> str:
    h = hashlib.sha256(f"v{_CACHE_VERSION}|{encoder.cache_id}|{block_len}".encode())
    for s in sources:
        h.update(f"|{s.kind}:{s.fingerprint()}".encode())
    return h.hexdigest()[:24]


def _tokenise_to_file(sources: list[Source], encoder: TextEncoder, path: Path, meta: Path) -> None:
    dtype = np.uint16 if encoder.max_id < np.iinfo(np.uint16).max else np.uint32
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    n_tokens = 0
    try:
        with open(tmp, "wb") as fh:
            for source in sources:
                for doc in iter_documents(source):
                    ids = encoder.encode(doc)
                    if ids:
                        ids.append(encoder.eos_id)
                        np.asarray(ids, dtype=dtype).tofile(fh)
                        n_tokens += len(ids)
            fh.flush()
            os.fsync(fh.fileno())
        if n_tokens == 0:
            raise UserInputError(f"the corpus is empty: {len(sources)} file(s) with no text "
                                 f"(first: {sources[0].path})")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    from overseer_plan._io import atomic_write_text

    atomic_write_text(meta, json.dumps({"n_tokens": n_tokens, "dtype": np.dtype(dtype).name,
                                        "sources": [str(s.path) for s in sources][:50]}))


class PackedBlocks(torch.utils.data.Dataset):
    """Block i of the token file as an int64 tensor, read with pread (the file opens lazily in each worker).

    Reads, not a memory map: a map of the whole token file takes its size in address space, which
    fails under an address-space limit (RLIMIT_AS, `ulimit -v`) once training has used the rest
    (measured: ENOMEM on a 2 GiB cap). A block is ~1 KiB; the page cache keeps hot blocks in RAM
    without counting against the process.
    """

    def __init__(self, data: TokenData):
        self.path, self.dtype, self.block_len, self.n_tokens = data.path, data.dtype, data.block_len, data.n_tokens
        self._itemsize = np.dtype(self.dtype).itemsize
        self._fd: int | None = None

    def __len__(self) -> int:
        return self.n_tokens // self.block_len

    def __getitem__(self, i: int) -> torch.Tensor:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        nbytes = self.block_len * self._itemsize
        raw = os.pread(self._fd, nbytes, int(i) * nbytes)
        if len(raw) != nbytes:
            raise ValueError(f"token file {self.path} is shorter than its metadata says (block {i}); delete the cache")
        return torch.from_numpy(np.frombuffer(raw, dtype=self.dtype).astype(np.int64))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None}  # workers reopen the file instead of inheriting the descriptor

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields, for each optimizer step from `start_step` to `total_steps`, this process's block ids.

    Step s takes positions [s*G, (s+1)*G) of an endless stream made of one seeded permutation of
    the training blocks per epoch (G = global batch); process `rank` of `world` takes every
    world-th of them, so the processes' shares together are exactly the global batch.
    """

    def __init__(self, train_ids: np.ndarray, *, global_batch: int, seed: int, start_step: int,
                 total_steps: int, rank: int = 0, world: int = 1):
        assert global_batch % world == 0, "the global batch must split evenly over processes"
        self.train_ids, self.global_batch, self.seed = train_ids, global_batch, seed
        self.start_step, self.total_steps, self.rank, self.world = start_step, total_steps, rank, world
        self._perms: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)

    def step_ids(self, step: int) -> list[int]:
        n = len(self.train_ids)
        positions = range(step * self.global_batch + self.rank, (step + 1) * self.global_batch, self.world)
        return [int(self._epoch_perm(p // n)[p % n]) for p in positions]

    def _epoch_perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) >= 2:  # a step spans at most two epochs: keep those, drop older ones
                self._perms.pop(min(self._perms))
            rng = np.random.default_rng([self.seed, epoch])
            self._perms[epoch] = self.train_ids[rng.permutation(len(self.train_ids))]
        return self._perms[epoch]

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.total_steps):
            yield self.step_ids(step)


def train_loader(data: TokenData, *, global_batch: int, seed: int, start_step: int, total_steps: int,
                 num_workers: int, pin_memory: bool, rank: int = 0, world: int = 1) -> torch.utils.data.DataLoader:
    """A DataLoader yielding one optimizer step's [batch, block_len] tensor per iteration."""
    sampler = StepBatchSampler(data.train_ids, global_batch=global_batch, seed=seed, start_step=start_step,
                               total_steps=total_steps, rank=rank, world=world)
    return torch.utils.data.DataLoader(PackedBlocks(data), batch_sampler=sampler, num_workers=num_workers,
                                       pin_memory=pin_memory, collate_fn=torch.stack,
                                       worker_init_fn=_ignore_stop_signals, persistent_workers=False,
                                       prefetch_factor=2 if num_workers else None)


def _ignore_stop_signals(_worker_id: int) -> None:
    # `docker stop`, systemd and `timeout` signal the whole process group. A worker killed by SIGTERM
    # makes torch raise "DataLoader worker is killed" in the main process at any line, even inside
    # checkpoint rotation; so workers ignore SIGTERM/SIGINT, the main process stops gracefully and
    # ends them (they also exit by themselves once the main process is gone).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def eval_batches(data: TokenData, *, batch_size: int, max_batches: int) -> Iterator[torch.Tensor]:
    """The held-out blocks in fixed order, `batch_size` at a time, at most `max_batches` batches."""
    blocks = PackedBlocks(data)
    ids = data.eval_ids[: batch_size * max_batches]
    for i in range(0, len(ids), batch_size):
        yield torch.stack([blocks[j] for j in ids[i:i + batch_size]])


def steps_per_epoch(data: TokenData, global_batch: int) -> int:
    """Optimizer steps in one pass over the training blocks (at least 1)."""
    return max(1, len(data.train_ids) // global_batch)
