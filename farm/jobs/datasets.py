"""A training job's dataset (issue 14): captioned images from a directory, an S3 prefix or a batch.

- a directory: ``NAME.png`` (or .jpg/.jpeg/.webp) with a caption in ``NAME.txt`` beside it (the
  layout LoRA trainers use), or a ``metadata.jsonl`` with ``{"file_name": ..., "text": ...}`` rows
  (Hugging Face's imagefolder);
- ``s3://bucket/prefix``: the same layouts under the prefix;
- ``batch:ID``: every succeeded image of a farm batch, its prompt as its caption (a batch the
  teacher rendered with the ``plain`` recipe is a complete dataset).

Every image is read, decoded and checked at submission (``farm.intake``: the render
engine decodes) and stored once by content (``inputs/<sha256>.png``), like a job's input image;
the dataset itself is a manifest (one JSON line per example: image sha256 and caption) stored at
``datasets/<sha256>.jsonl``. Nothing is stored until every example has passed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import PurePosixPath

from farm.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
METADATA_FILE = "metadata.jsonl"
MAX_EXAMPLES = 100_000
MAX_CAPTION_CHARS = 2000
DATASET_PREFIX = "datasets/"


@dataclass(frozen=True)
class Dataset:
    source: str  # as given
    examples: list[tuple[str, str]]  # (image sha256, caption)
    images: dict[str, bytes]  # canonical PNGs by sha256, for the store

    @property
    def manifest(self) -> bytes:
        return "".join(json.dumps({"image": sha, "caption": caption}, sort_keys=True) + "\n"
                       for sha, caption in self.examples).encode()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.manifest).hexdigest()

    @property
    def key(self) -> str:
        return manifest_key(self.sha256)

    @property
    def captions(self) -> list[str]:
        return [caption for _, caption in self.examples]

    def record(self) -> dict:
        """What the training spec records of it."""
        return {"source": self.source, "manifest": self.sha256, "examples": len(self.examples)}


def manifest_key(sha256: str) -> str:
    return f"{DATASET_PREFIX}{sha256}.jsonl"


def parse_manifest(data: bytes) -> list[tuple[str, str]]:
    return [(row["image"], row["caption"]) for row in map(json.loads, data.decode().splitlines()) if row]


def verified_manifest(sha256: str, data: bytes) -> list[tuple[str, str]]:
    """The (image sha256, caption) rows of a stored manifest, checked against the name it is stored by."""
    if hashlib.sha256(data).hexdigest() != sha256:
        raise InputError("data", f"the stored dataset {sha256[:12]} does not match its name")
    return parse_manifest(data)


def _caption(where: str, text: str) -> str:
    caption = " ".join(text.split())
    if not caption:
        raise InputError("data", f"{where}: empty caption")
    if len(caption) > MAX_CAPTION_CHARS:
        raise InputError("data", f"{where}: the caption is {len(caption)} characters; the limit is {MAX_CAPTION_CHARS}")
    return caption


def _metadata(where: str, text: str) -> dict[str, str]:
    """file name -> caption from a metadata.jsonl."""
    captions = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise InputError("data", f"{where}:{number}: not a JSON object") from None
        name = row.get("file_name") if isinstance(row, dict) else None
        text_value = row.get("text", row.get("caption")) if isinstance(row, dict) else None
        if not isinstance(name, str) or not isinstance(text_value, str):
            raise InputError("data", f"{where}:{number}: expected {{\"file_name\": ..., \"text\": ...}}")
        captions[name] = _caption(f"{where}:{number}", text_value)
    return captions


def caption_pairs(names: list[str], read_text, where: str) -> list[tuple[str, str]]:
    """(image name, caption) from a listing of a folder's files; ``read_text(name)`` reads one."""
    present = set(names)
    images = sorted(n for n in names if PurePosixPath(n).suffix.lower() in IMAGE_SUFFIXES)
    if METADATA_FILE in present:
        captions = _metadata(f"{where}/{METADATA_FILE}", read_text(METADATA_FILE))
        missing = [n for n in images if n not in captions]
        listed = [n for n in captions if n not in present]
        if listed:
            raise InputError("data", f"{where}/{METADATA_FILE} names {listed[0]}, which is not there")
        if missing:
            raise InputError("data", f"{where}/{missing[0]}: no caption in {METADATA_FILE}")
        return [(n, captions[n]) for n in images]
    pairs = []
    for name in images:
        caption_file = str(PurePosixPath(name).with_suffix(".txt"))
        if caption_file not in present:
            raise InputError("data", f"{where}/{name}: no caption ({caption_file} is missing)")
        pairs.append((name, _caption(f"{where}/{caption_file}", read_text(caption_file))))
    return pairs
