"""A training job's dataset (issue 14): captioned images from a directory, an S3 prefix or a batch.

- a directory: ``NAME.png`` (or .jpg/.jpeg/.webp) with a caption in ``NAME.txt`` beside it (the
  layout LoRA trainers use), or a ``metadata.jsonl`` with ``{"file_name": ..., "text": ...}`` rows
  (Hugging Face's imagefolder);
- ``s3://bucket/prefix``: the same layouts under the prefix;
- ``batch:ID``: every succeeded image of a farm batch, its prompt as its caption (a batch the
  teacher rendered with the ``plain`` recipe is a complete dataset).

Every image is read, decoded and checked at submission (``farm.inputs.InputReader``: the render
engine decodes) and stored once by content (``inputs/<sha256>.png``), like a job's input image;
the dataset itself is a manifest (one JSON line per example: image sha256 and caption) stored at
``datasets/<sha256>.jsonl``. Nothing is stored until every example has passed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from farm.errors import InputError, NotFound
from farm.inputs import InputReader

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


def _pairs(names: list[str], read_text, where: str) -> list[tuple[str, str]]:
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


def _directory(source: str, reader: InputReader) -> list[tuple[str, str]]:
    folder = Path(source).expanduser()
    folder = folder if folder.is_absolute() else reader.cwd / folder
    if not folder.is_dir():
        raise InputError("data", f"{source}: no such directory")

    def read_text(name: str) -> str:
        try:
            return (folder / name).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise InputError("data", f"{source}/{name}: not UTF-8 text") from None
        except OSError as exc:
            raise InputError("data", f"{source}/{name}: {exc.strerror}") from None

    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    return [(str(folder / name), caption) for name, caption in _pairs(names, read_text, source)]


def _s3_prefix(source: str, reader: InputReader) -> list[tuple[str, str]]:
    from farm.storage.s3 import S3Store

    parsed = urlparse(source)
    if not parsed.netloc:
        raise InputError("data", f"{source}: expected s3://BUCKET/PREFIX")
    prefix = parsed.path.lstrip("/")
    prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
    store = S3Store(f"s3://{parsed.netloc}", endpoint_url=reader.s3_endpoint_url)
    keys = [k[len(prefix):] for k in store.list_keys(prefix)]
    names = [k for k in keys if k and "/" not in k]  # this folder's files, not its subfolders'

    def read_text(name: str) -> str:
        try:
            return store.get_raw(prefix + name).decode("utf-8")
        except NotFound:
            raise InputError("data", f"{source}{name}: no such object") from None
        except UnicodeDecodeError:
            raise InputError("data", f"{source}{name}: not UTF-8 text") from None

    return [(f"s3://{parsed.netloc}/{prefix}{name}", caption) for name, caption in _pairs(names, read_text, source)]


def _batch(source: str, reader: InputReader) -> list[tuple[str, str]]:
    refs = reader.batch_sources(source[len("batch:"):])
    return [(ref, reader.job("data", int(ref[len("job:"):])).spec.prompt) for ref in refs]


def read_dataset(source: object, reader: InputReader) -> Dataset:
    """Read and check every example of ``source``; nothing is stored here."""
    if not isinstance(source, str) or not source.strip():
        raise InputError("data", "expected a directory, s3://BUCKET/PREFIX or batch:ID")
    source = source.strip()
    if source.startswith("batch:"):
        pairs = _batch(source, reader)
    elif source.startswith("s3://"):
        pairs = _s3_prefix(source, reader)
    elif "://" in source:
        raise InputError("data", f"{source}: a dataset is a directory, s3://BUCKET/PREFIX or batch:ID")
    else:
        pairs = _directory(source, reader)
    if not pairs:
        raise InputError("data", f"{source}: no images (.png, .jpg, .webp with a .txt caption or {METADATA_FILE})")
    if len(pairs) > MAX_EXAMPLES:
        raise InputError("data", f"{source}: {len(pairs)} examples; the limit is {MAX_EXAMPLES}")
    examples, images = [], {}
    for ref, caption in pairs:
        image = reader.image("data", ref)
        images[image.sha256] = image.data
        examples.append((image.sha256, caption))
    return Dataset(source, examples, images)
