"""Security: Redis with an ACL user and password, TLS (rediss://) verified against a CA, secrets
from files and never printed, messages that carry job ids only, GET-only presigned URLs."""

from __future__ import annotations

import base64
import datetime
import json
import socket
import ssl
import threading
import urllib.request

import pytest

from tests import servers
from tests.faults.harness import FaultFarm

pytestmark = [pytest.mark.redis]


def make_ca_and_server_cert(directory):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("farm test CA")).issuer_name(name("farm test CA"))
          .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("localhost")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(2).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                               serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()))
    return directory / "ca.pem"


class TLSProxy:
    """TLS termination in front of a plain Redis, like a cloud Redis endpoint."""

    def __init__(self, target_port: int, cert, key):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.target_port = target_port
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                raw, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw):
        try:
            client = self.context.wrap_socket(raw, server_side=True)
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
        except (OSError, ssl.SSLError):
            raw.close()
            return
        def pipe(a, b):
            try:
                while data := a.recv(65536):
                    b.sendall(data)
            except OSError:
                pass
            finally:
                for s in (a, b):
                    try:
                        s.close()
                    except OSError:
                        pass
        threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
        pipe(upstream, client)

    def close(self):
        self.server.close()


@pytest.fixture
def locked_redis(tmp_path):
    server = servers.start_redis(tmp_path / "redis", password="admin-secret")
    client = server.client()
    client.execute_command("ACL", "SETUSER", "farm", "on", ">farm-secret", "~*", "&*", "+@all")
    yield server
    server.stop()


def run_one_job(farm: FaultFarm) -> dict:
    farm.start()
    batch = farm.submit("secure", 2)["batch"]
    farm.wait_done(batch, 2, timeout=60)
    return farm.audit(batch)


@pytest.mark.workers
def test_acl_user_and_password(tmp_path, locked_redis):
    url = f"redis://farm:farm-secret@127.0.0.1:{locked_redis.port}/0"
    farm = FaultFarm(tmp_path, url, seconds=0.05, workers=1)
    try:
        assert run_one_job(farm)["lost"] == 0
        out = farm.cli("up", "--workers", "1", "--json")  # a password never reaches the terminal
        assert "farm-secret" not in out.stdout and ":***@" in json.loads(out.stdout)["broker"]
        farm.cli("down")
        wrong = FaultFarm(tmp_path / "wrong", url.replace("farm-secret", "nope"), seconds=0.05, workers=1)
        result = wrong.cli("submit", "x", check=False)
        assert result.returncode == 3 and len(result.stderr.strip().splitlines()) == 1
        assert "nope" not in result.stderr and "farm-secret" not in result.stderr
    finally:
        farm.close()
    log = (tmp_path / "workers.log").read_text(errors="replace")
    assert "farm-secret" not in log


@pytest.mark.workers
def test_tls_broker_verified_against_a_ca(tmp_path, locked_redis):
    ca = make_ca_and_server_cert(tmp_path)
    proxy = TLSProxy(locked_redis.port, tmp_path / "server.pem", tmp_path / "server.key")
    url = f"rediss://farm:farm-secret@localhost:{proxy.port}/0"
    secret_file = tmp_path / "broker-url"
    secret_file.write_text(url + "\n")
    farm = FaultFarm(tmp_path, "", seconds=0.05, workers=1,
                     extra={"FARM_BROKER_URL_FILE": str(secret_file), "FARM_REDIS_CA_FILE": str(ca)})
    farm.env.pop("FARM_BROKER_URL")
    try:
        assert run_one_job(farm)["lost"] == 0
        untrusted = FaultFarm(tmp_path / "untrusted", url, seconds=0.05, workers=1)  # no CA: must refuse
        result = untrusted.cli("submit", "x", check=False)
        assert result.returncode == 3 and "certificate" in result.stderr.lower()
    finally:
        farm.close()
        proxy.close()


def test_messages_carry_job_ids_only(tmp_path, redis_server):
    farm = FaultFarm(tmp_path, redis_server.url, extra={"FARM_QUEUE": "ids-only"})
    batch = farm.submit("a secret prompt about a lighthouse", 2, 5, "--negative", "private")["batch"]
    client = redis_server.client()
    [key] = [k for k in client.keys("ids-only.*") if client.llen(k)]
    raw = client.lrange(key, 0, -1)
    assert len(raw) == 2
    for item in raw:
        message = json.loads(item)
        body = json.loads(base64.b64decode(message["body"]))
        assert body[0] == [[int(j) for j in body[0][0]]] and body[1] == {}
        text = item.decode()
        assert "lighthouse" not in text and "private" not in text and batch not in text
    client.delete(key)


@pytest.mark.s3
def test_presigned_urls_are_get_only_and_bounded(tmp_path, s3_server, s3_bucket, monkeypatch):
    from click.testing import CliRunner

    from farm.cli import cli
    from farm.jobs.plan import plan
    from farm.jobs.spec import Catalog, JobRequest
    from farm.jobs.variants import PromptRow
    from farm.ledger import Ledger
    from farm.storage import open_store

    monkeypatch.setenv("FARM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FARM_S3_ENDPOINT_URL", s3_server.endpoint)
    ledger = Ledger(f"sqlite:///{tmp_path / 'home' / 'ledger.db'}")
    import random

    p = plan([PromptRow(JobRequest(prompt="x"))], JobRequest(), variants=1, seed=1, catalog=Catalog(),
             default_model="tiny-sd", rng=random.Random(0))
    new = ledger.create_batch(specs=p.specs, spec={}, request_digest="d", base_seed=1)
    [claim] = ledger.claim(new.job_ids, worker="w", device="cpu", lease_s=60)
    store = open_store(f"s3://{s3_bucket}/p", s3_endpoint_url=s3_server.endpoint)
    store.put("batches/b/00000-1.png", b"png bytes", "image/png")
    from farm.ledger import Artifact

    ledger.complete(claim.job_id, claim.token, artifact=Artifact(
        store_url=store.url, key="batches/b/00000-1.png", sha256="0" * 64, bytes=9, width=64,
        height=64, content_type="image/png"), timings={}, batch_size=1)
    runner = CliRunner()
    result = runner.invoke(cli, ["results", "url", str(claim.job_id), "--expires", "15m", "--json"])
    assert result.exit_code == 0, result.stderr
    link = json.loads(result.stdout)["url"]
    assert "X-Amz-Expires=900" in link
    assert urllib.request.urlopen(link).read() == b"png bytes"
    # SigV4 signs the method: the same object and expiry signed for PUT gives another signature,
    # so a server that checks signatures (S3, MinIO, R2; moto does not) refuses a PUT with this link
    from urllib.parse import parse_qs, urlparse

    signed = parse_qs(urlparse(link).query)
    put_link = store.client.generate_presigned_url("put_object", Params={"Bucket": s3_bucket,
                                                   "Key": "p/batches/b/00000-1.png"}, ExpiresIn=900)
    assert signed["X-Amz-Signature"] != parse_qs(urlparse(put_link).query)["X-Amz-Signature"]
    assert signed["X-Amz-SignedHeaders"] == ["host"]
    too_long = runner.invoke(cli, ["results", "url", str(claim.job_id), "--expires", "30d"])
    assert too_long.exit_code == 2 and "outside 1s..7d" in too_long.stderr
    ledger.close()
