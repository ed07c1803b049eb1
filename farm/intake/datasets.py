"""Reading a training job's dataset (issue 14) from where it lives: a directory, an S3 prefix or
a farm batch; the layouts and the manifest are ``farm.jobs.datasets``'s. Every image is read and
checked here (``farm.intake.images.InputReader``); nothing is stored until every example passed."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from farm.errors import InputError, NotFound
from farm.intake.images import InputReader
from farm.jobs.datasets import MAX_EXAMPLES, METADATA_FILE, Dataset, caption_pairs, manifest_key, verified_manifest
from farm.jobs.values import is_sha256


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
    return [(str(folder / name), caption) for name, caption in caption_pairs(names, read_text, source)]


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

    return [(f"s3://{parsed.netloc}/{prefix}{name}", caption) for name, caption in caption_pairs(names, read_text, source)]


def _uploaded(source: str, reader: InputReader) -> Dataset:
    """A dataset uploaded before (``dataset:<sha256>`` of its manifest): its images are stored
    already; a remote tenant names only its own uploads."""
    sha256 = source[len("dataset:"):].strip()
    if not is_sha256(sha256):
        raise InputError("data", "expected dataset:<sha256> as an upload returned it")
    if reader.policy.remote and not reader.ledger("data", f"no dataset {sha256[:12]}").tenant_has_input(
            reader.policy.tenant, sha256):
        raise InputError("data", f"no dataset {sha256[:12]}")
    if reader.store_url is None:
        raise InputError("data", "uploaded datasets need the farm's store")
    from farm.storage import open_store

    try:
        data = open_store(reader.store_url, s3_endpoint_url=reader.s3_endpoint_url).get(manifest_key(sha256))
    except NotFound:
        raise InputError("data", f"no dataset {sha256[:12]}") from None
    return Dataset(source, verified_manifest(sha256, data), {})


def _batch(source: str, reader: InputReader) -> list[tuple[str, str]]:
    refs = reader.batch_sources(source[len("batch:"):])
    return [(ref, reader.job("data", int(ref[len("job:"):])).spec.prompt) for ref in refs]


def read_dataset(source: object, reader: InputReader) -> Dataset:
    """Read and check every example of ``source``; nothing is stored here."""
    if not isinstance(source, str) or not source.strip():
        raise InputError("data", "expected a directory, s3://BUCKET/PREFIX or batch:ID")
    source = source.strip()
    reader.policy.check_dataset(source)
    if source.startswith("dataset:"):
        return _uploaded(source, reader)
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
