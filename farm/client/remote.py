"""``farm.Farm.remote(url, key)``: the library API over HTTP (issue 23), for a machine with no
database or broker settings at all. The methods the CLI and scripts use (submit, status, wait,
jobs, download, cancel, retry, pause, resume, distill, the registries) answer as the local ones do;
images are verified by sha256 like local ones. Errors come back as the farm's own error classes,
with the server's one-line message."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import TextIO

from farm.errors import ConflictError, FarmError, FarmTimeout, InfrastructureError, InputError, NotFound
from farm.jobs import states

TIMEOUT_S = 60.0
RECHECK_S = 3.0  # a wait reads a batch's counts this often when no event wakes it
LOCAL_ONLY = "runs where the farm's database is; FARM_URL names a remote farm (unset it, or ask its operator)"


class Row(dict):
    """A record from the server (a job, a registered file) with the local values' ``as_dict``."""

    def as_dict(self) -> dict:
        return dict(self)

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class RemoteFarm:
    """A client of a farm's HTTP API: ``RemoteFarm(url, key)``; close it, or use it with ``with``."""

    def __init__(self, url: str, key: str, *, timeout: float = TIMEOUT_S, verify: bool | str = True):
        import httpx

        if not url.startswith(("http://", "https://")):
            raise InputError("FARM_URL", f"{url!r}: expected http(s)://host:port")
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout,
                                 verify=verify)

    def __enter__(self) -> "RemoteFarm":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        raise InputError(None, f"{name.replace('_', ' ')}: {LOCAL_ONLY}")

    # -- transport ---------------------------------------------------------------------------------------
    def _call(self, method: str, path: str, **kwargs):
        import httpx

        try:
            answer = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise InfrastructureError(f"cannot reach the farm at {self.url}: {exc}") from None
        if answer.status_code >= 400:
            try:
                detail = answer.json().get("detail") or answer.text
            except ValueError:
                detail = answer.text.strip()[:300] or answer.reason_phrase
            error = {400: InputError, 404: NotFound, 409: ConflictError, 413: InputError}.get(answer.status_code)
            if error is InputError:
                raise InputError(None, detail)
            if error is not None:
                raise error(detail)
            if answer.status_code in (401, 403, 429):
                raise FarmError(f"{detail} (HTTP {answer.status_code})")
            raise InfrastructureError(f"the farm answered {answer.status_code}: {detail}")
        return answer

    def _json(self, method: str, path: str, **kwargs):
        return self._call(method, path, **kwargs).json()

    # -- submitting --------------------------------------------------------------------------------------
    def upload(self, path: str | os.PathLike, *, mask: bool = False) -> str:
        """Upload an image; its content id (``input:<sha256>``) for a submission."""
        path = Path(path).expanduser()
        try:
            with open(path, "rb") as handle:
                body = self._json("POST", "/v1/inputs", params={"kind": "mask" if mask else "image"},
                                  content=handle, headers={"Content-Type": "application/octet-stream"})
        except FileNotFoundError:
            raise InputError(None, f"{path}: no such file") from None
        except IsADirectoryError:
            raise InputError(None, f"{path}: is a directory") from None
        return body["input"]

    def submit_request(self, body: dict, *, key: str | None = None, force: bool = False,
                       dry_run: bool = False) -> dict:
        """Submit the fields of a spec (``farm submit --json``'s answer, or the dry run's)."""
        headers = {"Idempotency-Key": key} if key else {}
        return self._json("POST", "/v1/batches", json=body, headers=headers,
                          params={"dry_run": str(dry_run).lower(), "force": str(force).lower()})

    def submit(self, prompt: str | None = None, *, key: str | None = None, force: bool = False, **options) -> str:
        """Like ``Farm.submit``: the batch id."""
        return self.submit_request(request_body(prompt, upload=self.upload, **options), key=key, force=force)["batch"]

    def submit_spec(self, path: str | os.PathLike, **overrides) -> str:
        return self.submit(spec=os.fspath(path), **overrides)

    def distill(self, teacher: str, data: str, name: str, **options) -> str:
        return self.distill_request(teacher, data, name, **options)["batch"]

    def upload_dataset(self, folder: str | os.PathLike) -> str:
        """Upload a local dataset folder (NAME.png + NAME.txt, or a metadata.jsonl) as a tar; its
        content id (``dataset:<sha256>``) for a distillation."""
        import tarfile

        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise InputError("data", f"{folder}: no such directory")
        with tempfile.TemporaryFile() as handle:
            with tarfile.open(fileobj=handle, mode="w") as tar:
                for path in sorted(p for p in folder.iterdir() if p.is_file()):
                    tar.add(path, arcname=path.name)
            handle.seek(0)
            return self._json("POST", "/v1/datasets", content=handle,
                              headers={"Content-Type": "application/octet-stream"})["dataset"]

    def distill_request(self, teacher: str, data: str, name: str, **options) -> dict:
        """``data``: ``batch:ID``, an s3:// prefix the tenant may read, ``dataset:<sha256>``, or a
        local folder (uploaded first)."""
        if not data.startswith(("batch:", "s3://", "dataset:")):
            data = self.upload_dataset(data)
        body = {"teacher": teacher, "data": data, "name": name, **{k: v for k, v in options.items() if v is not None}}
        return self._json("POST", "/v1/distill", json=body)

    # -- watching ----------------------------------------------------------------------------------------
    def status(self, batch: str):
        body = self._json("GET", f"/v1/batches/{batch}")
        info = SimpleNamespace(id=body["batch"], job_count=body["jobs"], created_at=datetime.fromisoformat(
            body["created_at"]), base_seed=body["base_seed"], model=body["model"], recipe=body["recipe"],
                               priority=body["priority"], state=body["state"])
        return SimpleNamespace(batch=info, counts=body["counts"], done=body["done"])

    def batch_counts(self, batch: str) -> dict[str, int]:
        return self._json("GET", f"/v1/batches/{batch}")["counts"]

    def wait(self, batch: str, timeout: float | None = None, progress: TextIO | bool | None = None) -> dict[str, int]:
        """Until every job of the batch has finished; its counts per state (FarmTimeout after ``timeout``)."""
        from farm.client.events import Listener
        from farm.results.progress import watch

        stream = sys.stderr if progress is True else (progress or None)
        total = self.status(batch).batch.job_count
        # woken by the batch's events (GET /v1/events), not polling: the counts are read again when
        # something happened, or every few seconds should the stream be down
        listener = Listener(self.http, batch)
        listener.start()
        listener.connected.wait(5.0)  # from here on nothing is missed: read the counts after it
        try:
            counts = watch(lambda: self.batch_counts(batch), total, stream=stream, timeout=timeout,
                           interval=RECHECK_S, sleep=listener.wait_moved)
        finally:
            listener.stop()
        done = sum(counts[s] for s in states.TERMINAL)
        if done < total:
            raise FarmTimeout(batch, counts, timeout or 0, done)
        return counts

    def jobs(self, batch: str | None = None, state: str | None = None, limit: int | None = None) -> list[Row]:
        if batch is not None:
            params = {k: v for k, v in (("state", state), ("limit", limit)) if v is not None}
            return [Row(r) for r in self._json("GET", f"/v1/batches/{batch}/jobs", params=params)]
        params = {k: v for k, v in (("state", state), ("limit", limit or 10_000)) if v is not None}
        return [Row(r) for r in self._json("GET", "/v1/jobs", params=params)]

    def batches(self, limit: int = 50) -> list[Row]:
        return [Row(r) for r in self._json("GET", "/v1/batches", params={"limit": limit})]

    # -- results -----------------------------------------------------------------------------------------
    def image(self, job: dict) -> bytes:
        """A job's PNG, checked against its sha256 (as a local download is)."""
        data = self._call("GET", f"/v1/jobs/{job['id']}/image").content
        digest = hashlib.sha256(data).hexdigest()
        if digest != job["sha256"]:
            raise InfrastructureError(f"job {job['id']}: the image does not match its sha256 "
                                      f"({digest[:12]} != {job['sha256'][:12]})")
        return data

    def download(self, batch: str, out: str | os.PathLike) -> list[Path]:
        """The batch's images into ``out`` (verified), with an ``index.html`` gallery."""
        from farm.results.gallery import gallery_html, output_name

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for job in self.jobs(batch):
            if not job.get("sha256") or not job.get("artifact"):
                continue
            target = out / output_name(job["index"], job["seed"], job["artifact"])
            fd, tmp = tempfile.mkstemp(prefix=".part-", dir=out)
            with os.fdopen(fd, "wb") as handle:
                handle.write(self.image(job))
            os.replace(tmp, target)
            written.append((target, job))
        (out / "index.html").write_text(gallery_html(batch, [(p.name, job) for p, job in written]), encoding="utf-8")
        return [p for p, _ in written]

    # -- control -----------------------------------------------------------------------------------------
    def cancel(self, batch: str, running: bool = False) -> int:
        return self._json("POST", f"/v1/batches/{batch}/cancel", params={"running": str(running).lower()})["cancelled"]

    def retry(self, batch: str, failed_only: bool = False):
        body = self._json("POST", f"/v1/batches/{batch}/retry", params={"failed_only": str(failed_only).lower()})
        return SimpleNamespace(batch=batch, job_ids=body["job_ids"], messages=body["messages"])

    def pause(self, batch: str) -> None:
        self._json("POST", f"/v1/batches/{batch}/pause")

    def resume(self, batch: str):
        body = self._json("POST", f"/v1/batches/{batch}/resume")
        return SimpleNamespace(batch=batch, job_ids=body["job_ids"], messages=body.get("messages", 0))

    # -- webhooks (issue 25): the key's tenant's own ------------------------------------------------------
    def add_webhook(self, url: str, *, tenant: str | None = None, events: str | list[str] | None = None,
                    batch: str | None = None) -> dict:
        kinds = events.split(",") if isinstance(events, str) else events
        body = {"url": url, **({"events": kinds} if kinds and kinds != ["*"] else {}),
                **({"batch": batch} if batch else {}), **({"tenant": tenant} if tenant not in (None, "local") else {})}
        return self._json("POST", "/v1/webhooks", json=body)

    def webhooks(self, tenant: str | None = None) -> list[dict]:
        return [w for w in self._json("GET", "/v1/webhooks") if tenant is None or w["tenant"] == tenant]

    def remove_webhook(self, endpoint_id: int, tenant: str | None = None) -> dict:
        return self._json("DELETE", f"/v1/webhooks/{endpoint_id}")

    def webhook_deliveries(self, endpoint_id: int | None = None, *, tenant: str | None = None, failed: bool = False,
                           limit: int = 100) -> list[dict]:
        ids = [endpoint_id] if endpoint_id is not None else [w["id"] for w in self.webhooks()]
        rows = [r for i in ids for r in self._json("GET", f"/v1/webhooks/{i}/deliveries",
                                                     params={"failed": str(failed).lower(), "limit": limit})]
        return sorted(rows, key=lambda r: r["id"], reverse=True)[:limit]

    # -- what the farm can load --------------------------------------------------------------------------
    def catalog(self):
        def named(path: str) -> dict:
            return {r["name"]: Row(r) for r in self._json("GET", f"/v1/{path}")}

        return SimpleNamespace(models=named("models"), adapters=named("adapters"), embeddings=named("embeddings"),
                               controlnets=named("controlnets"))


