"""The SQL ledger (the only place that imports sqlalchemy)."""

from farm.ledger.ledger import ClaimedJob, Ledger, NewBatch, utcnow

__all__ = ["Ledger", "ClaimedJob", "NewBatch", "utcnow"]
