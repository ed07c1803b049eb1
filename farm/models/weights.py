"""Weight files as the ecosystem shares them, read without torch: the safetensors header (tensor
names, dtypes, shapes), its metadata, and the hashes other tools link files by.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON (``name ->
{dtype, shape, data_offsets}`` plus an optional ``__metadata__`` of strings), then the tensor
bytes. Reading only the header lets the producer refuse a wrong file at ``add`` (not at render
time on a worker) without loading a gigabyte of weights. Pickle checkpoints (``.ckpt``, ``.pt``,
``.bin``) can run code when loaded and are refused outright.

Hashes, as AUTOMATIC1111's web UI writes them into a PNG's ``parameters``:

- ``Model hash``: the first 10 hex digits of the sha256 of the whole checkpoint file;
- ``Lora hashes``: the first 12 hex digits of the sha256 of the tensor bytes after the header
  (the "addnet" hash: editing a LoRA's metadata does not change it);
- ``TI hashes``: the first 12 hex digits of the sha256 of the whole embedding file.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from farm.errors import InputError

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}
CHUNK = 1 << 20


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class SafetensorsHeader:
    path: str
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    data_start: int = 0  # offset of the first tensor byte (8 + header length)

    def keys(self) -> list[str]:
        return list(self.tensors)


def _refuse(path: str | os.PathLike, what: str) -> InputError:
    return InputError("source", f"{os.fspath(path)}: {what}")


def read_header(path: str | os.PathLike) -> SafetensorsHeader:
    """The header of a ``.safetensors`` file, checked against the file's size; ``InputError``
    naming the file for anything that is not a whole safetensors file (a pickle, a zip, a
    truncated download, a text file)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(9)
            length = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else 0
            # a safetensors file is a length and then its JSON header; its first bytes are the
            # length's, so they can be anything (0x80, "PK"): only a file that is not one by its
            # own structure is told apart as a zip or a pickle
            plausible = head[8:9] == b"{" and length <= MAX_HEADER_BYTES and 8 + length <= size
            if not plausible and head[:4] == b"PK\x03\x04":
                raise _refuse(path, "a zip archive (a PyTorch .ckpt/.pt checkpoint?): only .safetensors files "
                                    "are loaded, since pickles can run code; convert it to safetensors first")
            if not plausible and head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
                raise _refuse(path, "a Python pickle: only .safetensors files are loaded, since pickles can run "
                                    "code; convert it to safetensors first")
            if len(head) < 8:
                raise _refuse(path, f"not a safetensors file ({size} bytes)")
            if length > MAX_HEADER_BYTES or 8 + length > size:
                raise _refuse(path, "not a safetensors file (its header length does not fit the file: "
                                    "truncated, or another format)")
            handle.seek(8)
            raw = handle.read(length)
    except OSError as exc:
        raise _refuse(path, exc.strerror or str(exc)) from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise _refuse(path, "not a safetensors file (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise _refuse(path, "not a safetensors file (its header is not a JSON object)")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise _refuse(path, "not a safetensors file (__metadata__ is not an object)")
    data_start, data_size = 8 + length, size - 8 - length
    tensors: dict[str, TensorInfo] = {}
    end = 0
    for name, entry in header.items():
        try:
            dtype, shape, (begin, stop) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise _refuse(path, f"not a safetensors file (bad entry for tensor {name!r})") from None
        count = 1
        for d in shape:
            count *= d
        width = DTYPE_BYTES.get(dtype)
        if width is None or not 0 <= begin <= stop or stop - begin != count * width:
            raise _refuse(path, f"not a safetensors file (tensor {name!r} does not match its dtype and shape)")
        end = max(end, stop)
        tensors[name] = TensorInfo(dtype, shape)
    if end > data_size:
        raise _refuse(path, f"truncated: its tensors need {end} bytes of data, the file has {data_size}")
    if not tensors:
        raise _refuse(path, "a safetensors file with no tensors")
    return SafetensorsHeader(str(path), tensors, {str(k): str(v) for k, v in metadata.items()}, data_start)


def sha256_file(path: str | os.PathLike, start: int = 0) -> str:
    """sha256 of a file's bytes from ``start`` on, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(start)
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def addnet_sha256(path: str | os.PathLike) -> str:
    """sha256 of a safetensors file's tensor bytes (after the header): the LoRA hash A1111 uses."""
    return sha256_file(path, start=read_header(path).data_start)


def addnet_sha256_of(data: bytes) -> str:
    """``addnet_sha256`` of a safetensors file held in memory (a LoRA just trained)."""
    (length,) = struct.unpack("<Q", data[:8])
    return hashlib.sha256(data[8 + length:]).hexdigest()


def a1111_model_hash(file_sha256: str) -> str:
    return file_sha256[:10]


def a1111_short_hash(sha256: str) -> str:
    """LoRA (of the addnet sha256) and embedding (of the file sha256) short hashes."""
    return sha256[:12]


def read_diffusers_config(path: Path, class_name: str, what: str, *, class_required: bool = True) -> dict:
    """A diffusers directory's config.json, refused in one line when it is missing, unreadable or
    of another class (``class_required`` False: a config without ``_class_name`` passes)."""
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except FileNotFoundError:
        raise InputError("source", f"{path}: no config.json (a diffusers {what} directory has one)") from None
    except (OSError, ValueError) as exc:
        raise InputError("source", f"{config_file}: unreadable ({exc})") from None
    found = config.get("_class_name")
    if found != class_name and (class_required or found is not None):
        raise InputError("source", f"{path}: a {found}, not a {class_name}")
    return config

