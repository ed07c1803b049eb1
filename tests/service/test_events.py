"""Live events over HTTP (issue 25), against a real `farm serve`, a real sleep worker, the suite's
PostgreSQL and Redis and a real local webhook receiver: the SSE stream (tenant-filtered, resumable),
a remote wait woken by it, webhooks signed as Standard Webhooks (checked with the reference
`standardwebhooks` package), delivered at least once across a kill -9 of the server and a receiver
that was down, and private targets refused."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid

import httpx
import pytest

from farm.client.events import parse
from tests import servers
from tests.service.receiver import Receiver
from tests.service.test_http_api import Service

pytestmark = [pytest.mark.workers]


@pytest.fixture(scope="module")
def service(tmp_path_factory, postgres_server, redis_server):
    tmp = tmp_path_factory.mktemp("events")
    svc = Service(tmp, postgres_server.new_database(f"events_{uuid.uuid4().hex[:8]}"), redis_server.url,
                  workers=2, env={"FARM_WEBHOOK_ALLOWED_NETS": "127.0.0.0/8",
                                  # a shared farm: the workers' dispatchers publish in fair order
                                  "FARM_SCHEDULER": "fair", "FARM_LEASE_S": "3", "FARM_MAINTENANCE_S": "1"})
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def keys(service):
    return {"alice": service.key("alice"), "bob": service.key("bob")}


def submit(service, key: str, seeds: str = "1-4", prompt: str = "a red circle") -> str:
    answer = service.client(key).post("/v1/batches", json={"prompt": prompt, "model": "tiny-sd", "seeds": seeds})
    assert answer.status_code == 200, answer.text
    return answer.json()["batch"]


class Stream(threading.Thread):
    """Reads GET /v1/events in the background, recording each event."""

    def __init__(self, service, key, params=None, headers=None):
        super().__init__(daemon=True)
        self.client = service.client(key)
        self.params, self.headers = params or {}, headers or {}
        self.events: list[dict] = []
        self.opened = threading.Event()

    def run(self):
        try:
            with self.client.stream("GET", "/v1/events", params=self.params, timeout=60,
                                    headers={"Accept": "text/event-stream", **self.headers}) as answer:
                for block in parse(answer.iter_lines()):
                    self.opened.set()
                    if "id" in block:
                        self.events.append({"id": int(block["id"]), "type": block["event"],
                                            **json.loads(block["data"])})
        except httpx.HTTPError:
            pass

    def close(self):
        self.client.close()


def test_the_stream_follows_the_tenants_events_and_resumes(service, keys):
    alice, bob = Stream(service, keys["alice"]), Stream(service, keys["bob"])
    for s in (alice, bob):
        s.start()
        assert s.opened.wait(10)
    batch = submit(service, keys["alice"])
    servers.wait_until(lambda: any(e["type"] == "batch.finished" and e["batch"] == batch for e in alice.events),
                       60, what="batch.finished on the stream")
    mine = [e for e in alice.events if e["batch"] == batch]
    assert [e["type"] for e in mine] == ["batch.accepted"] + ["job.succeeded"] * 4 + ["batch.finished"]
    assert [e["id"] for e in mine] == sorted(e["id"] for e in mine)
    assert sorted(e["data"]["seed"] for e in mine if e["type"] == "job.succeeded") == [1, 2, 3, 4]
    assert all(len(e["data"]["sha256"]) == 64 for e in mine if e["type"] == "job.succeeded")
    time.sleep(0.5)
    assert not [e for e in bob.events if e["batch"] == batch]  # another tenant's events are not shown
    for s in (alice, bob):
        s.close()
    # resumable: Last-Event-ID gives what came after it, nothing twice; JSON without the stream
    page = service.client(keys["alice"]).get("/v1/events", params={"batch": batch},
                                             headers={"Last-Event-ID": str(mine[1]["id"])}).json()
    assert [e["id"] for e in page["events"]] == [e["id"] for e in mine[2:]] and page["last_id"] == mine[-1]["id"]
    resumed = Stream(service, keys["alice"], {"batch": batch}, {"Last-Event-ID": str(mine[2]["id"])})
    resumed.start()
    servers.wait_until(lambda: len(resumed.events) >= 3, 10, what="the resumed stream")
    assert [e["id"] for e in resumed.events] == [e["id"] for e in mine[3:]]
    resumed.close()
    # another tenant's batch is unknown, a bad Last-Event-ID is a 400
    assert service.client(keys["bob"]).get("/v1/events", params={"batch": batch}).status_code == 404
    bad = service.client(keys["alice"]).get("/v1/events", headers={"Last-Event-ID": "x"})
    assert bad.status_code == 400 and "Last-Event-ID" in bad.json()["detail"]


def test_a_remote_wait_is_woken_by_the_stream_not_by_polling(service, keys, monkeypatch):
    from farm.client import remote

    monkeypatch.setattr(remote, "RECHECK_S", 120.0)  # polling alone would take two minutes
    with remote.RemoteFarm(service.url, keys["alice"]) as farm:
        batch = farm.submit("a blue square", model="tiny-sd", seeds="5-10")
        started = time.monotonic()
        counts = farm.wait(batch, timeout=60)
    assert counts["succeeded"] == 6 and time.monotonic() - started < 30


def test_webhooks_are_signed_and_delivered_in_order(service, keys):
    from standardwebhooks import Webhook

    receiver = Receiver().start()
    try:
        made = service.client(keys["alice"]).post("/v1/webhooks", json={
            "url": receiver.url, "events": ["batch.accepted", "job.succeeded", "batch.finished"]}).json()
        assert made["secret"].startswith("whsec_") and made["tenant"] == "alice"
        listed = service.client(keys["alice"]).get("/v1/webhooks").json()
        assert [w["id"] for w in listed] == [made["id"]] and "secret" not in listed[0]
        assert service.client(keys["bob"]).get(f"/v1/webhooks/{made['id']}/deliveries").status_code == 404
        assert service.client(keys["bob"]).delete(f"/v1/webhooks/{made['id']}").status_code == 404
        batch = submit(service, keys["alice"], "1-3", "a green triangle")
        submit(service, keys["bob"], "1-2", "bob's square")  # not alice's: never delivered to her endpoint
        servers.wait_until(lambda: any(json.loads(m["body"])["type"] == "batch.finished"
                                       for m in receiver.messages()), 60, what="batch.finished delivered")
        verifier = Webhook(made["secret"])
        bodies = [verifier.verify(m["body"], m["headers"]) for m in receiver.messages()]
        assert [b["type"] for b in bodies] == ["batch.accepted"] + ["job.succeeded"] * 3 + ["batch.finished"]
        assert {b["data"]["batch"] for b in bodies} == {batch} and {b["data"]["tenant"] for b in bodies} == {"alice"}
        assert [m["headers"]["webhook-id"] for m in receiver.messages()] == [f"evt_{b['data']['event']}" for b in bodies]
        with pytest.raises(Exception, match="(?i)signature"):  # a wrong secret does not verify
            Webhook("whsec_" + "A" * 43 + "=").verify(receiver.messages()[0]["body"], receiver.messages()[0]["headers"])
        log = service.client(keys["alice"]).get(f"/v1/webhooks/{made['id']}/deliveries").json()
        assert len(log) == 5 and all(d["ok"] and d["status_code"] == 204 for d in log)
        assert service.client(keys["alice"]).delete(f"/v1/webhooks/{made['id']}").json() == {"removed": made["id"]}
    finally:
        receiver.stop()


def test_private_and_loopback_targets_are_refused_unless_allowed(service, keys):
    client = service.client(keys["alice"])
    for url in ("http://10.0.0.1/hook", "http://169.254.169.254/latest/meta-data", "http://[::1]:8080/x",
                "http://192.168.1.1/", "ftp://example.com/x", "http://user:pw@127.0.0.1/"):
        answer = client.post("/v1/webhooks", json={"url": url})
        assert answer.status_code == 400, (url, answer.text)
        assert answer.headers["content-type"].startswith("application/problem+json")
    refused = client.post("/v1/webhooks", json={"url": "http://10.0.0.1/hook"}).json()["detail"]
    assert "private" in refused and "FARM_WEBHOOK_ALLOWED_NETS" in refused
    # the CLI, without the operator's allowance, refuses loopback too
    env = {k: v for k, v in service.env.items() if k != "FARM_WEBHOOK_ALLOWED_NETS"}
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "farm.cli", "webhooks", "add", "http://127.0.0.1:9/x", "--tenant",
                          "alice"], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and run.stderr.startswith("error: ") and "loopback" in run.stderr
    assert "Traceback" not in run.stderr


def test_kill_9_mid_batch_and_a_receiver_down_lose_nothing(service, keys, tmp_path):
    """The server (and its deliverer) is killed with SIGKILL while a batch renders and restarted;
    the receiver is down (503, then not listening) for part of it. Every event of the batch arrives,
    in order; a repeated one carries its webhook-id again."""
    from standardwebhooks import Webhook

    first = Receiver().start()
    made = json.loads(service.cli("webhooks", "add", first.url, "--tenant", "alice", "--json"))
    second = Receiver(first.port)
    try:
        batch = submit(service, keys["alice"], "1-40", "a white circle")
        servers.wait_until(lambda: len(first.messages()) >= 5, 60, what="the first deliveries")
        service.server.send_signal(signal.SIGKILL)
        service.server.wait()
        dispatcher = kill_the_dispatcher(service)  # and the worker dispatching, at the same moment
        first.failing = True  # the receiver breaks while the server is away
        service.server = service.start_server()
        servers.wait_until(service.up, 60, what="farm serve again")
        servers.wait_until(lambda: any(not d["ok"] for d in json.loads(service.cli(
            "webhooks", "deliveries", str(made["id"]), "--json"))), 60, what="a failed delivery")
        first.stop()  # and then is not there at all
        time.sleep(2)
        second.start()
        servers.wait_until(lambda: any(json.loads(m["body"])["type"] == "batch.finished"
                                       for m in second.messages()), 120, what="everything delivered")
    finally:
        first.stop()
        second.stop()
    verifier = Webhook(made["secret"])
    log = json.loads(service.cli("webhooks", "deliveries", str(made["id"]), "--limit", "1000", "--json"))
    (tmp_path / "deliveries.json").write_text(json.dumps(log, indent=1))
    got = [verifier.verify(m["body"], m["headers"]) for m in first.messages() + second.messages()]
    expected = service.client(keys["alice"]).get("/v1/events", params={"batch": batch}).json()["events"]
    assert [e["type"] for e in expected].count("job.succeeded") == 40 and expected[-1]["type"] == "batch.finished"
    ids = [b["data"]["event"] for b in got]
    assert set(ids) == {e["id"] for e in expected}  # every event, at least once
    assert ids == sorted(ids)  # in order; a repeat (the one in flight at the kill) comes right after itself
    # the dispatching worker was killed; dispatching went on (its restart, or the other worker, holds the lock)
    assert dispatcher is not None and holder_of_dispatch(service) is not None
    failed = [d for d in log if not d["ok"]]
    assert failed and {d["webhook_id"] for d in failed} <= {d["webhook_id"] for d in log if d["ok"]}


def holder_of_dispatch(service) -> str | None:
    from sqlalchemy import create_engine, text

    engine = create_engine(service.env["FARM_DATABASE_URL"])
    try:
        with engine.connect() as conn:
            return conn.execute(text("select holder from locks where name = 'dispatch'")).scalar()
    finally:
        engine.dispose()


def kill_the_dispatcher(service) -> str | None:
    """SIGKILL the worker process holding the fair-share dispatcher's lock; its name."""
    from sqlalchemy import create_engine, text

    holder = holder_of_dispatch(service)
    engine = create_engine(service.env["FARM_DATABASE_URL"])
    with engine.connect() as conn:
        pid = conn.execute(text("select pid from workers where name = :n"), {"n": holder}).scalar()
    engine.dispose()
    if pid:
        os.kill(pid, signal.SIGKILL)
    return holder

