"""Prompt text -> umT5 embeddings: the checkpoint's tokenizer and a per-prompt cache.

Tokenizers come from maintained libraries, imported only when used: ``tokenizers`` for a
``tokenizer.json`` (exactly what transformers' fast tokenizer runs: the file's normaliser,
pre-tokeniser, model and ``</s>`` post-processor) and ``sentencepiece`` for a bare
``spiece.model`` (its pieces plus ``</s>``, as transformers' slow ``T5Tokenizer``).

Text is cleaned as Wan's ``HuggingfaceTokenizer(clean="whitespace")``: HTML entities unescaped
(twice) and runs of whitespace collapsed. (Wan also runs ``ftfy.fix_text``, which repairs
mis-decoded "mojibake" text; it is not applied here, so such text tokenises as written.)
Sequences are padded on the right to ``max_length`` and longer prompts are truncated keeping the
final ``</s>``, as the reference does; a truncation is logged with the prompt's token count.
"""

from __future__ import annotations

import collections
import functools
import html
import logging
import os
import re
import weakref
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mirage_jax.errors import FileFormatError, InputError, file_error
from mirage_jax.models.umt5.model import UMT5Encoder

__all__ = ["UMT5Tokenizer", "load_tokenizer", "clean_prompt", "encode_prompts", "PromptCache"]

