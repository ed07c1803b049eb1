"""The one task: render a micro-batch of job ids. Thin: the handler does the work."""

from __future__ import annotations

from farm.fleet.dispatch import RENDER_TASK
from workers import runtime
from workers.app import app


@app.task(name=RENDER_TASK)
def render(job_ids):
    if not isinstance(job_ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in job_ids):
        # a malformed message can never succeed; drop it (the ledger still has the jobs)
        runtime.log.error("dropping malformed message %r", job_ids)
        return {"malformed": True}
    state = runtime.current()
    summary = state.handler.handle(job_ids)
    runtime.prefer_resident_models(state)
    return summary
