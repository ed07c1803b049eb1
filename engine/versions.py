"""The library versions that shape pixels, recorded with every image and compared by replay."""

from __future__ import annotations

PACKAGES = ("torch", "diffusers", "transformers", "peft")


def library_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    versions: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return versions
