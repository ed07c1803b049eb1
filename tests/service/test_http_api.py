"""The shared farm over HTTP (issue 23): a real `farm serve` on a free loopback port, a real worker
process (the sleep renderer), the suite's PostgreSQL and Redis. Two tenants submit, wait and
download; each one's ids are 404 to the other on every route that takes an id and inside
submissions; server paths are refused; scopes and keys are enforced; an idempotency key makes one
batch."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from tests import servers

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.workers]


class Service:
    def __init__(self, tmp: Path, database_url: str, broker_url: str, *, workers: int = 1, env: dict | None = None):
        self.tmp = tmp
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
        self.env.update(FARM_HOME=str(tmp / "home"), FARM_DATABASE_URL=database_url, FARM_BROKER_URL=broker_url,
                        FARM_RENDERER="sleep:0.01", FARM_QUEUE=f"svc{tmp.name[-6:]}", FARM_MICRO_BATCH="4",
                        FARM_DEFAULT_MODEL="tiny-sd")
        self.env.update(env or {})
        self.cli("db", "upgrade")
        self.port = servers.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(tmp / "service.log", "ab")
        self.server = self.start_server()
        self.workers = subprocess.Popen([sys.executable, "-m", "farm.cli", "worker", "--workers", str(workers),
                                         "--models", "tiny-sd"], env=self.env, cwd=ROOT, stdout=self.log,
                                        stderr=subprocess.STDOUT) if workers else None
        servers.wait_until(self.up, 60, what="farm serve")

    def start_server(self) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "farm.cli", "serve", "--port", str(self.port),
                                 "--log-level", "warning"], env=self.env, cwd=ROOT, stdout=self.log,
                                stderr=subprocess.STDOUT)

    def up(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def cli(self, *args) -> str:
        return subprocess.run([sys.executable, "-m", "farm.cli", *args], env=self.env, cwd=ROOT, check=True,
                              capture_output=True, text=True, timeout=120).stdout

    def key(self, tenant: str, scopes: str = "submit,read") -> str:
        return json.loads(self.cli("keys", "create", "--tenant", tenant, "--scopes", scopes, "--json"))["key"]

    def client(self, key: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def close(self) -> None:
        for proc in (self.workers, self.server):
            if proc is not None:
                servers.terminate(proc)
        self.log.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory, postgres_server, redis_server):
    import uuid

    tmp = tmp_path_factory.mktemp("service")
    svc = Service(tmp, postgres_server.new_database(f"service_{uuid.uuid4().hex[:8]}"), redis_server.url)
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def tenants(service):
    return {"alice": service.client(service.key("alice")), "bob": service.client(service.key("bob")),
            "admin": service.client(service.key("ops", "submit,read,admin")),
            "reader": service.client(service.key("alice", "read"))}


def wait_done(client: httpx.Client, batch: str, timeout: float = 60) -> dict:
    def done():
        body = client.get(f"/v1/batches/{batch}").json()
        return body if body["done"] == body["jobs"] else None

    return servers.wait_until(done, timeout, interval=0.1, what=f"batch {batch}")


def png(colour=(200, 30, 30), size=32) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def batches(tenants):
    """One finished batch per tenant."""
    out = {}
    for name in ("alice", "bob"):
        answer = tenants[name].post("/v1/batches", json={"prompt": f"a red circle for {name}", "model": "tiny-sd",
                                                         "seeds": "1-3"})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["jobs"] == 3 and body["created"] is True
        wait_done(tenants[name], body["batch"])
        out[name] = body["batch"]
    return out


def test_health_needs_no_key_and_everything_else_does(service, tenants):
    assert httpx.get(f"{service.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{service.url}/readyz")
    assert ready.status_code == 200 and ready.json()["ledger"] == "ok" and ready.json()["broker"] == "ok"
    for client in (service.client(None), service.client("farm_abcdefgh_" + "x" * 43), service.client("nonsense")):
        answer = client.get("/v1/batches")
        assert answer.status_code == 401, answer.text
        assert answer.headers["content-type"].startswith("application/problem+json")
        assert answer.json()["status"] == 401 and "API key" in answer.json()["detail"]
    denied = tenants["reader"].post("/v1/batches", json={"prompt": "x"})
    assert denied.status_code == 403 and "may not submit" in denied.json()["detail"]
    assert tenants["reader"].get("/v1/batches").status_code == 200
    assert tenants["alice"].delete("/v1/models/tiny-sd").status_code == 403  # admin only


def test_two_tenants_submit_wait_and_download_verified_images(service, tenants, batches):
    for name, batch in batches.items():
        client = tenants[name]
        summary = client.get(f"/v1/batches/{batch}").json()
        assert summary["counts"]["succeeded"] == 3 and summary["tenant"] == name and summary["eta_s"] == 0
        jobs = client.get(f"/v1/batches/{batch}/jobs").json()
        assert sorted(j["seed"] for j in jobs) == [1, 2, 3]
        for job in jobs:
            image = client.get(f"/v1/jobs/{job['id']}/image")
            assert image.status_code == 200 and image.headers["content-type"] == "image/png"
            assert hashlib.sha256(image.content).hexdigest() == job["sha256"]
            assert image.headers["etag"] == f'"{job["sha256"]}"'
            assert client.get(f"/v1/jobs/{job['id']}/image", headers={"If-None-Match": image.headers["etag"]}
                              ).status_code == 304
        archive = zipfile.ZipFile(io.BytesIO(client.get(f"/v1/batches/{batch}/images.zip").content))
        assert len(archive.namelist()) == 3
        assert {hashlib.sha256(archive.read(n)).hexdigest() for n in archive.namelist()} == {j["sha256"] for j in jobs}
        listed = {b["batch"] for b in client.get("/v1/batches").json()}
        assert listed == {batch}  # its own only
    assert {b["batch"] for b in tenants["admin"].get("/v1/batches").json()} >= set(batches.values())


def test_another_tenants_ids_are_404_on_every_route(service, tenants, batches):
    bob = tenants["bob"]
    theirs = batches["alice"]
    [job] = tenants["alice"].get(f"/v1/batches/{theirs}/jobs").json()[:1]
    unknown_batch, unknown_job = "0000000000", 999_999_999
    for batch in (theirs, unknown_batch):
        for method, path in (("GET", f"/v1/batches/{batch}"), ("GET", f"/v1/batches/{batch}/jobs"),
                             ("GET", f"/v1/batches/{batch}/images.zip"), ("GET", f"/v1/jobs?batch={batch}"),
                             ("POST", f"/v1/batches/{batch}/cancel"), ("POST", f"/v1/batches/{batch}/retry"),
                             ("POST", f"/v1/batches/{batch}/pause"), ("POST", f"/v1/batches/{batch}/resume")):
            answer = bob.request(method, path)
            assert answer.status_code == 404 and answer.json()["detail"] == f"no batch {batch!r}", (method, path)
    for job_id in (job["id"], unknown_job):
        for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/image"):
            answer = bob.get(path)
            assert answer.status_code == 404 and answer.json()["detail"] == f"no job {job_id}", path
    assert job["id"] not in {j["id"] for j in bob.get("/v1/jobs").json()}
    # inside submissions too: job:ID as an init image, batch:ID as a dataset or --from-batch
    for job_id in (job["id"], unknown_job):
        answer = bob.post("/v1/batches", json={"prompt": "x", "model": "tiny-sd", "kind": "img2img",
                                               "init_image": f"job:{job_id}"})
        assert answer.status_code == 400 and f"no job {job_id}" in answer.json()["detail"], answer.text
    for batch in (theirs, unknown_batch):
        answer = bob.post("/v1/distill", json={"teacher": "tiny-sd", "data": f"batch:{batch}", "name": "stolen"})
        assert answer.status_code == 400 and f"no batch {batch!r}" in answer.json()["detail"], answer.text
    assert tenants["alice"].get(f"/v1/batches/{theirs}").json()["state"] == "active"  # untouched by bob's calls


@pytest.mark.parametrize("reference", ["/etc/passwd", "../../etc/passwd", "file:///etc/passwd", "inputs/x.png",
                                       "s3://any-bucket/key.png"])
def test_server_paths_are_refused_in_submissions(tenants, reference):
    answer = tenants["alice"].post("/v1/batches", json={"prompt": "x", "model": "tiny-sd", "kind": "img2img",
                                                        "init_image": reference})
    assert answer.status_code == 400, answer.text
    detail = answer.json()["detail"]
    assert "no path on the server" in detail or "not under an s3:// prefix" in detail, detail
    data = tenants["alice"].post("/v1/distill", json={"teacher": "tiny-sd", "data": "/etc", "name": "x"})
    assert data.status_code == 400 and "no directory on the server" in data.json()["detail"]


def test_uploaded_inputs_belong_to_their_tenant(service, tenants):
    upload = tenants["alice"].post("/v1/inputs", content=png(size=64), headers={"Content-Type": "image/png"})
    assert upload.status_code == 200, upload.text
    ref = upload.json()["input"]
    assert ref.startswith("input:") and upload.json()["width"] == 64
    made = tenants["alice"].post("/v1/batches", json={"prompt": "a red circle", "model": "tiny-sd", "kind": "img2img",
                                                      "init_image": ref, "strength": 0.5, "seeds": "7"})
    assert made.status_code == 200, made.text
    wait_done(tenants["alice"], made.json()["batch"])
    stolen = tenants["bob"].post("/v1/batches", json={"prompt": "x", "model": "tiny-sd", "kind": "img2img",
                                                      "init_image": ref})
    assert stolen.status_code == 400 and "no input" in stolen.json()["detail"]
    declared = tenants["alice"].post("/v1/inputs", content=b"\0" * (65 << 20))  # Content-Length over the limit
    assert declared.status_code == 413 and "limit" in declared.json()["detail"]
    streamed = tenants["alice"].post("/v1/inputs", content=iter([b"\0" * (1 << 20)] * 66))  # chunked: cut off
    assert streamed.status_code == 413
    garbage = tenants["alice"].post("/v1/inputs", content=b"not an image", headers={"Content-Type": "image/png"})
    assert garbage.status_code == 400 and garbage.json()["detail"].startswith("input:")


def test_the_same_idempotency_key_makes_one_batch(tenants):
    client = tenants["bob"]
    body = {"prompt": "a blue square", "model": "tiny-sd", "seeds": "40-41"}
    before = len(client.get("/v1/jobs?limit=10000").json())
    first = client.post("/v1/batches", json=body, headers={"Idempotency-Key": "order-17"}).json()
    again = client.post("/v1/batches", json=body, headers={"Idempotency-Key": "order-17"}).json()
    assert first["batch"] == again["batch"] and first["created"] is True and again["created"] is False
    assert len(client.get("/v1/jobs?limit=10000").json()) == before + 2
    # the same key from another tenant is another tenant's batch
    other = tenants["alice"].post("/v1/batches", json=body, headers={"Idempotency-Key": "order-17"}).json()
    assert other["batch"] != first["batch"] and other["created"] is True
    conflict = client.post("/v1/batches", json={**body, "prompt": "another"}, headers={"Idempotency-Key": "order-17"})
    assert conflict.status_code == 409


def test_bad_input_is_a_4xx_with_one_line(tenants):
    client = tenants["alice"]
    for body, words in (({"prompt": "x", "steps": 99, "model": "tiny-sd"}, "steps"),
                        ({"prompt": "x", "model": "no-such-model"}, "unknown model"),
                        ({}, "prompt"), ({"prompt": ["x"], "axes": "nope"}, "axes")):
        answer = client.post("/v1/batches", json=body)
        assert answer.status_code == 400 and words in answer.json()["detail"], (body, answer.text)
        assert "\n" not in answer.json()["detail"]
    assert client.post("/v1/batches", content=b"{not json", headers={"Content-Type": "application/json"}
                       ).status_code == 400
    assert client.post("/v1/batches", content=b"[1, 2]").status_code == 400
    assert client.post("/v1/batches", content=b"x" * ((1 << 20) + 10)).status_code == 413
    assert client.get("/v1/jobs/0").status_code == 400 and client.get("/v1/jobs/abc").status_code == 400
    dry = client.post("/v1/batches?dry_run=true", json={"prompt": "x", "model": "tiny-sd", "seeds": "1-4"})
    assert dry.status_code == 200 and dry.json()["jobs"] == 4


def test_failed_logins_are_limited_per_address(tmp_path, postgres_url, redis_server):
    svc = Service(tmp_path, postgres_url, redis_server.url, workers=0)
    try:
        good = svc.client(svc.key("carol"))
        bad = svc.client("farm_abcdefgh_" + "y" * 43)
        codes = [bad.get("/v1/batches").status_code for _ in range(25)]
        assert codes[:20] == [401] * 20 and set(codes[20:]) == {429}
        assert good.get("/v1/batches").status_code == 429  # the address, not the key, is limited
        assert httpx.get(f"{svc.url}/healthz").status_code == 200
    finally:
        svc.close()


def test_keys_are_stored_as_hashes_and_revoked_at_once(service, tenants):
    made = json.loads(service.cli("keys", "create", "--tenant", "dave", "--json"))
    assert made["key"].startswith(f"farm_{made['prefix']}_") and made["tenant"] == "dave"
    listed = json.loads(service.cli("keys", "list", "--tenant", "dave", "--json"))
    assert [k["prefix"] for k in listed] == [made["prefix"]] and "key" not in listed[0]
    client = service.client(made["key"])
    assert client.get("/v1/batches").status_code == 200
    from sqlalchemy import create_engine, text

    engine = create_engine(service.env["FARM_DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as conn:
        [(stored,)] = conn.execute(text("select key_hash from api_keys where prefix = :p"), {"p": made["prefix"]}).all()
    engine.dispose()
    assert len(stored) == 64 and made["key"] not in stored and made["key"].split("_")[2] not in stored
    service.cli("keys", "revoke", made["prefix"])
    assert client.get("/v1/batches").status_code == 401  # at once: read on every request


def test_the_remote_cli_needs_no_database_or_broker_settings(service, tenants, batches, tmp_path):
    """farm submit / status --watch / jobs list / results get / cancel / retry / models list over
    FARM_URL, from a directory with no farm home, and no FARM_* but the URL and the key."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_URL=service.url, FARM_API_KEY=service.key("erin"))
    work = tmp_path / "client"
    work.mkdir()
    (work / "init.png").write_bytes(png((30, 200, 30), 64))

    def farm(*args, check=True):
        done = subprocess.run([sys.executable, "-m", "farm.cli", *args], env=env, cwd=work, capture_output=True,
                              text=True, timeout=120)
        assert not check or done.returncode == 0, done.stderr
        return done

    submitted = json.loads(farm("submit", "a green square", "--model", "tiny-sd", "--seeds", "1-2", "--json").stdout)
    assert submitted["jobs"] == 2 and submitted["created"] is True
    batch = submitted["batch"]
    watched = json.loads(farm("status", batch, "--watch", "--json").stdout)
    assert watched["done"] == 2 and watched["counts"]["succeeded"] == 2
    jobs = json.loads(farm("jobs", "list", "--batch", batch, "--json").stdout)
    assert sorted(j["seed"] for j in jobs) == [1, 2]
    got = json.loads(farm("results", "get", batch, "--out", "out", "--json").stdout)
    assert len(got["outputs"]) == 2 and (work / "out" / "index.html").is_file()
    assert {hashlib.sha256(Path(p if Path(p).is_absolute() else work / p).read_bytes()).hexdigest()
            for p in got["outputs"]} == {j["sha256"] for j in jobs}
    img2img = json.loads(farm("submit", "a green square", "--model", "tiny-sd", "--init-image", "init.png",
                              "--strength", "0.5", "--seeds", "3", "--json").stdout)  # uploaded, then named
    assert img2img["jobs"] == 1
    assert json.loads(farm("cancel", img2img["batch"], "--json").stdout)["batch"] == img2img["batch"]
    assert "retried" in json.loads(farm("retry", batch, "--json").stdout)
    assert "tiny-sd" in {m["name"] for m in json.loads(farm("models", "list", "--json").stdout)}
    assert batch in {b["batch"] for b in json.loads(farm("batches", "list", "--json").stdout)}
    from engine.training.shapes import write_dataset

    write_dataset(work / "shapes", 6, seed=4)  # a local folder: uploaded, then distilled from
    distilling = json.loads(farm("distill", "--teacher", "tiny-sd", "--data", "shapes", "--name", "erins-lcm",
                                 "--steps", "1", "--batch-size", "2", "--json").stdout)
    assert distilling["examples"] == 6 and distilling["name"] == "erins-lcm"
    farm("cancel", distilling["batch"], "--running")
    refused = farm("db", "current", check=False)
    assert refused.returncode == 2 and "remote farm" in refused.stderr and "Traceback" not in refused.stderr
    other = farm("status", batches["alice"], check=False)
    assert other.returncode == 2 and "no batch" in other.stderr  # another tenant's batch: as unknown
    assert not (work / ".farm").exists()  # nothing local was made: no ledger, no broker


