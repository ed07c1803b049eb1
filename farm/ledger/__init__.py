"""The SQL ledger (the only place that imports sqlalchemy)."""

from farm.ledger.ledger import Ledger, utcnow
from farm.ledger.values import (
    Artifact,
    AttemptStat,
    BatchInfo,
    BatchSummary,
    Claim,
    Completion,
    JobView,
    NewBatch,
    StoredJob,
    WorkerInfo,
)

__all__ = ["Ledger", "Claim", "Completion", "NewBatch", "utcnow", "Artifact", "AttemptStat", "BatchInfo",
           "BatchSummary", "JobView", "StoredJob", "WorkerInfo"]
