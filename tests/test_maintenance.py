"""Maintenance publishes queued jobs that no broker message carries (real Redis, SQLite ledger)."""

import random
from datetime import timedelta

from farm.config import load_config
from farm.fleet.dispatch import Publisher
from farm.fleet.maintenance import reconcile
from farm.fleet.producer import submit
from farm.jobs.plan import plan
from farm.jobs.spec import Catalog, JobRequest
from farm.jobs.variants import PromptRow
from farm.ledger import Ledger


def enqueued_at(ledger, batch):
    from sqlalchemy import select

    from farm.ledger.models import Job

    with ledger.session() as s:
        return list(s.scalars(select(Job.enqueued_at).where(Job.batch_id == batch)))


def planned(n, seed):
    return plan([PromptRow(JobRequest(prompt="a harbour"))], JobRequest(), variants=n, seed=seed,
                catalog=Catalog(), default_model="tiny-sd", rng=random.Random(0))


def test_a_submission_is_marked_published_with_its_jobs_and_lost_messages_come_back(tmp_path, redis_server):
    env = {"FARM_HOME": str(tmp_path / "home"), "FARM_BROKER_URL": redis_server.url, "FARM_QUEUE": "maint"}
    cfg = load_config(env)
    ledger = Ledger(cfg.database_url)
    publisher = Publisher(cfg, redis_server.url)
    client = redis_server.client()
    queued = lambda: sum(client.llen(k) for k in client.keys("maint.*") if client.type(k) == b"list")  # noqa: E731
    try:
        result = submit(ledger, publisher, planned(4, 1), micro_batch=2)
        assert result.messages == 2 and queued() == 2
        # published in the transaction that created them: within the grace period nothing is
        # published twice, and past it the messages are found in the broker
        assert None not in enqueued_at(ledger, result.batch)
        assert reconcile(ledger, publisher, grace_s=3600, micro_batch=2) == {"republished": 0}
        later = ledger.clock
        ledger.clock = lambda: later() + timedelta(hours=2)
        assert reconcile(ledger, publisher, grace_s=5, micro_batch=2) == {"republished": 0}
        # messages lost (a flushed or failed-over Redis; a publish that never happened): back
        for key in client.keys("maint.*"):
            client.delete(key)
        assert reconcile(ledger, publisher, grace_s=5, micro_batch=2) == {"republished": 4}
        assert queued() == 2
        # jobs recorded without a publish (a client that crashed in between) go out at once
        ledger.clock = later
        unpublished = planned(3, 2)
        new = ledger.create_batch(specs=unpublished.specs, spec=unpublished.record(),
                                  request_digest=unpublished.request_digest, base_seed=unpublished.base_seed)
        assert reconcile(ledger, publisher, grace_s=3600, micro_batch=2) == {"republished": 3}
        assert None not in enqueued_at(ledger, new.id)
    finally:
        publisher.close()
        ledger.close()