log = logging.getLogger(__name__)


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning without ftfy: HTML unescape twice, whitespace runs -> one space."""
    if not isinstance(text, str):
        raise InputError(f"a prompt must be a str, got {type(text).__name__}")
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip()


class UMT5Tokenizer:
    """``tokenizer(texts, max_length) -> (input_ids, attention_mask)``, both int32 ``[B, max_length]``
    (right padding, ``</s>`` last). Build with :func:`load_tokenizer`."""

    def __init__(self, path: Path, backend, kind: str):
        self.path, self._backend, self.kind = path, backend, kind
        if kind == "tokenizers":
            self.pad_id = backend.token_to_id("<pad>")
            self.eos_id = backend.token_to_id("</s>")
        else:
            self.pad_id, self.eos_id = backend.pad_id(), backend.eos_id()
        for name, value in (("<pad>", self.pad_id), ("</s>", self.eos_id)):
            if value is None or value < 0:
                raise file_error(path, f"the tokenizer has no {name} token, which umT5 prompts need")

    def __repr__(self) -> str:
        return f"UMT5Tokenizer({str(self.path)!r}, {self.kind})"

    def _ids(self, texts: list[str], max_length: int) -> list[list[int]]:
        """Token ids (``</s>`` included) of each cleaned text, before truncation."""
        if self.kind == "tokenizers":
            # Without truncation / padding, then cut here: the same result as the library's own
            # truncation (the post-processor's </s> is kept last), and we see the full length.
            self._backend.no_truncation()
            self._backend.no_padding()
            return [e.ids for e in self._backend.encode_batch(texts)]
        return [ids + [self.eos_id] for ids in self._backend.encode(texts)]

    def __call__(self, texts: Sequence[str], max_length: int = 512) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(texts, str):
            texts = [texts]
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise InputError(f"max_length must be a positive int, got {max_length!r}")
        cleaned = [clean_prompt(t) for t in texts]
        ids = np.full((len(cleaned), max_length), self.pad_id, np.int32)
        mask = np.zeros((len(cleaned), max_length), np.int32)
        for b, seq in enumerate(self._ids(cleaned, max_length)):
            if len(seq) > max_length:
                log.warning("prompt %d has %d tokens; truncated to %d (the reference truncates too)", b, len(seq), max_length)
                seq = seq[: max_length - 1] + [seq[-1]]
            ids[b, : len(seq)] = seq
            mask[b, : len(seq)] = 1
        return ids, mask


@functools.lru_cache(maxsize=4)
def _load(path: str) -> UMT5Tokenizer:
    p = Path(path)
    if p.is_dir():
        for candidate in (p / "tokenizer.json", p / "spiece.model", p / "tokenizer" / "tokenizer.json",
                          p / "tokenizer" / "spiece.model"):
            if candidate.is_file():
                return _load(str(candidate))
        raise file_error(p, "holds neither tokenizer.json nor spiece.model (nor a tokenizer/ folder with one)")
    if not p.is_file():
        raise file_error(p, "no such tokenizer file (expected tokenizer.json or spiece.model)")
    if p.suffix == ".json":
        try:
            from tokenizers import Tokenizer
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(f"{p}: reading tokenizer.json needs the 'tokenizers' package (pip install tokenizers)") from e
        try:
            return UMT5Tokenizer(p, Tokenizer.from_file(str(p)), "tokenizers")
        except Exception as e:  # the library raises its own exception type for malformed files
            if isinstance(e, FileFormatError):
                raise
            raise file_error(p, f"not a valid tokenizer.json ({e})") from e
    if p.suffix == ".model":
        try:
            import sentencepiece
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(f"{p}: reading spiece.model needs the 'sentencepiece' package (pip install sentencepiece)") from e
        try:
            backend = sentencepiece.SentencePieceProcessor(model_file=str(p))
        except (OSError, RuntimeError) as e:
            raise file_error(p, f"not a valid sentencepiece model ({e})") from e
        return UMT5Tokenizer(p, backend, "sentencepiece")
    raise file_error(p, "unknown tokenizer file type (expected tokenizer.json or spiece.model)")


def load_tokenizer(path: str | os.PathLike) -> UMT5Tokenizer:
    """The tokenizer of a checkpoint: a ``tokenizer.json`` or ``spiece.model`` file, or a
    directory holding one (``tokenizer.json`` preferred; a diffusers pipeline's ``tokenizer/``
    folder is found). Loaded tokenizers are reused per path."""
    return _load(str(Path(path).resolve()))


# ------------------------------------------------------------------------------------------------
# Prompt embeddings with a per-prompt cache.
# ------------------------------------------------------------------------------------------------


@nnx.jit
def _encode(encoder: UMT5Encoder, ids: jax.Array, mask: jax.Array) -> jax.Array:
    return encoder(ids, mask)


class PromptCache:
    """An LRU of prompt embeddings keyed by the prompt text (one per encoder, tokenizer and
    ``max_length``). Entries hold only the valid tokens ``[n, d_model]`` on the host, so a cached
    umT5-XXL prompt of 100 tokens costs 1.6 MB, not the 8 MB of 512 padded float32 rows.
    ``hits`` / ``misses`` count lookups."""

    def __init__(self, size: int = 64):
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InputError(f"cache size must be an int >= 0, got {size!r}")
        self.size = size
        self._entries: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, text: str) -> np.ndarray | None:
        if text in self._entries:
            self._entries.move_to_end(text)
            self.hits += 1
            return self._entries[text]
        self.misses += 1
        return None

    def put(self, text: str, value: np.ndarray) -> None:
        if self.size == 0:
            return
        self._entries[text] = value
        self._entries.move_to_end(text)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)


# encoder -> {(tokenizer, max_length): PromptCache}; dropped with the encoder.
_CACHES: "weakref.WeakKeyDictionary[UMT5Encoder, dict]" = weakref.WeakKeyDictionary()


def _cache_for(encoder: UMT5Encoder, tokenizer: UMT5Tokenizer, max_length: int) -> PromptCache:
    return _CACHES.setdefault(encoder, {}).setdefault((tokenizer, max_length), PromptCache())


def encode_prompts(
    texts: Sequence[str] | str,
    tokenizer: UMT5Tokenizer | str | os.PathLike,
    encoder: UMT5Encoder,
    max_length: int = 512,
    *,
    cache: PromptCache | None = None,
) -> jax.Array:
    """Prompt embeddings ``[B, max_length, d_model]`` (the encoder's output dtype), each sample's
    padded tail zero: the text conditioning of the Wan DiT.

    ``tokenizer``: a :class:`UMT5Tokenizer` or a path for :func:`load_tokenizer`. Embeddings
    are cached per prompt text (``cache``, default one LRU of 64 prompts per encoder, tokenizer
    and ``max_length``; the encoder is frozen at inference, so entries never go stale unless its
    weights are changed in place: then pass a fresh ``PromptCache``). Uncached prompts are
    encoded in one jitted call, the batch padded to a power of two to bound recompilations.
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise InputError("encode_prompts needs at least one prompt")
    if not isinstance(tokenizer, UMT5Tokenizer):
        tokenizer = load_tokenizer(tokenizer)
    cache = cache if cache is not None else _cache_for(encoder, tokenizer, max_length)
    found = {t: cache.get(t) for t in dict.fromkeys(texts)}
    missing = [t for t, v in found.items() if v is None]
    if missing:
        ids, mask = tokenizer(missing, max_length)
        rows = 1 << (len(missing) - 1).bit_length()
        pad = rows - len(missing)
        ids = np.concatenate([ids, np.repeat(ids[:1], pad, 0)])
        mask = np.concatenate([mask, np.repeat(mask[:1], pad, 0)])
        out = np.asarray(jax.device_get(_encode(encoder, jnp.asarray(ids), jnp.asarray(mask))))
        for b, t in enumerate(missing):
            found[t] = out[b, : int(mask[b].sum())]
            cache.put(t, found[t])
    d_model = encoder.config.d_model
    batch = np.zeros((len(texts), max_length, d_model), next(iter(found.values())).dtype)
    for b, t in enumerate(texts):
        batch[b, : found[t].shape[0]] = found[t]
    return jnp.asarray(batch)
