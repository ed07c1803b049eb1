"""The registries: models and adapters added with `farm models add` / `farm adapters add`, and
the catalog a submission may name (built-ins plus these)."""

from __future__ import annotations

from dataclasses import fields

from sqlalchemy import select

from farm.catalog import BUILTIN_ADAPTERS, BUILTIN_MODELS, AdapterEntry, ModelEntry
from farm.errors import ConflictError, NotFound
from farm.ledger.models import RegisteredAdapter, RegisteredModel
from farm.ledger.schema import Database
from farm.spec import Catalog


def _entry(cls, row):
    """A catalog entry from its registry row: the same fields, not built in."""
    return cls(**{f.name: getattr(row, f.name) for f in fields(cls) if f.name != "builtin"}, builtin=False)


class Registry(Database):
    def add_model(self, entry: ModelEntry, sha256: str | None = None) -> None:
        self._register(RegisteredModel, "model", entry, sha256)

    def add_adapter(self, entry: AdapterEntry, sha256: str | None = None) -> None:
        self._register(RegisteredAdapter, "adapter", entry, sha256)

    def _register(self, table, what: str, entry, sha256: str | None) -> None:
        """A registry row from an entry: the columns are the entry's fields (less ``builtin``)."""
        values = {k: v for k, v in entry.as_dict().items() if k != "builtin"}
        with self.session() as s:
            if s.get(table, entry.name) is not None:
                raise ConflictError(f"{what} {entry.name} is already registered (remove it first)")
            s.add(table(**{**values, "sha256": sha256, "created_at": self.clock()}))

    def remove_registered(self, what: str, name: str) -> None:
        table = {"model": RegisteredModel, "adapter": RegisteredAdapter}[what]
        with self.session() as s:
            row = s.get(table, name)
            if row is None:
                builtin = name in (BUILTIN_MODELS if what == "model" else BUILTIN_ADAPTERS)
                raise NotFound(f"{name} is a built-in {what} and cannot be removed" if builtin
                               else f"no registered {what} {name!r}")
            s.delete(row)

    def catalog(self) -> Catalog:
        """Built-in models and adapters plus the registered ones."""
        with self.session() as s:
            models = dict(BUILTIN_MODELS)
            for m in s.scalars(select(RegisteredModel)):
                models[m.name] = _entry(ModelEntry, m)
            adapters = dict(BUILTIN_ADAPTERS)
            for a in s.scalars(select(RegisteredAdapter)):
                adapters[a.name] = _entry(AdapterEntry, a)
        return Catalog(models=models, adapters=adapters)
