"""A worker's /readyz (its Kubernetes readiness probe) on the metrics port, beside the metrics."""

import urllib.error
import urllib.request

from tests import servers
from workers.metrics import WorkerMetrics


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_readyz_follows_the_worker_and_the_metrics_stay_served():
    state = {"ready": False}
    metrics = WorkerMetrics("farm-cpu0@test")
    metrics.observe({"succeeded": 3}, None, None)
    port = servers.free_port()

    def ready() -> bool:
        if state["ready"] is None:
            raise RuntimeError("the runtime is half built")
        return state["ready"]

    metrics.serve(port, ready=ready)
    base = f"http://127.0.0.1:{port}"
    assert servers.wait_until(lambda: get(f"{base}/readyz"), 10, what="the endpoint") == (503, "not ready\n")
    state["ready"] = True
    assert get(f"{base}/readyz") == (200, "ready\n")
    state["ready"] = None  # a probe that cannot tell says not ready, and the server lives on
    assert get(f"{base}/readyz")[0] == 503
    status, text = get(f"{base}/metrics")
    assert status == 200 and 'farm_jobs_total{outcome="succeeded",worker="farm-cpu0@test"} 3.0' in text


def test_preload_loads_the_served_models_that_stay_resident_and_survives_a_bad_one():
    from types import SimpleNamespace

    from workers.runtime import preload
    from workers.settings import WorkerSettings

    class Renderer:
        def __init__(self):
            self.loaded = []

        def pipeline(self, model):
            if model == "broken":
                raise OSError("no model_index.json")
            self.loaded.append(model)
            return object(), 12.0

    config = SimpleNamespace(queue="farm", max_resident_models=2)
    settings = WorkerSettings.from_env({"FARM_QUEUES": "farm.broken,farm.tiny-sd,farm.tiny-sdxl"})
    renderer = Renderer()
    preload(renderer, settings, config)
    assert renderer.loaded == ["tiny-sd"]  # the first two served models; the broken one logged
    everything = WorkerSettings.from_env({"FARM_QUEUES": "farm.tiny-sd", "FARM_SERVE_ALL_MODELS": "1"})
    preload(renderer, everything, config)
    assert renderer.loaded == ["tiny-sd"]  # a worker of every model has no short list to warm
