"""Model resolution: turn what the user typed into a transformers `PretrainedConfig`.

Accepted, in this order: an already-built `PretrainedConfig`; a local directory holding
`config.json` or a path to a config JSON file; a name from the shipped catalogue
(`overseer_plan/catalog/*.json`, also matched by the Hub id in each entry's `source`);
a Hugging Face Hub id, read from the local HF cache first and from the Hub only when
online. Only configs are read: no weights are downloaded or allocated, ever.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from overseer_plan._model import StrictModel
from overseer_plan.errors import UserInputError

if TYPE_CHECKING:
    from transformers import PretrainedConfig

_CATALOG_DIR = Path(__file__).with_name("catalog")


class CatalogueEntry(StrictModel):
    """One shipped model config."""

    name: str
    """Catalogue name, e.g. 'gpt2' or 'llama-3.2-1b'."""
    description: str
    """One line on the architecture."""
    source: str
    """Where the config numbers come from (URL)."""
    config: dict[str, Any]
    """The HF config dict (with model_type)."""

    def hub_id(self) -> str | None:
        """The 'owner/name' Hub id named by `source`, when it is a huggingface.co URL."""
        prefix = "https://huggingface.co/"
        if not self.source.startswith(prefix):
            return None
        parts = self.source[len(prefix):].split("/")
        return "/".join(parts[:2]) if len(parts) >= 2 else None


@lru_cache(maxsize=1)
def _catalogue() -> dict[str, CatalogueEntry]:
    entries = {}
    for path in sorted(_CATALOG_DIR.glob("*.json")):
        entry = CatalogueEntry.model_validate_json(path.read_text(encoding="utf-8"))
        entries[entry.name.lower()] = entry
    return entries


def list_catalogue() -> list[CatalogueEntry]:
    """All shipped model configs, sorted by name."""
    return sorted(_catalogue().values(), key=lambda e: e.name)


@lru_cache(maxsize=1)
def _causal_lm_types() -> frozenset[str]:
    """Model types with an AutoModelForCausalLM class, cached on disk per transformers version.

    Importing transformers' modeling_auto to read this list costs ~1.5 s (it pulls in the
    modeling stack); the list only changes with the transformers version.
    """
    from importlib.metadata import version

    from overseer_plan._io import atomic_write_text, cache_root

    path = cache_root() / f"causal-lm-types-{version('transformers')}.json"
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(cached, list) and all(isinstance(x, str) for x in cached) and cached:
            return frozenset(cached)
    except (OSError, ValueError):
        pass
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    types = sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    try:
        atomic_write_text(path, json.dumps(types))
    except OSError:
        pass  # a read-only cache only costs time
    return frozenset(types)


def attention_for(config: PretrainedConfig, requested: str) -> tuple[str, str | None]:
    """The attention implementation this model can run, and a note when it is not `requested`.

    Some causal LMs have no SDPA path in transformers (Bloom, GPT-J, CodeGen, MPT, Gemma 2 in
    transformers 5): asking for it raises, while `from_config` without a choice quietly takes eager.
    Estimates and training follow that default instead of failing.
    """
    return choose_attention(config.model_type, supports_sdpa(config), requested)


def choose_attention(model_type: str, sdpa_ok: bool, requested: str) -> tuple[str, str | None]:
    """`attention_for` once SDPA support is known (the estimator caches it in its census)."""
    if requested != "sdpa" or sdpa_ok:
        return requested, None
    return "eager", (f"{model_type} has no SDPA attention in transformers; eager attention used "
                     "(it keeps each layer's seq x seq probabilities)")


def supports_sdpa(config: PretrainedConfig) -> bool:
    """Whether the config's causal-LM class has an SDPA attention path."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except (KeyError, ValueError):
        return True  # not ours to judge: transformers will say
    return bool(getattr(model_class, "_supports_sdpa", True))


def _from_dict(data: Any, *, origin: str) -> PretrainedConfig:
    """Build a config from a dict, turning every failure into one UserInputError line."""
    from transformers import AutoConfig

    if not isinstance(data, dict) or "model_type" not in data:
        raise UserInputError(f"{origin}: not a Hugging Face config (no 'model_type' key); pass a model's config.json")
    data = dict(data)
    model_type = data.pop("model_type")
    _check_model_type(model_type, origin)
    _check_finite(data, origin)
    from overseer_plan.trace import quiet_transformers

    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # huggingface_hub before strict dataclasses (transformers 4): nothing more to catch
        StrictDataclassError = ValueError  # type: ignore[misc,assignment]
    try:
        with quiet_transformers():  # its warnings about the values would break the one-line error below
            config = AutoConfig.for_model(model_type, **data)
    except (ValueError, KeyError, TypeError, StrictDataclassError) as e:
        # transformers 5 type-checks fields ("Validation error for field 'n_layer':\n TypeError: ...").
        why = " ".join(str(e).split()) or type(e).__name__
        raise UserInputError(f"{origin}: cannot build a config for model_type {model_type!r} ({why})") from None
    _check_sizes(config, origin)
    return config


