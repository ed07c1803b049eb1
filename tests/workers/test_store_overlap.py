"""Storing a micro-batch's images while the next one renders (the handler's background stores).

A real SQLite ledger and file store, the sleep renderer (no torch) and a store whose writes can
be held back, so the test sees each stage: the message returns before its images are stored,
their leases are renewed meanwhile, the next message waits for them before handing over its
own, and a failed background store retries the job like a failed foreground one.
"""

import random
import threading
import time

import pytest

from engine.sleeper import SleepRenderer
from farm.jobs.plan import plan
from farm.jobs.spec import Catalog, JobRequest
from farm.jobs.variants import PromptRow
from farm.ledger import Ledger
from farm.storage.local import LocalStore
from workers.handler import Handler


class GatedStore(LocalStore):
    """A file store whose writes wait for ``gate``; ``fail`` makes them raise instead."""

    def __init__(self, url):
        super().__init__(url)
        self.gate = threading.Event()
        self.fail = False
        self.writes = 0

    def put(self, key, data, content_type, metadata=None):
        assert self.gate.wait(30), "the test never opened the gate"
        if self.fail:
            raise ConnectionError("store unreachable")
        super().put(key, data, content_type, metadata)
        self.writes += 1


@pytest.fixture
def farm(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    store = GatedStore(f"file://{tmp_path / 'store'}")
    handlers = []

    def make(**kw):
        options = dict(ledger=ledger, store=store, runner=SleepRenderer(0.0), worker="w1", device="cpu",
                       versions={}, lease_s=3, retry_backoff_s=0)
        options.update(kw)
        ledger.register_worker(name="w1", host="test", pid=1, device="cpu", gpu_name=None, versions={})
        handler = Handler(**options)
        handlers.append(handler)
        return handler

    yield ledger, store, make
    store.gate.set()
    for handler in handlers:
        handler.close()
    ledger.close()


def jobs(ledger, n, seed):
    p = plan([PromptRow(JobRequest(prompt="a lighthouse"))], JobRequest(), variants=n, seed=seed,
             catalog=Catalog(), default_model="tiny-sd", rng=random.Random(0))
    ledger.create_batch(specs=p.specs, spec=p.record(), request_digest=p.request_digest, base_seed=p.base_seed)
    return [j.id for j in ledger.list_jobs()][-n:]


def states(ledger, ids):
    return [j.state for j in ledger.list_jobs() if j.id in ids]


def test_a_message_returns_before_its_images_are_stored_and_their_leases_stay_renewed(farm):
    ledger, store, make = farm
    handler = make()
    first = jobs(ledger, 4, seed=1)
    summary = handler.handle(first)
    assert summary["claimed"] == 4 and summary["storing"] == 4 and summary["succeeded"] == 0
    assert sorted(handler.storing) == sorted(first)
    before = {a.token: a.lease_expires_at for a in _attempts(ledger, first)}
    time.sleep(4)  # past the 3 s lease: only the keeper's renewals keep the claims alive
    after = {a.token: a.lease_expires_at for a in _attempts(ledger, first)}
    assert all(after[t] > before[t] for t in before)
    assert ledger.expired_leases() == []  # nothing for the reaper to hand to another worker
    assert states(ledger, first) == ["running"] * 4

    store.gate.set()
    handler.wait_for_stores()
    assert states(ledger, first) == ["succeeded"] * 4
    assert handler.storing == {} and store.writes == 4
    handler.report_status()
    assert ledger.workers()[0].images_rendered == 4


def test_the_next_message_renders_while_the_last_one_is_stored_but_waits_before_storing(farm):
    ledger, store, make = farm
    handler = make()
    first, second = jobs(ledger, 2, seed=1), jobs(ledger, 2, seed=10)
    handler.handle(first)
    done = threading.Event()
    thread = threading.Thread(target=lambda: (handler.handle(second), done.set()))
    thread.start()
    time.sleep(0.5)
    # rendered (claimed) but not handed to the store: the first message's images still hold the pool
    assert not done.is_set()
    assert states(ledger, second) == ["running"] * 2 and set(handler.storing) == set(first)
    store.gate.set()
    thread.join(10)
    assert done.is_set()
    handler.wait_for_stores()
    assert states(ledger, first + second) == ["succeeded"] * 4


def test_a_failed_background_store_retries_the_job(farm):
    ledger, store, make = farm
    handler = make()
    first = jobs(ledger, 2, seed=1)
    store.fail = True
    store.gate.set()
    handler.handle(first)
    handler.wait_for_stores()
    assert states(ledger, first) == ["queued"] * 2
    assert all(a.outcome == "retry" and "store unreachable" in a.error for a in _attempts(ledger, first))


def test_without_overlap_a_message_returns_once_its_images_are_stored(farm):
    ledger, store, make = farm
    handler = make(store_overlap=False)
    store.gate.set()
    first = jobs(ledger, 3, seed=1)
    summary = handler.handle(first)
    assert summary["succeeded"] == 3 and summary["storing"] == 0
    assert states(ledger, first) == ["succeeded"] * 3


def test_close_waits_for_background_stores(farm):
    ledger, store, make = farm
    handler = make()
    first = jobs(ledger, 2, seed=1)
    handler.handle(first)
    threading.Timer(0.5, store.gate.set).start()
    handler.close()
    assert states(ledger, first) == ["succeeded"] * 2


def _attempts(ledger, ids):
    from sqlalchemy import select

    from farm.ledger.models import Attempt

    with ledger.session() as s:
        return list(s.scalars(select(Attempt).where(Attempt.job_id.in_(ids)).order_by(Attempt.id)))


def test_a_store_that_hangs_ends_the_worker_so_the_reaper_can_hand_its_jobs_on(tmp_path):
    """The keeper renews the leases of images being stored; if a store never returns (a hung
    mount, an upload with no timeout) it must not renew them for ever: the process exits with 70
    and is restarted, and the reaper requeues the jobs when their leases lapse."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import threading, time
        import workers.handler as handler_module
        from tests.workers.test_store_overlap import GatedStore, jobs
        from farm.ledger import Ledger
        from workers.handler import Handler
        from engine.sleeper import SleepRenderer

        handler_module.STORE_HANG_S = 1.0
        ledger = Ledger("sqlite:///{tmp_path / 'ledger.db'}")
        ledger.register_worker(name="w1", host="t", pid=1, device="cpu", gpu_name=None, versions={{}})
        store = GatedStore("file://{tmp_path / 'store'}")  # never opened: the write hangs
        handler = Handler(ledger=ledger, store=store, runner=SleepRenderer(0.0), worker="w1", device="cpu",
                          versions={{}}, lease_s=3)
        handler.handle(jobs(ledger, 2, seed=1))
        time.sleep(20)
        print("still alive")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                            cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    assert result.returncode == 70, result.stdout + result.stderr[-2000:]
    assert "storing images hung" in result.stderr
