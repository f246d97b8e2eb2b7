"""Which model and tokenizer a run trains: the embedded default, a local directory, or a hub id.

    None / 'overseer-tiny'       the embedded default: built from its catalogue config, random init,
                                 byte-level tokenizer; nothing is downloaded
    a directory with weights     AutoModelForCausalLM.from_pretrained (safetensors, no remote code)
    a directory, config only     built from config.json with random weights, and the log says so
    a hub id                     from_pretrained (needs the network once, then the HF cache)

The config is resolved by `overseer_plan.models.resolve_model_config` when that module is present
(catalogue names, local dirs, config.json files, hub ids), else by the small fallback below.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from overseer_plan.errors import UserInputError
from trainer.tokenizer import ByteTokenizer, load_tokenizer

DEFAULT_MODEL = "overseer-tiny"
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    name: str
    from_scratch: bool
    notes: list[str] = field(default_factory=list)
    """Things the log must say (e.g. 'no weights: training from scratch')."""

    @property
    def max_positions(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None) or getattr(self.model.config, "n_positions", None)


def resolve_config(name: str) -> Any:
    """A transformers config for `name`. Raises UserInputError for an unknown model."""
    try:
        from overseer_plan.models import resolve_model_config
    except ImportError:
        return _fallback_config(name)
    return resolve_model_config(name)


def _fallback_config(name: str) -> Any:
    from transformers import CONFIG_MAPPING, AutoConfig

    catalogue = Path(__file__).resolve().parent.parent / "overseer_plan" / "catalog" / f"{name}.json"
    if catalogue.is_file():
        cfg = dict(json.loads(catalogue.read_text(encoding="utf-8"))["config"])
        return CONFIG_MAPPING[cfg.pop("model_type")](**cfg)
    p = Path(name).expanduser()
    target = p.parent if p.is_file() and p.name == "config.json" else p
    if p.exists() and not (target / "config.json").is_file():
        raise UserInputError(f"--model {name}: no config.json there")
    try:
        return AutoConfig.from_pretrained(str(target), trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise UserInputError(f"--model {name}: unknown model (not in the catalogue, not a local directory, "
                             f"not reachable on the hub: {str(e).splitlines()[0][:120]})") from None


def _model_dir(name: str) -> Path | None:
    p = Path(name).expanduser()
    if p.is_file() and p.name == "config.json":
        return p.parent
    return p if p.is_dir() else None


def load_model(name: str | None, *, attention: str = "sdpa", seed: int = 42) -> LoadedModel:
    """The model and tokenizer to train. Raises UserInputError for unknown models or missing tokenizers."""
    import torch
    from transformers import AutoModelForCausalLM

    from overseer_plan.models import attention_for

    name = name or DEFAULT_MODEL
    config = resolve_config(name)
    config.use_cache = False  # no KV cache in training: it only costs memory
    local = _model_dir(name)
    attention, attention_note = attention_for(config, attention)
    notes: list[str] = []
    has_weights = local is not None and any((local / f).is_file() for f in _WEIGHT_FILES)
    if has_weights:
        model = _from_local_weights(name, local, config, attention)
    elif local is None and name != DEFAULT_MODEL and not _in_catalogue(name):
        model = _from_hub(name, config, attention)
    else:
        torch.manual_seed(seed)  # same seed, same initial weights
        try:
            model = AutoModelForCausalLM.from_config(config, attn_implementation=attention, trust_remote_code=False)
        except Exception:
            _raise_if_bad_config(name, config)  # e.g. a negative size in config.json; else a real failure
            raise
        where = f"in {local}" if local else f"for catalogue model {name}"
        notes.append(f"no weights {where}: training from scratch (random initialisation)")
    tokenizer = _tokenizer_for(name, local, config, notes)
    from_scratch = any(n.startswith("no weights") for n in notes)
    if attention_note:
        notes.append(attention_note)
    return LoadedModel(model, tokenizer, name, from_scratch=from_scratch, notes=notes)


def _from_local_weights(name: str, local: Path, config: Any, attention: str) -> Any:
    """from_pretrained on a local directory; a corrupt, foreign or unbuildable one is a one-line error."""
    import torch
    from transformers import AutoModelForCausalLM

    weights = next(local / f for f in _WEIGHT_FILES if (local / f).is_file())
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            str(local), config=config, trust_remote_code=False, attn_implementation=attention, dtype=torch.float32,
            output_loading_info=True)
    except MemoryError:
        raise
    except Exception as e:  # a truncated or foreign file raises many types (SafetensorError, UnpicklingError, ...)
        _raise_if_bad_config(name, config)
        raise UserInputError(f"--model {name}: cannot read {weights} ({_first_line(e)}); replace the file, or "
                             "remove the weight files to train from scratch") from None
    mismatched = {k[0] if isinstance(k, (tuple, list)) else k for k in info.get("mismatched_keys", ())}
    if not set(model.state_dict()) - set(info.get("missing_keys", ())) - mismatched:
        # Training would start from random weights while the log says "pretrained".
        raise UserInputError(f"--model {name}: no weight in {weights} fits its config.json ({config.model_type}); "
                             "the weights belong to another model: use the config.json they came with")
    return model


def _raise_if_bad_config(name: str, config: Any) -> None:
    """After a failed load: a UserInputError when the config alone cannot build a model.

    Built on the meta device, which allocates nothing, so an out-of-memory is not taken for a bad config.
    """
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except Exception as e:  # whatever the constructor raises, the config is what is wrong
        raise UserInputError(f"--model {name}: its config cannot build a model ({_first_line(e)}); fix "
                             "config.json") from None


def _first_line(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0][:160]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _in_catalogue(name: str) -> bool:
    return (Path(__file__).resolve().parent.parent / "overseer_plan" / "catalog" / f"{name}.json").is_file()


def _from_hub(name: str, config: Any, attention: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    from overseer_plan import hub

    online = hub.reachable()
    try:
        return AutoModelForCausalLM.from_pretrained(name, config=config, trust_remote_code=False,
                                                    attn_implementation=attention, dtype=torch.float32,
                                                    local_files_only=not online)
    except OSError as e:
        why = "" if online else f"; the Hub was not asked ({hub.unreachable_reason()})"
        raise UserInputError(f"--model {name}: cannot load its weights ({str(e).splitlines()[0][:160]}){why}") from None


def _tokenizer_hub_id(name: str) -> str:
    """Where a catalogue model's tokenizer lives on the Hub (its entry's source), else `name` itself."""
    from overseer_plan.models import list_catalogue

    entry = next((e for e in list_catalogue() if e.name == name), None)
    return (entry.hub_id() if entry is not None else None) or name


def _tokenizer_for(name: str, local: Path | None, config: Any, notes: list[str]) -> Any:
    if name == DEFAULT_MODEL:
        return ByteTokenizer(vocab_size=config.vocab_size)
    try:
        return load_tokenizer(local if local is not None else _tokenizer_hub_id(name))
    except FileNotFoundError as e:
        if config.vocab_size >= 260:
            notes.append(f"{e}: using the byte-level tokenizer (ids 4..259)")
            return ByteTokenizer(vocab_size=config.vocab_size)
        raise UserInputError(f"--model {name}: {e}; put tokenizer files next to config.json") from None