def test_contact_sheet_and_registering_an_uploaded_lora(service, tenants, batches, tmp_path):
    from tests.usersfiles import header_file, kohya_header

    sheet = tenants["alice"].get(f"/v1/batches/{batches['alice']}/sheet.png")
    assert sheet.status_code == 200 and sheet.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert tenants["bob"].get(f"/v1/batches/{batches['alice']}/sheet.png").status_code == 404
    lora = header_file(tmp_path / "mine.safetensors", kohya_header("tiny-sd", modules=2, text_encoders=False))
    other = header_file(tmp_path / "xl.safetensors", kohya_header("tiny-sdxl", modules=2, text_encoders=False))
    params = {"name": "uploaded-toy", "family": "tiny-sd", "kind": "style"}
    assert tenants["alice"].post("/v1/adapters", params=params, content=lora.read_bytes()).status_code == 403
    refused = tenants["admin"].post("/v1/adapters", params=params, content=other.read_bytes())
    assert refused.status_code == 400 and "\n" not in refused.json()["detail"], refused.text
    made = tenants["admin"].post("/v1/adapters", params=params, content=lora.read_bytes())
    assert made.status_code == 200, made.text
    assert made.json()["sha256"] == hashlib.sha256(lora.read_bytes()).hexdigest()
    listed = {a["name"]: a for a in tenants["bob"].get("/v1/adapters").json()}
    assert listed["uploaded-toy"]["layout"] == "kohya" and "registry/adapters/" in listed["uploaded-toy"]["source"]
    again = tenants["admin"].post("/v1/adapters", params=params, content=lora.read_bytes())
    assert again.status_code == 409
    assert tenants["admin"].delete("/v1/adapters/uploaded-toy").json() == {"removed": "uploaded-toy",
                                                                            "what": "adapter"}


