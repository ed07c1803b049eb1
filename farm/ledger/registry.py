"""The registries: models, adapters and embeddings added with `farm models|adapters|embeddings
add`, and the catalog a submission may name (built-ins plus these)."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any, Mapping

from sqlalchemy import func, select

from farm.errors import ConflictError, InputError, NotFound
from farm.jobs.spec import Catalog
from farm.ledger.models import (
    AcceleratorBinding,
    RegisteredAdapter,
    RegisteredControlNet,
    RegisteredEmbedding,
    RegisteredModel,
    RegisteredMotionAdapter,
)
from farm.ledger.schema import Database
from farm.models.catalog import (
    BUILTIN_ADAPTERS,
    BUILTIN_CONTROLNETS,
    BUILTIN_EMBEDDINGS,
    BUILTIN_MODELS,
    BUILTIN_MOTION_ADAPTERS,
    AdapterEntry,
    ControlNetEntry,
    EmbeddingEntry,
    ModelEntry,
    MotionAdapterEntry,
)

TABLES: dict[str, Any] = {"model": RegisteredModel, "adapter": RegisteredAdapter, "embedding": RegisteredEmbedding,
                          "controlnet": RegisteredControlNet, "motion": RegisteredMotionAdapter}
BUILTINS: dict[str, Mapping[str, object]] = {"model": BUILTIN_MODELS, "adapter": BUILTIN_ADAPTERS,
                                             "embedding": BUILTIN_EMBEDDINGS, "controlnet": BUILTIN_CONTROLNETS,
                                             "motion": BUILTIN_MOTION_ADAPTERS}


ENTRY_TYPES: dict[str, type] = {"model": ModelEntry, "adapter": AdapterEntry, "embedding": EmbeddingEntry,
                                "controlnet": ControlNetEntry, "motion": MotionAdapterEntry}


NOT_COLUMNS = ("builtin", "bindings")  # entry fields a registry row does not hold


def _entry(cls, row):
    """A catalog entry from its registry row: the same fields, not built in."""
    return cls(**{f.name: getattr(row, f.name) for f in fields(cls) if f.name not in NOT_COLUMNS}, builtin=False)


def _file_of(entry) -> str:
    """The file an entry names, as the user gave it (a weight file inside a directory or repo)."""
    weight_name = getattr(entry, "weight_name", None)
    if weight_name and not entry.source.endswith(".safetensors"):
        return f"{entry.source.rstrip('/')}/{weight_name}"
    return entry.source


class Registry(Database):
    def add_model(self, entry: ModelEntry, sha256: str | None = None) -> None:
        self._register("model", entry, sha256)

    def add_adapter(self, entry: AdapterEntry, sha256: str | None = None) -> None:
        self._register("adapter", entry, sha256)

    def add_embedding(self, entry: EmbeddingEntry) -> None:
        self._register("embedding", entry, None)

    def add_controlnet(self, entry: ControlNetEntry) -> None:
        self._register("controlnet", entry, None)

    def add_motion_adapter(self, entry: MotionAdapterEntry) -> None:
        self._register("motion", entry, None)

    def _register(self, what: str, entry, sha256: str | None) -> None:
        """A registry row from an entry: the columns are the entry's fields (less ``builtin``).
        Refused, writing nothing: a name taken, a file registered already under another name (by
        sha256), an embedding token another embedding of the arch has."""
        with self.session() as s:
            self._insert_entry(s, what, entry, sha256)

    def _insert_entry(self, s, what: str, entry, sha256: str | None) -> None:
        """``_register`` inside the caller's session (a training job registers its result in the
        transaction that completes it)."""
        table = TABLES[what]
        values = {k: v for k, v in entry.as_dict().items() if k not in NOT_COLUMNS}
        values["sha256"] = sha256 or values.get("sha256")
        if s.get(table, entry.name) is not None:
            raise ConflictError(f"{what} {entry.name} is already registered (remove it first)")
        if values["sha256"]:
            same = s.scalars(select(table.name).where(table.sha256 == values["sha256"])).first()
            if same is not None:
                raise InputError("source", f"{_file_of(entry)} is already registered as {same} (same sha256)")
        if what == "embedding":
            clash = s.scalars(select(RegisteredEmbedding.name).where(
                RegisteredEmbedding.arch == entry.arch,
                func.lower(RegisteredEmbedding.token) == entry.token.lower())).first()
            if clash is not None:
                raise InputError("token", f"{entry.token} is already the token of embedding {clash} for "
                                          f"{entry.arch} models; pick another with --token")
        s.add(table(**{**values, "created_at": self.clock()}))

    def remove_registered(self, what: str, name: str) -> None:
        table = TABLES[what]
        with self.session() as s:
            row = s.get(table, name)
            if row is None:
                raise NotFound(f"{name} is a built-in {what} and cannot be removed" if name in BUILTINS[what]
                               else f"no registered {what} {name!r}")
            s.delete(row)

    def bind_accelerator(self, model: str, recipe: str, adapter: str) -> None:
        """Bind ``model`` to its own accelerator for ``recipe`` (replacing an earlier binding);
        the caller has checked that both exist and fit (farm.api)."""
        with self.session() as s:
            row = s.get(AcceleratorBinding, (model, recipe))
            if row is None:
                s.add(AcceleratorBinding(model=model, recipe=recipe, adapter=adapter, created_at=self.clock()))
            else:
                row.adapter, row.created_at = adapter, self.clock()

    def unbind_accelerator(self, model: str, recipe: str) -> bool:
        with self.session() as s:
            row = s.get(AcceleratorBinding, (model, recipe))
            if row is not None:
                s.delete(row)
            return row is not None

    def catalog(self) -> Catalog:
        """Built-in models, adapters, embeddings and ControlNets plus the registered ones, with
        the models' accelerator bindings."""
        entries: dict[str, dict] = {}
        with self.session() as s:
            for what, table in TABLES.items():
                found = dict(BUILTINS[what])
                for row in s.scalars(select(table)):
                    found[row.name] = _entry(ENTRY_TYPES[what], row)
                entries[what] = found
            bindings: dict[str, list[tuple[str, str]]] = {}
            for binding in s.scalars(select(AcceleratorBinding).order_by(AcceleratorBinding.recipe)):
                bindings.setdefault(binding.model, []).append((binding.recipe, binding.adapter))
        for model, pairs in bindings.items():
            if model in entries["model"]:
                entries["model"][model] = replace(entries["model"][model], bindings=tuple(pairs))
        return Catalog(models=entries["model"], adapters=entries["adapter"], embeddings=entries["embedding"],
                       controlnets=entries["controlnet"], motion_adapters=entries["motion"])