# The sizes every causal LM has under its standard name (config.attribute_map maps gpt2's n_embd
# etc. onto them). A zero or negative one builds a config but crashes model construction later.
_SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
          "vocab_size", "max_position_embeddings", "head_dim")


def _check_model_type(model_type: Any, origin: str) -> None:
    """An unknown model_type names a few close matches, not transformers' list of all ~400."""
    import difflib
    from importlib.metadata import version

    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if isinstance(model_type, str) and model_type in CONFIG_MAPPING_NAMES:
        return
    close = difflib.get_close_matches(str(model_type), sorted(_causal_lm_types()), n=3)
    hint = f" (close: {', '.join(close)})" if close else ""
    raise UserInputError(
        f"{origin}: unknown model_type {model_type!r}{hint}; check its spelling in config.json, or upgrade "
        f"transformers ({version('transformers')} installed) if the model is newer"
    )


def _check_finite(data: dict[str, Any], origin: str, prefix: str = "") -> None:
    """No NaN or infinity anywhere (JSON from Python may hold them); nested dicts such as rope_scaling too."""
    for key, value in data.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UserInputError(f"{origin}: {prefix}{key} must be a finite number (got {value}); fix config.json")
        if isinstance(value, dict):
            _check_finite(value, origin, prefix=f"{prefix}{key}.")


def _check_sizes(config: PretrainedConfig, origin: str) -> None:
    user_key = dict(getattr(config, "attribute_map", {}))  # standard name -> the one config.json uses
    for name in _SIZES:
        value = getattr(config, name, None)
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]  # a few models size each layer
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
            key = user_key.get(name, name)
            raise UserInputError(f"{origin}: {key} must be a positive integer (got {value!r}); fix config.json")


# Encoder families that transformers also registers under AutoModelForCausalLM, but only as the
# decoder half of an encoder-decoder (their causal classes demand `is_decoder=True`).
_ENCODER_TYPES = frozenset({
    "bert", "roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "electra", "ernie", "data2vec-text",
    "bert-generation", "roformer", "megatron-bert", "rembert", "big_bird", "xmod", "qdqbert",
})


def _check_causal_lm(config: PretrainedConfig, origin: str) -> PretrainedConfig:
    model_type = getattr(config, "model_type", None)
    archs = getattr(config, "architectures", None) or []
    causal_arch = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    encoder_only = model_type in _ENCODER_TYPES and not getattr(config, "is_decoder", False)
    if model_type not in _causal_lm_types() or encoder_only or (archs and not causal_arch):
        raise UserInputError(
            f"{origin}: model_type {model_type!r} is not a causal language model "
            "(no AutoModelForCausalLM class); pick a decoder LM such as gpt2, llama, qwen2 or gpt_neox"
        )
    return config


def _read_json_file(path: Path) -> PretrainedConfig:
    from overseer_plan._io import read_user_text

    text = read_user_text(path, what=str(path), hint="point --model at a model directory or its config.json")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserInputError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}; fix or re-download config.json") from None
    if isinstance(data, dict) and isinstance(data.get("config"), dict) and "model_type" not in data:
        data = data["config"]  # a catalogue-format file
    return _from_dict(data, origin=str(path))


