"""The schema's head revision read from the migration files (no Alembic, no SQLAlchemy): what
every CLI command compares the ledger's stamp with at start."""

from __future__ import annotations

import re
from pathlib import Path

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
_REVISION = re.compile(r"""^(down_revision|revision)\s*=\s*['"]?([\w]+)['"]?""", re.MULTILINE)


def head_from_files() -> str | None:
    """The head revision read from the migration files' ``revision`` lines, without importing
    Alembic (a quarter of a second at every CLI command's start); None if the files do not name
    exactly one head, and Alembic decides."""
    revisions, parents = set(), set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        found = dict(_REVISION.findall(path.read_text()))
        if "revision" not in found:
            return None
        revisions.add(found["revision"])
        parents.add(found.get("down_revision"))
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None
