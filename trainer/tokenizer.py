"""Tokenizers for training: the embedded byte-level tokenizer, and any HF tokenizer behind one interface.

`ByteTokenizer` needs no download and no vocabulary file: every UTF-8 byte is a token. Its ids
follow the embedded model's config (overseer_plan/catalog/overseer-tiny.json): pad 0, bos 1,
eos 2, unk 3, then byte b at id b + 4 (so ids 4..259). Offsetting the bytes keeps byte 0x02 from
being read as end-of-sequence, the same choice ByT5 made (Xue et al. 2022, "ByT5"). Ids 260..383
are unused, which keeps the vocabulary at 384, a multiple of 128 that matmul kernels like.

It is a real `transformers.PreTrainedTokenizer`, so `save_pretrained` / `ByteTokenizer.from_pretrained`
round-trip with a checkpoint and it works anywhere an HF tokenizer does (`tok("text")`, `decode`).
`AutoTokenizer` cannot find it without remote code; `load_tokenizer(dir)` can.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizer

_SPECIALS = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
_BYTE_OFFSET = len(_SPECIALS)
_MARKER_FILE = "overseer_byte_tokenizer.json"  # its presence in a directory means "a ByteTokenizer lives here"


class ByteTokenizer(PreTrainedTokenizer):
    """Byte-level tokenizer: token = one UTF-8 byte, written as '<0xHH>'."""

    vocab_files_names: dict[str, str] = {}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_size: int = 384, **kwargs: Any):
        if vocab_size < 256 + _BYTE_OFFSET:
            raise ValueError(f"ByteTokenizer needs vocab_size >= {256 + _BYTE_OFFSET}, got {vocab_size}")
        self._vocab_size = vocab_size
        kwargs.setdefault("pad_token", "<pad>")
        kwargs.setdefault("bos_token", "<s>")
        kwargs.setdefault("eos_token", "</s>")
        kwargs.setdefault("unk_token", "<unk>")
        super().__init__(**kwargs)

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def get_vocab(self) -> dict[str, int]:
        vocab = dict(_SPECIALS)
        vocab.update({f"<0x{b:02X}>": b + _BYTE_OFFSET for b in range(256)})
        return vocab

    def _tokenize(self, text: str, **kwargs: Any) -> list[str]:
        return [f"<0x{b:02X}>" for b in text.encode("utf-8")]

    def _convert_token_to_id(self, token: str) -> int:
        if token in _SPECIALS:
            return _SPECIALS[token]
        if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            return int(token[3:5], 16) + _BYTE_OFFSET
        return _SPECIALS["<unk>"]

    def _convert_id_to_token(self, index: int) -> str:
        for tok, i in _SPECIALS.items():
            if i == index:
                return tok
        b = index - _BYTE_OFFSET
        return f"<0x{b:02X}>" if 0 <= b < 256 else "<unk>"

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        raw = bytes(int(t[3:5], 16) for t in tokens if len(t) == 6 and t.startswith("<0x"))
        return raw.decode("utf-8", errors="replace")

    # The fast path the data pipeline uses: no per-byte strings.
    def encode_fast(self, text: str) -> list[int]:
        return [b + _BYTE_OFFSET for b in text.encode("utf-8")]

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str, ...]:
        path = Path(save_directory) / ((filename_prefix + "-" if filename_prefix else "") + _MARKER_FILE)
        path.write_text(json.dumps({"type": "byte", "byte_offset": _BYTE_OFFSET, "specials": _SPECIALS,
                                    "vocab_size": self._vocab_size}, indent=2) + "\n", encoding="utf-8")
        return (str(path),)


@dataclass
class TextEncoder:
    """What the data pipeline needs from a tokenizer, whichever kind it is."""

    tokenizer: Any
    """The tokenizer itself (saved next to every checkpoint)."""
    eos_id: int
    """Separator appended after each document when packing."""
    cache_id: str
    """Identity of the tokenizer for the token cache key (class, vocabulary size, vocabulary hash)."""

    def encode(self, text: str) -> list[int]:
        if isinstance(self.tokenizer, ByteTokenizer):
            return self.tokenizer.encode_fast(text)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @property
    def max_id(self) -> int:
        return max(len(self.tokenizer), getattr(self.tokenizer, "vocab_size", 0)) - 1


def encoder_for(tokenizer: Any) -> TextEncoder:
    """Wrap a ByteTokenizer or an HF tokenizer for the data pipeline."""
    eos = tokenizer.eos_token_id
    if eos is None:  # some tokenizers (e.g. BERT-style) have no eos; fall back to sep, then pad, then 0
        eos = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else (tokenizer.pad_token_id or 0)
    vocab = tokenizer.get_vocab()
    digest = hashlib.sha256(json.dumps(sorted(vocab.items())).encode()).hexdigest()[:16]
    return TextEncoder(tokenizer, int(eos), f"{type(tokenizer).__name__}-{len(vocab)}-{digest}")


def load_tokenizer(source: str | Path | None, *, vocab_size: int = 384) -> Any:
    """The tokenizer in `source` (a directory or hub id), or a ByteTokenizer when `source` is None.

    A directory written by `ByteTokenizer.save_pretrained` loads as a ByteTokenizer without AutoTokenizer.

    Raises:
        FileNotFoundError: `source` has no tokenizer files (callers turn this into a user error).
    """
    if source is None:
        return ByteTokenizer(vocab_size=vocab_size)
    path = Path(source)
    if path.is_dir() and (path / _MARKER_FILE).is_file():
        saved = json.loads((path / _MARKER_FILE).read_text(encoding="utf-8"))
        return ByteTokenizer(vocab_size=int(saved.get("vocab_size", vocab_size)))
    if path.is_dir() and not any((path / f).is_file() for f in _TOKENIZER_FILES):
        raise FileNotFoundError(f"no tokenizer files in {source}")
    tok = _from_pretrained(str(source), local=path.is_dir())
    # transformers 5 can build an empty tokenizer from config.json alone; one that cannot encode text is none.
    if not tok("hello world", add_special_tokens=False)["input_ids"]:
        raise FileNotFoundError(f"the tokenizer in {source} encodes nothing (no vocabulary files)")
    return tok


def _from_pretrained(source: str, *, local: bool) -> Any:
    """AutoTokenizer for a directory, or a Hub id: the local HF cache first, the Hub only when reachable."""
    from transformers import AutoTokenizer

    from overseer_plan import hub

    def load(**kw: Any) -> Any:
        try:
            return AutoTokenizer.from_pretrained(source, trust_remote_code=False, **kw)
        except (OSError, ValueError, TypeError) as e:
            raise FileNotFoundError(f"no usable tokenizer in {source} ({str(e).splitlines()[0][:160]})") from None

    if local:
        return load()
    try:
        return load(local_files_only=True)
    except FileNotFoundError:
        if not hub.reachable():
            raise FileNotFoundError(f"no tokenizer for {source} in the local Hugging Face cache, and the Hub was "
                                    f"not asked ({hub.unreachable_reason()})") from None
    return load()


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model",
                    "spiece.model", "merges.txt")
