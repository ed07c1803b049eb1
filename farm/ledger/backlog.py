"""The fleet's backlog, as the autoscaler reads it (issue 26): per model, the jobs waiting (in an
active batch: a paused batch's jobs wait for no worker) or rendering, with what they are charged
in GPU milliseconds (``jobs.cost_ms``). Reads only; turning rows into a worker count is
``farm.fleet.scaling``'s, and deploy/kubernetes/base/backlog.sql is the same query for KEDA."""

from __future__ import annotations

from sqlalchemy import and_, func, or_, select

from farm.jobs import states
from farm.ledger.models import Batch, Job
from farm.ledger.schema import Database


class Backlogs(Database):
    def backlog_rows(self, models: list[str] | None = None) -> list[tuple[str, int, int, int, int, float, int]]:
        """(model, width, height, steps, jobs, their known cost in ms, how many have no cost yet)
        of the jobs queued in active batches or running, of ``models`` (default: every model)."""
        waiting = or_(Job.state == states.RUNNING,
                      and_(Job.state == states.QUEUED, Batch.state == states.BATCH_ACTIVE))
        query = (select(Job.model, Job.width, Job.height, Job.steps, func.count(),
                        func.coalesce(func.sum(Job.cost_ms), 0.0), func.count() - func.count(Job.cost_ms))
                 .join(Batch, Batch.id == Job.batch_id).where(waiting)
                 .group_by(Job.model, Job.width, Job.height, Job.steps))
        if models is not None:
            query = query.where(Job.model.in_(models))
        with self.session() as s:
            return [(str(m), int(w), int(h), int(n), int(c), float(ms or 0.0), int(unknown))
                    for m, w, h, n, c, ms, unknown in s.execute(query)]