def test_an_uploaded_dataset_is_its_tenants_own(service, tenants, tmp_path):
    import tarfile

    from engine.training.shapes import write_dataset

    folder = write_dataset(tmp_path / "shapes", 6, seed=2)
    archive = tmp_path / "shapes.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(folder, arcname="shapes")
    uploaded = tenants["alice"].post("/v1/datasets", content=archive.read_bytes())
    assert uploaded.status_code == 200, uploaded.text
    ref = uploaded.json()["dataset"]
    assert ref.startswith("dataset:") and uploaded.json()["examples"] == 6
    made = tenants["alice"].post("/v1/distill", json={"teacher": "tiny-sd", "data": ref, "name": "alices-lcm",
                                                      "steps": 1, "batch_size": 2})
    assert made.status_code == 200 and made.json()["examples"] == 6, made.text
    tenants["alice"].post(f"/v1/batches/{made.json()['batch']}/cancel", params={"running": "true"})
    stolen = tenants["bob"].post("/v1/distill", json={"teacher": "tiny-sd", "data": ref, "name": "bobs-lcm"})
    assert stolen.status_code == 400 and "no dataset" in stolen.json()["detail"]
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        info = tarfile.TarInfo("../../escape.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    refused = tenants["alice"].post("/v1/datasets", content=evil.read_bytes())
    assert refused.status_code == 400 and "stay inside the archive" in refused.json()["detail"]


def test_weights_and_quotas_over_the_api_are_admin_only_and_checked(service, tenants):
    """Issue 24: an admin key sets a tenant's weight and quotas; a tenant reads its own usage;
    a submission past a quota is a 429 with the one-line reason; bad settings are 400s."""
    admin, alice = tenants["admin"], tenants["alice"]
    assert alice.put("/v1/tenants/alice", json={"weight": 5}).status_code == 403
    done = admin.put("/v1/tenants/quota-t", json={"weight": 2, "quotas": {"images_per_day": 4}})
    assert done.status_code == 200 and done.json()["weight"] == 2 and done.json()["quotas"] == {"images_per_day": 4}
    for body, field in (({"weight": 0}, "weight"), ({"quotas": {"nope": 1}}, "quota"), ({"weight": "x"}, "weight"),
                        ({"extra": 1}, "body")):
        bad = admin.put("/v1/tenants/quota-t", json=body)
        assert bad.status_code == 400 and field in bad.json()["detail"], (body, bad.text)
    key = service.key("quota-t")
    mine = service.client(key)
    assert mine.post("/v1/batches", json={"prompt": "a fox", "model": "tiny-sd", "seeds": "1-3"}).status_code == 200
    refused = mine.post("/v1/batches", json={"prompt": "a fox", "model": "tiny-sd", "seeds": "4-6"})
    assert refused.status_code == 429
    assert refused.json()["detail"] == "tenant quota-t quota: 1 of 4 images left today; this submission renders 3"
    usage = mine.get("/v1/usage").json()
    assert usage["tenant"] == "quota-t" and usage["usage"]["images_today"] == 3 and usage["left"] == {"images_per_day": 1}
    costs = admin.get("/v1/stats", params={"by": "tenant", "since": "1h"}).json()
    assert costs["by"] == "tenant" and all("gpu_seconds" in row for row in costs["groups"])
    assert alice.get("/v1/stats", params={"by": "tenant"}).status_code == 403
