"""The SQL ledger (the only place that imports sqlalchemy).

The names below are imported on first use (PEP 562), so ``farm.ledger.values`` and
``farm.ledger.quick`` (the CLI's read-only fast path) load without SQLAlchemy.
"""

from __future__ import annotations

_LAZY = {
    "Ledger": "farm.ledger.ledger", "utcnow": "farm.ledger.ledger",
    **{name: "farm.ledger.values" for name in ("Artifact", "AttemptStat", "BatchInfo", "BatchSummary", "Claim",
                                                "Completion", "JobView", "NewBatch", "StoredJob", "WorkerInfo")},
}

__all__ = ["Ledger", "Claim", "Completion", "NewBatch", "utcnow", "Artifact", "AttemptStat", "BatchInfo",
           "BatchSummary", "JobView", "StoredJob", "WorkerInfo"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'farm.ledger' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
