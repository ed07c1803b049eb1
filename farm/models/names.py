"""Names of things the farm keeps (models, adapters, embeddings, workers, tenants): one rule,
checked everywhere a name comes in. Pure."""

from __future__ import annotations

import re

from farm.errors import InputError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def check_name(field_name: str, value: object) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise InputError(
            field_name,
            f"{value!r} is not a valid name (lowercase letters, digits, '.', '_', '-'; at most 64)",
        )
    return value
