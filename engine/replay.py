"""Re-rendering a job from its ledger record and comparing with the stored image."""

from __future__ import annotations

import io
from pathlib import Path

from farm.errors import NotFound
from farm.ledger import Ledger
from farm.results.artifacts import ArtifactReader


def replay(ledger: Ledger, job_id: int, *, model_cache: Path, device: str = "cpu",
           s3_endpoint_url: str | None = None, store_url: str | None = None) -> dict:
    """``store_url``: the farm's store, where the input images of image jobs are (issue 13)."""
    import numpy as np
    from PIL import Image

    from engine.quiet import quiet_libraries
    from engine.runner import Runner
    from engine.versions import library_versions

    quiet_libraries()
    [view] = ledger.list_jobs(job_id=job_id) or [None]
    if view is None:
        raise NotFound(f"no job {job_id}")
    source = view
    if view.reused_from:  # its image was rendered by an earlier job with the same digest
        [source] = ledger.list_jobs(job_id=view.reused_from)
    if view.artifact is None:
        raise NotFound(f"job {job_id} has no stored image to compare with (state {view.state})")
    environment = source.environment or {}
    runner = Runner(device=device, model_cache=model_cache, catalog=ledger.catalog, s3_endpoint_url=s3_endpoint_url,
                    fuse=bool(environment.get("fused")), bucket=environment.get("batch_bucket"),
                    store_url=store_url)
    rendered = runner.render([view.spec])
    stored = ArtifactReader(s3_endpoint_url).read(view.artifact.store_url, view.artifact.key, view.artifact.sha256)
    if view.spec.clip:  # issue 27: every frame of the clip (a WebP clip is lossless: exact frames)
        from engine.clips import read_frames

        before = np.stack(read_frames(stored)).astype(int)
    else:
        before = np.asarray(Image.open(io.BytesIO(stored)).convert("RGB")).astype(int)
    after = rendered.pixels[0].astype(int)
    difference = np.abs(before - after)
    notes = []
    versions = library_versions()
    for package, version in (environment.get("versions") or {}).items():
        if versions.get(package) != version:
            notes.append(f"{package} {version} then, {versions.get(package)} now")
    for name, digest in (environment.get("adapter_sha256") or {}).items():
        now = (rendered.environment or {}).get("adapter_sha256", {}).get(name)
        if digest and now and digest != now:
            notes.append(f"adapter {name} changed (sha256 {digest[:12]} then, {now[:12]} now)")
    if environment.get("device") and environment["device"] != str(runner.device):
        notes.append(f"rendered on {environment['device']}, replayed on {runner.device}")
    return {"job": job_id, "max_difference": int(difference.max()), "differing_values": int((difference > 0).sum()),
            "values": int(difference.size), "device": str(runner.device), "notes": notes}
