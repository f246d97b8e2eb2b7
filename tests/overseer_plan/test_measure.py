"""The measurement protocol (overseer_plan/_measure.py) runs the settings it is asked for."""

from __future__ import annotations

import pytest

from overseer_plan._measure import measure

TINY = {"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2, "vocab_size": 128, "n_positions": 64}


def test_pure_bf16_with_the_trainers_adafactor():
    got = measure({"config": TINY, "batch_size": 1, "seq_len": 16, "precision": "bf16-pure",
                   "optimizer": "adafactor", "steps": 1})
    assert got["param_dtype"] == "torch.bfloat16"
    assert got["optimizer"] == "Adafactor"
    assert got["peak_delta_bytes"] > 0


def test_autocast_keeps_fp32_weights_and_sgd_is_the_trainers():
    got = measure({"config": TINY, "batch_size": 1, "seq_len": 16, "precision": "bf16", "optimizer": "sgd",
                   "steps": 1})
    assert got["param_dtype"] == "torch.float32"
    assert got["optimizer"] == "SGD"


def test_unknown_precision_fails_the_run():
    with pytest.raises(RuntimeError, match="precision must be"):
        measure({"config": TINY, "batch_size": 1, "seq_len": 16, "precision": "fp8", "steps": 1})
