"""Model resolution and the exact parameter census (overseer_plan/models.py, _analytic.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from overseer_plan._analytic import model_shape
from overseer_plan.errors import UserInputError
from overseer_plan.models import config_fingerprint, list_catalogue, resolve_model_config

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "estimate"

# Published parameter counts (model cards / HF `num_parameters()`), checked against our census
# so a typo in a shipped config is caught.
PUBLISHED = {
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
    "llama-3.2-1b": 1_235_814_400,
    "llama-3.1-8b": 8_030_261_248,
    "llama-2-7b": 6_738_415_616,
    "qwen2-0.5b": 494_032_768,
    "pythia-160m": 162_322_944,
}

TINY = {
    "gpt2": {"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 4, "vocab_size": 500, "n_positions": 128},
    "llama": {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 160,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 500, "tie_word_embeddings": False},
    "llama-tied": {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 160,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 500, "tie_word_embeddings": True},
    "gpt_neox": {"model_type": "gpt_neox", "num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 256,
                 "num_attention_heads": 4, "vocab_size": 500},
    "qwen2": {"model_type": "qwen2", "num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 160,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 500},
}


def test_every_catalogue_entry_validates_and_has_a_source():
    names = {e.name for e in list_catalogue()}
    assert {"overseer-tiny", "gpt2", "llama-3.2-1b", "qwen2-0.5b", "pythia-160m"} <= names
    for entry in list_catalogue():
        assert "https://" in entry.source
        assert resolve_model_config(entry.name).model_type == entry.config["model_type"]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_catalogue_parameter_counts_match_published(name):
    config = resolve_model_config(name)
    assert model_shape(config, config_fingerprint(config)).num_params == PUBLISHED[name]


@pytest.mark.parametrize("family", sorted(TINY))
def test_census_matches_instantiated_model(family):
    import torch
    import transformers

    config = resolve_model_config(TINY[family])
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    unique = {p.data_ptr(): p.numel() for p in model.parameters()}
    shape = model_shape(config, config_fingerprint(config))
    assert shape.num_params == sum(unique.values())
    assert shape.num_layers == 2


def test_hub_id_of_a_catalogue_entry_resolves_offline():
    assert resolve_model_config("openai-community/gpt2").n_layer == 12


def test_local_dir_and_file_and_config_object():
    from_dir = resolve_model_config(ASSETS / "tiny-gpt2")
    from_file = resolve_model_config(str(ASSETS / "tiny-gpt2" / "config.json"))
    assert from_dir.n_embd == from_file.n_embd == 64
    assert resolve_model_config(from_dir) is from_dir


@pytest.mark.parametrize(
    "ref, words",
    [
        ("no-such-model", "unknown model"),
        (str(ASSETS / "malformed-config.json"), "malformed JSON"),
        (str(ASSETS / "bert-config.json"), "not a causal language model"),
        (str(ASSETS / "missing.json"), "no such file"),
        (str(ASSETS), "no config.json"),
        ({"n_layer": 2}, "no 'model_type'"),
    ],
)
def test_bad_models_are_one_line_user_errors(ref, words):
    with pytest.raises(UserInputError) as err:
        resolve_model_config(ref)
    assert words in str(err.value)
    assert "\n" not in str(err.value)


def test_census_is_cached_on_disk_and_validated(tmp_path, monkeypatch):
    from overseer_plan import _analytic

    monkeypatch.setenv("OVERSEER_CACHE_DIR", str(tmp_path))
    config = resolve_model_config(TINY["llama"])
    fp = config_fingerprint(config)
    monkeypatch.setattr(_analytic, "_SHAPES", {})
    built = model_shape(config, fp)
    files = list((tmp_path / "census").glob("*.json"))
    assert len(files) == 1
    monkeypatch.setattr(_analytic, "_SHAPES", {})
    monkeypatch.setattr(_analytic, "_census", lambda c: pytest.fail("census rebuilt despite the disk cache"))
    assert model_shape(config, fp) == built
    files[0].write_text('{"format": 1, "fingerprint": "x"')  # truncated: ignored, rebuilt
    monkeypatch.setattr(_analytic, "_SHAPES", {})
    assert _analytic._read_census(fp) is None


def _estimate_in_fresh_process(model: str, cache: Path) -> dict:
    """Estimate `model` in a new interpreter; report params and whether transformers/torch got imported."""
    import json
    import os
    import subprocess
    import sys

    code = (
        "import json, sys; from overseer_plan.estimate import estimate; e = estimate(sys.argv[1]); "
        "print(json.dumps({'params': e.model_info.num_params, 'max_pos': e.model_info.max_positions, "
        "'transformers': 'transformers' in sys.modules, 'torch': 'torch' in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", code, model], capture_output=True, text=True, check=True,
                         env={**os.environ, "OVERSEER_CACHE_DIR": str(cache)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_model_resolved_before_needs_no_transformers_in_a_new_process(tmp_path):
    first = _estimate_in_fresh_process("gpt2", tmp_path)
    assert first["transformers"] and first["params"] == PUBLISHED["gpt2"]
    again = _estimate_in_fresh_process("gpt2", tmp_path)
    assert again == {**first, "transformers": False, "torch": False}


def test_an_edited_config_file_is_resolved_again(tmp_path):
    import json

    path = tmp_path / "config.json"
    path.write_text(json.dumps({**TINY["gpt2"], "n_positions": 1024}))
    small = _estimate_in_fresh_process(str(path), tmp_path / "cache")
    assert _estimate_in_fresh_process(str(path), tmp_path / "cache")["transformers"] is False
    path.write_text(json.dumps({**TINY["gpt2"], "n_layer": 3, "n_positions": 2048}))
    bigger = _estimate_in_fresh_process(str(path), tmp_path / "cache")
    assert bigger["transformers"] is True
    assert bigger["params"] > small["params"] and bigger["max_pos"] == 2048


def test_a_corrupt_resolution_index_is_ignored(tmp_path, monkeypatch):
    from overseer_plan import models

    monkeypatch.setenv("OVERSEER_CACHE_DIR", str(tmp_path))
    first = models.resolve("gpt2")
    [index] = (tmp_path / "resolved").glob("*.json")
    index.write_text('{"key": ')
    again = models.resolve("gpt2")
    assert again.fingerprint == first.fingerprint and again._config is not None
    assert models.resolve("gpt2")._config is None  # rewritten, read back lazily


def test_models_without_an_sdpa_path_fall_back_to_eager():
    from overseer_plan.models import attention_for

    bloom = resolve_model_config({"model_type": "bloom", "n_layer": 2, "hidden_size": 64, "n_head": 4,
                                  "vocab_size": 500})
    attention, note = attention_for(bloom, "sdpa")
    assert attention == "eager" and "bloom" in note and "eager" in note
    assert attention_for(bloom, "eager") == ("eager", None)
    assert attention_for(resolve_model_config(TINY["llama"]), "sdpa") == ("sdpa", None)


def test_census_reads_the_norm_type_and_dropout_rates_of_any_family(tmp_path, monkeypatch):
    # Families outside GPT-2/Llama/NeoX: OPT and BioGPT normalise with LayerNorm; BioGPT names its
    # dropout rates hidden_dropout_prob / attention_probs_dropout_prob.
    monkeypatch.setenv("OVERSEER_CACHE_DIR", str(tmp_path))
    small = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128,
             "vocab_size": 500}
    biogpt = resolve_model_config({"model_type": "biogpt", **small, "hidden_dropout_prob": 0.1,
                                   "attention_probs_dropout_prob": 0.2})
    shape = model_shape(biogpt, config_fingerprint(biogpt))
    assert not shape.rms_norm and shape.resid_dropout == 0.1 and shape.attn_dropout == 0.2
    opt = resolve_model_config({"model_type": "opt", **small, "ffn_dim": 128})
    assert not model_shape(opt, config_fingerprint(opt)).rms_norm
    llama = resolve_model_config(TINY["llama"])
    assert model_shape(llama, config_fingerprint(llama)).rms_norm