def _from_hub(name: str) -> PretrainedConfig:
    """Hub id: local HF cache first (works offline), then the Hub when online."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError, KeyError):
        pass
    from overseer_plan import hub

    known = ", ".join(e.name for e in list_catalogue())
    if "/" in name and hub.reachable():
        try:
            return AutoConfig.from_pretrained(name)
        except (OSError, ValueError, KeyError):
            where = "not on the Hub"
    elif "/" in name:
        where = f"the Hub was not asked: {hub.unreachable_reason()}"
    else:
        where = "a Hub id has the form owner/name"
    raise UserInputError(
        f"unknown model {name!r}: not a local path, not in the catalogue ({known}), and its config is not in "
        f"the local Hugging Face cache ({where}); pass a config.json path or a catalogue name"
    )


_RESOLVED: dict[tuple[str, int], PretrainedConfig] = {}


def resolve_model_config(name_or_path: Any) -> PretrainedConfig:
    """Like `_resolve_model_config`, memoised per name/path (and the file's mtime) within a process."""
    if isinstance(name_or_path, (str, Path)):
        text = str(name_or_path).strip()
        try:
            target = Path(text).expanduser()
            stamp = (target / "config.json" if target.is_dir() else target).stat().st_mtime_ns
        except OSError:
            stamp = 0
        key = (text, stamp)
        if key not in _RESOLVED:
            _RESOLVED[key] = _resolve_model_config(name_or_path)
        return _RESOLVED[key]
    return _resolve_model_config(name_or_path)


def _resolve_model_config(name_or_path: Any) -> PretrainedConfig:
    """Resolve a model reference to a causal-LM `PretrainedConfig` (config only, no weights).

    Args:
        name_or_path: a `PretrainedConfig`, a directory with config.json, a config JSON path,
            a catalogue name (see `list_catalogue()`), or a Hugging Face Hub id.

    Raises:
        UserInputError: unknown name, unreadable or malformed config, or a model type that is
            not a causal LM.
    """
    from transformers import PretrainedConfig

    if isinstance(name_or_path, PretrainedConfig):
        return _check_causal_lm(name_or_path, "config")
    if isinstance(name_or_path, dict):
        return _check_causal_lm(_from_dict(name_or_path, origin="config dict"), "config dict")
    text = str(name_or_path).strip()
    if not text:
        raise UserInputError("model: empty name; pass a catalogue name, a config.json path or a Hub id")
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserInputError(f"{path}: directory has no config.json; point --model at a model directory or a config file")
        return _check_causal_lm(_read_json_file(path / "config.json"), str(path / "config.json"))
    if path.is_file():
        return _check_causal_lm(_read_json_file(path), str(path))
    if text.endswith(".json"):
        raise UserInputError(f"{text}: no such file; check the path to config.json")
    entry = _catalogue().get(text.lower()) or next(
        (e for e in _catalogue().values() if (e.hub_id() or "").lower() == text.lower()), None
    )
    if entry is not None:
        return _check_causal_lm(_from_dict(entry.config, origin=f"catalogue entry {entry.name!r}"), entry.name)
    return _check_causal_lm(_from_hub(text), text)


def config_fingerprint(config: PretrainedConfig) -> str:
    """A stable key for caching per-config results (model_type + the full config dict)."""
    data = config.to_dict()
    for volatile in ("transformers_version", "_name_or_path", "_attn_implementation_autoset", "dtype", "torch_dtype"):
        data.pop(volatile, None)
    return json.dumps(data, sort_keys=True, default=str)


class ResolvedModel:
    """A model reference resolved far enough to key caches; the transformers config is built on demand.

    Building a `PretrainedConfig` imports transformers' configuration machinery (~1.5 s in a
    fresh process). Everything the planner's arithmetic needs is cached per config fingerprint
    (`_analytic.model_shape`), so a reference that was resolved before on this machine, with
    the same file contents and transformers version, need not build one again.
    """

    def __init__(self, name: str, fingerprint: str, model_type: str, source: Any,
                 config: PretrainedConfig | None = None) -> None:
        self.name = name
        self.fingerprint = fingerprint
        self.model_type = model_type
        self._source = source
        self._config = config

    @property
    def config(self) -> PretrainedConfig:
        if self._config is None:
            self._config = resolve_model_config(self._source)
        return self._config


def _reference_key(text: str) -> str | None:
    """What a local path or catalogue name resolves to depends on, without importing transformers.

    None for Hub ids: whether their config is in the HF cache, or changed there, is the hub
    library's business, so they always take the full path.
    """
    from importlib.metadata import version

    path = Path(text).expanduser()
    try:
        target = path / "config.json" if path.is_dir() else path
        if target.is_file():
            st = target.stat()
            stamp = f"file:{target.resolve()}:{st.st_mtime_ns}:{st.st_size}"
        else:
            entry = _catalogue().get(text.lower())
            if entry is None:
                return None
            stamp = f"catalogue:{entry.name}:{json.dumps(entry.config, sort_keys=True)}"
    except OSError:
        return None
    # The checks' version: configs indexed before _check_sizes existed must be built (and checked) again.
    return f"{stamp}\0transformers={version('transformers')}\0checks=2"


def _index_path(key: str) -> Path:
    import hashlib

    from overseer_plan._io import cache_root

    return cache_root() / "resolved" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"


def resolve(name_or_path: Any) -> ResolvedModel:
    """Resolve a model reference (anything `resolve_model_config` takes) to a `ResolvedModel`.

    Local files and catalogue names that resolved before are read back from a small index in
    Overseer's cache dir (keyed by path, mtime, size or the entry's contents, and the
    transformers version) without building the config; anything else resolves fully.
    """
    if isinstance(name_or_path, (str, Path)):
        text = str(name_or_path).strip()
        key = _reference_key(text) if text else None
        if key is not None:
            try:
                data = json.loads(_index_path(key).read_text(encoding="utf-8"))
                if data.get("key") == key:
                    return ResolvedModel(str(data["name"]), str(data["fingerprint"]), str(data["model_type"]), text)
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                pass
        config = resolve_model_config(name_or_path)
        got = ResolvedModel(text, config_fingerprint(config), str(config.model_type), text, config)
        if key is not None:
            from overseer_plan._io import atomic_write_text

            record = {"key": key, "name": got.name, "fingerprint": got.fingerprint, "model_type": got.model_type}
            try:
                atomic_write_text(_index_path(key), json.dumps(record))
            except OSError:
                pass  # a read-only cache only costs time
        return got
    config = resolve_model_config(name_or_path)
    name = getattr(config, "name_or_path", "") or "config"
    return ResolvedModel(name, config_fingerprint(config), str(config.model_type), name_or_path, config)