# -- from command-line options to a spec's fields -------------------------------------------------------
IMAGE_OPTIONS = ("init_image", "mask_image", "control_image")
PASSED_AS_IS = ("seed", "seeds", "model", "recipe", "steps", "guidance", "size", "negative", "decoder", "accelerator",
                "kind", "mask_blur", "strength", "controlnet", "control_scale", "control_preprocess", "upscale",
                "frames", "fps", "motion", "video_format")  # issue 27: clips


def request_body(prompt: str | None = None, *, upload, file=None, spec=None, variants: int = 1, adapters=(),
                 wildcards=None, wildcard_mode=None, wildcard_count=None, priority: int = 0, from_batch=None,
                 **options) -> dict:
    """The JSON a remote submission sends for ``farm submit``'s options: a spec file's fields, the
    options over them, local images uploaded (``input:<sha256>``), ``job:ID`` and ``s3://`` as given."""
    if from_batch is not None:
        raise InputError("from_batch", f"--from-batch {LOCAL_ONLY}; give the images as job:ID")
    body: dict = {}
    if spec is not None:  # read here, checked on the server by the same parser as a local spec file
        path = Path(spec)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError("spec", f"{spec}: {exc.strerror}") from None
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            try:
                body = yaml.safe_load(text) or {}
            except yaml.YAMLError as exc:
                raise InputError("spec", f"{spec}: invalid YAML ({exc})") from None
        else:
            try:
                body = json.loads(text)
            except ValueError as exc:
                raise InputError("spec", f"{spec}: invalid JSON ({exc})") from None
        if not isinstance(body, dict):
            raise InputError("spec", f"{spec}: expected a mapping at the top level")
    if file is not None:
        if not str(file).lower().endswith(".txt"):
            raise InputError("file", "a remote submission reads prompts from a .txt file (or use --spec)")
        try:
            lines = Path(file).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise InputError("file", f"{file}: {exc.strerror}") from None
        body["prompts"] = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if prompt is not None:
        body["prompt"] = prompt
    if variants != 1:
        body["variants"] = variants
    if priority:
        body["priority"] = priority
    for name in PASSED_AS_IS:
        value = options.pop(name, None)
        if value is not None:
            body[name] = value
    for name in IMAGE_OPTIONS:
        value = options.pop(name, None)
        refs = [value] if isinstance(value, str) else list(value or ())
        refs = [r if r.startswith(("job:", "s3://", "input:")) else upload(r, mask=name == "mask_image") for r in refs]
        if refs:
            body[name] = refs[0] if len(refs) == 1 else refs
    for adapter in adapters:
        name, _, weights = adapter.partition(":")
        values = [w for w in weights.split(",") if w] if weights else []
        if len(values) > 1:
            body[f"adapter:{name}"] = values
        else:
            body.setdefault("adapters", []).append(adapter)
    if wildcards is not None or wildcard_mode is not None:
        settings = dict(body.get("wildcards") or {})
        if wildcards is not None:
            folder = Path(wildcards)
            if not folder.is_dir():
                raise InputError("wildcards", f"{wildcards}: no such directory")
            lists = dict(settings.get("lists") or {})
            for path in sorted(folder.glob("*.txt")):
                lists[path.stem] = [x.strip() for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
            settings["lists"] = lists
        if wildcard_mode is not None:
            settings["mode"] = wildcard_mode
        if wildcard_count is not None:
            settings["count"] = wildcard_count
        body["wildcards"] = settings
    unknown = sorted(k for k, v in options.items() if v not in (None, (), []))
    if unknown:
        raise InputError(unknown[0], f"not available remotely ({LOCAL_ONLY})")
    return body
