"""Textual-inversion embeddings, pure but for reading a file's header: which embeddings a prompt
uses, how the worker spells them for the tokenizer, and whether a file fits an arch.

A1111 shares an embedding as one ``.safetensors`` file: for SD1.5 one tensor (``emb_params``, or
``string_to_param.*`` in a converted ``.pt``) of shape [n_vectors, 768]; for SDXL ``clip_l``
[n, 768] and ``clip_g`` [n, 1280], one per text encoder. A prompt uses it by a word, its token
(A1111: the file's name). Words are matched as A1111's tokenizer sees them: case-insensitively,
not inside a longer word, the longest token first where two start at the same place.

The worker loads each embedding into the tokenizers under a private token (``<ti-NAME-HASH>``)
and respells the prompts with it, so a loaded embedding never changes how a prompt that does not
use it is tokenized, whatever the pipeline loaded before.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping

from farm.errors import InputError
from farm.models.catalog import EmbeddingEntry
from farm.models.layers import encoder_widths
from farm.models.weights import read_header, sha256_file

TOKEN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_VECTORS = 75  # one CLIP window (77 less the start and end tokens)
FLOATS = ("F32", "F16", "BF16", "F64")
XL_KEYS = ("clip_l", "clip_g")  # A1111's SDXL layout, in text-encoder order


@dataclass(frozen=True)
class EmbeddingFile:
    path: str
    vectors: int
    sha256: str


def check_token(token: object) -> str:
    if not isinstance(token, str) or not TOKEN_RE.match(token):
        raise InputError("token", f"{token!r} is not a valid token (a word: letters, digits, '.', '_', '-'; "
                                  "at most 64)")
    return token


def _pattern(tokens) -> re.Pattern | None:
    ordered = sorted({t.lower() for t in tokens}, key=len, reverse=True)
    if not ordered:
        return None
    return re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(map(re.escape, ordered)) + r")(?![A-Za-z0-9_])", re.IGNORECASE)


def tokens_in(text: str, tokens) -> list[str]:
    """The tokens (lower case) ``text`` uses, in order, each once."""
    pattern = _pattern(tokens)
    if pattern is None or not text:
        return []
    return list(dict.fromkeys(m.group(1).lower() for m in pattern.finditer(text)))


def respell(text: str, spelling: Mapping[str, str]) -> str:
    """``text`` with each token of ``spelling`` (lower case -> replacement) replaced where it is a word."""
    pattern = _pattern(spelling)
    if pattern is None or not text:
        return text
    return pattern.sub(lambda m: spelling[m.group(1).lower()], text)


def used_embeddings(texts: list[str], embeddings: Mapping[str, EmbeddingEntry],
                    arch: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(names of the embeddings of ``arch`` the texts use, sorted; warnings): a token whose only
    embeddings are for another arch is read as plain words, with a warning."""
    by_token: dict[str, list[EmbeddingEntry]] = {}
    for entry in embeddings.values():
        by_token.setdefault(entry.token.lower(), []).append(entry)
    names: set[str] = set()
    warnings = []
    for token in dict.fromkeys(t for text in texts for t in tokens_in(text, by_token)):
        fitting = [e for e in by_token[token] if e.arch == arch]
        if fitting:
            names.add(fitting[0].name)  # tokens are unique per arch (checked at add)
        else:
            others = ", ".join(sorted(f"{e.name} ({e.arch})" for e in by_token[token]))
            warnings.append(f"{token!r} names embeddings for other models only ({others}); read as plain words")
    return tuple(sorted(names)), tuple(warnings)


def private_token(entry: EmbeddingEntry) -> str:
    """The token the worker loads ``entry`` under: its name and file hash, so a file registered
    again under the same name loads afresh."""
    return f"<ti-{entry.name}-{(entry.sha256 or 'nohash')[:12]}>"


def _refuse(path, what: str) -> InputError:
    return InputError("source", f"{os.fspath(path)}: {what}")


def _vectors(path, key: str, shape: tuple[int, ...], width: int, arch: str) -> int:
    if len(shape) not in (1, 2) or not shape[-1]:
        raise _refuse(path, f"{key} has shape {list(shape)}; an embedding is [n_vectors, width]")
    if shape[-1] != width:
        raise _refuse(path, f"its {key} vectors are {shape[-1]} wide; the {arch} text encoder it is for "
                            f"takes {width}: an embedding for another architecture? (--family)")
    vectors = shape[0] if len(shape) == 2 else 1
    if not 1 <= vectors <= MAX_VECTORS:
        raise _refuse(path, f"{key} holds {vectors} vectors; 1..{MAX_VECTORS} fit a prompt")
    return vectors


def inspect_embedding(path: str | os.PathLike, arch: str) -> EmbeddingFile:
    """Read and check an A1111 embedding for ``arch``'s text encoders; ``InputError`` naming the
    file for anything that would not load."""
    header = read_header(path)
    tensors = header.tensors
    for key, info in tensors.items():
        if info.dtype not in FLOATS:
            raise _refuse(path, f"{key} holds {info.dtype} values; embedding vectors are floats")
    widths = list(encoder_widths(arch).values())
    keys = set(tensors)
    if len(widths) == 2:
        if keys != set(XL_KEYS):
            if len(keys) == 1:
                [info] = tensors.values()
                raise _refuse(path, f"a one-encoder embedding ({info.shape[-1]} wide); {arch} embeddings hold "
                                    f"clip_l [n, {widths[0]}] and clip_g [n, {widths[1]}] (an SD1.5 embedding?)")
            raise _refuse(path, f"holds {', '.join(sorted(keys))}; {arch} embeddings hold clip_l and clip_g")
        counts = {_vectors(path, key, tensors[key].shape, width, arch) for key, width in zip(XL_KEYS, widths)}
        if len(counts) != 1:
            raise _refuse(path, "clip_l and clip_g hold different numbers of vectors")
        vectors = counts.pop()
    else:
        if set(XL_KEYS) <= keys:
            raise _refuse(path, f"an SDXL embedding (clip_l, clip_g); {arch} has one text encoder "
                                f"({widths[0]} wide)")
        if len(keys) != 1:
            raise _refuse(path, f"holds {len(keys)} tensors ({', '.join(sorted(keys)[:3])}); an embedding for "
                                f"{arch} holds one, [n, {widths[0]}]")
        [(key, info)] = tensors.items()
        vectors = _vectors(path, key, info.shape, widths[0], arch)
    return EmbeddingFile(str(path), vectors, sha256_file(path))
