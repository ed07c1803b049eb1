"""Unpacking an uploaded dataset archive (zip or tar) safely: every member must stay inside the
target folder (no absolute paths, ``..``, links or devices), and the count and unpacked size are
bounded, so a crafted archive can neither write elsewhere nor fill the disk."""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from farm.errors import InputError

MAX_MEMBERS = 200_001  # the dataset limit (100,000 examples) in images and captions, and a metadata file
MAX_UNPACKED = 8 << 30


def _safe(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts or "\\" in name:
        raise InputError("data", f"{name!r}: an archive member must stay inside the archive")
    return path


def unpack(handle, target: Path) -> Path:
    """Unpack the archive in ``handle`` (a file object) into ``target``; the folder that holds the
    dataset (the archive's single top folder, if it has one)."""
    head = handle.read(4)
    handle.seek(0)
    members = total = 0
    out = target / "dataset"
    out.mkdir(parents=True, exist_ok=True)

    def admit(size: int) -> None:
        nonlocal members, total
        members += 1
        total += size
        if members > MAX_MEMBERS:
            raise InputError("data", f"the archive has more than {MAX_MEMBERS} members")
        if total > MAX_UNPACKED:
            raise InputError("data", f"the archive unpacks to more than {MAX_UNPACKED} bytes")

    if head.startswith(b"PK"):
        try:
            zipped = zipfile.ZipFile(handle)
        except zipfile.BadZipFile:
            raise InputError("data", "not a readable zip archive") from None
        with zipped:
            for info in zipped.infolist():
                rel = _safe(info.filename)
                if info.is_dir():
                    continue
                admit(info.file_size)
                dest = out.joinpath(*rel.parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zipped.open(info) as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    else:
        try:
            tarred = tarfile.open(fileobj=handle, mode="r:*")
        except tarfile.TarError:
            raise InputError("data", "the upload is neither a zip nor a tar archive") from None
        with tarred:
            for member in tarred:
                rel = _safe(member.name)
                if member.isdir():
                    continue
                if not member.isfile():
                    raise InputError("data", f"{member.name!r}: links and devices are not dataset files")
                admit(member.size)
                dest = out.joinpath(*rel.parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                member_data = tarred.extractfile(member)
                if member_data is None:
                    continue
                with member_data, open(dest, "wb") as dst:
                    shutil.copyfileobj(member_data, dst, 1 << 20)
    entries = [p for p in out.iterdir()]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return out
