"""The ledger: the farm's source of truth, a thin adapter over SQLAlchemy.

One facade over modules by concern: ``schema`` (engine, sessions, migrations), ``batches``
(submissions, reuse, batch control), ``lifecycle`` (claim, complete, fail, leases), ``fleet``
(workers, locks), ``registry`` (models, adapters), ``training`` (training jobs' progress, checkpoints,
results, issue 14), ``tenants`` (tenants, API keys, uploaded inputs: issue 23), ``dispatching`` (what
the fair-share dispatcher reads and charges: issue 24), ``backlog`` (what the autoscaler reads:
issue 26) and ``queries`` (reporting). Values come out
typed (``farm.ledger.values``); a job's spec meets its row only in ``farm.ledger.mapping``.
"""

from __future__ import annotations

from farm.ledger.backlog import Backlogs
from farm.ledger.batches import Batches
from farm.ledger.dispatching import Dispatching
from farm.ledger.events import Events
from farm.ledger.fleet import Fleet
from farm.ledger.lifecycle import Lifecycle
from farm.ledger.queries import Queries
from farm.ledger.registry import Registry
from farm.ledger.schema import current_revision, head_revision, make_engine, upgrade, utcnow
from farm.ledger.tenants import Tenants
from farm.ledger.training import Trainings
from farm.ledger.values import Claim, NewBatch


class Ledger(Trainings, Batches, Lifecycle, Dispatching, Fleet, Registry, Queries, Tenants, Events, Backlogs):
    """``Ledger(url, clock=..., auto_migrate=True)``: every concern over one engine."""



__all__ = ["Ledger", "Claim", "NewBatch", "upgrade", "head_revision", "current_revision",
           "make_engine", "utcnow"]
