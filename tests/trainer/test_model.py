"""Building the model to train (trainer/model.py)."""

from __future__ import annotations

import json


def test_a_model_without_sdpa_trains_with_eager_attention(tmp_path):
    from trainer.model import load_model

    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "bloom", "n_layer": 2, "hidden_size": 64, "n_head": 4, "vocab_size": 512}))
    loaded = load_model(str(tmp_path))
    assert loaded.model.config._attn_implementation == "eager"
    assert any("no SDPA attention" in n for n in loaded.notes)
    assert loaded.from_scratch
