"""trainer/tokenizer.py, corpus.py, data.py: byte tokenizer, streaming token cache, deterministic blocks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from overseer_plan.errors import UserInputError
from trainer.corpus import embedded_sources, find_sources, iter_documents
from trainer.data import StepBatchSampler, prepare_data, split_blocks
from trainer.tokenizer import ByteTokenizer, encoder_for, load_tokenizer


def test_byte_tokenizer_round_trips_and_saves(tmp_path):
    tok = ByteTokenizer()
    ids = tok("héllo ✓")["input_ids"]
    assert all(4 <= i < 260 for i in ids) and tok.decode(ids) == "héllo ✓"
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.vocab_size) == (0, 1, 2, 384)
    tok.save_pretrained(tmp_path)
    again = load_tokenizer(tmp_path)
    assert isinstance(again, ByteTokenizer) and again("abc")["input_ids"] == tok("abc")["input_ids"]
    assert encoder_for(tok).encode("abc") == ids[:0] + [101, 102, 103]


def test_embedded_corpus_is_deterministic_and_bounded():
    a, b = embedded_sources(200_000), embedded_sources(200_000)
    assert a == b and 0 < sum(s.path.stat().st_size for s in a) <= 200_000
    assert all(s.path.suffix == ".py" for s in a)


def test_sources_text_markdown_jsonl_and_hidden_files(tmp_path):
    (tmp_path / "a.md").write_text("# title\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "row one"}) + "\n\n" + json.dumps({"text": "row two"}) + "\n")
    (tmp_path / ".hidden.txt").write_text("secret", encoding="utf-8")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    sources = find_sources([str(tmp_path)])
    assert [(s.path.name, s.kind) for s in sources] == [("a.md", "text"), ("b.jsonl", "jsonl")]
    assert list(iter_documents(sources[1])) == ["row one", "row two"]


def test_big_text_files_stream_in_pieces_cut_at_newlines(tmp_path, monkeypatch):
    import trainer.corpus as corpus

    monkeypatch.setattr(corpus, "_PIECE_BYTES", 64)
    f = tmp_path / "big.txt"
    f.write_text("".join(f"line {i}\n" for i in range(100)), encoding="utf-8")
    pieces = list(iter_documents(find_sources([str(f)])[0]))
    assert len(pieces) > 5 and all(p.endswith("\n") for p in pieces) and "".join(pieces) == f.read_text()


def test_token_cache_is_reused_and_keyed_by_content(tmp_path):
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    (data_dir / "a.txt").write_text("abcdefgh" * 100, encoding="utf-8")
    enc = encoder_for(ByteTokenizer())
    one = prepare_data(find_sources([str(data_dir)]), enc, block_len=32, seed=1, eval_fraction=0.1, cache_dir=tmp_path / "c")
    mtime = one.path.stat().st_mtime_ns
    two = prepare_data(find_sources([str(data_dir)]), enc, block_len=32, seed=1, eval_fraction=0.1, cache_dir=tmp_path / "c")
    assert two.path == one.path and two.path.stat().st_mtime_ns == mtime  # not re-tokenised
    assert one.dtype == "uint16" and one.n_tokens == 801  # 800 bytes + eos
    tokens = np.memmap(one.path, dtype=one.dtype, mode="r")
    assert tokens[0] == ord("a") + 4 and tokens[-1] == 2
    (data_dir / "a.txt").write_text("changed" * 100, encoding="utf-8")
    three = prepare_data(find_sources([str(data_dir)]), enc, block_len=32, seed=1, eval_fraction=0.1, cache_dir=tmp_path / "c")
    assert three.path != one.path


def test_too_small_corpus_is_a_user_error(tmp_path):
    (tmp_path / "a.txt").write_text("tiny", encoding="utf-8")
    with pytest.raises(UserInputError, match="too few"):
        prepare_data(find_sources([str(tmp_path)]), encoder_for(ByteTokenizer()), block_len=64, seed=0,
                     eval_fraction=0.1, cache_dir=tmp_path / "c")


def test_split_and_step_order_are_functions_of_seed_and_step():
    train, held = split_blocks(100, 0.1, seed=3)
    assert len(held) == 10 and not set(train) & set(held) and len(train) + len(held) == 100
    s = StepBatchSampler(train, global_batch=8, seed=3, start_step=0, total_steps=30)
    steps = list(s)
    resumed = list(StepBatchSampler(train, global_batch=8, seed=3, start_step=12, total_steps=30))
    assert steps[12:] == resumed
    assert sorted(sum(steps[:12], [])[:90]) == sorted(train.tolist())  # one epoch covers each block once
    ranks = [StepBatchSampler(train, global_batch=8, seed=3, start_step=0, total_steps=1, rank=r, world=2).step_ids(0)
             for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == sorted(steps[0])  # two processes split one global batch exactly
