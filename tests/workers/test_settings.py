"""A worker process's settings: read from its environment once, bad values named."""

import pytest

from farm.errors import ConfigError
from workers.settings import WorkerSettings


def test_settings_from_the_environment():
    s = WorkerSettings.from_env({"FARM_WORKER_NAME": "farm-gpu1@h", "FARM_DEVICE": "cuda:1",
                                 "FARM_QUEUES": "farm.tiny-sd,farm.tiny-sdxl", "FARM_SERVE_ALL_MODELS": "1",
                                 "FARM_TORCH_THREADS": "2", "FARM_METRICS_PORT": "9400", "FARM_LOG_FORMAT": "JSON"})
    assert (s.name, s.device, s.queues) == ("farm-gpu1@h", "cuda:1", ("farm.tiny-sd", "farm.tiny-sdxl"))
    assert (s.serve_all_models, s.torch_threads, s.metrics_port, s.metrics_addr, s.log_format) == \
        (True, 2, 9400, "127.0.0.1", "json")
    default = WorkerSettings.from_env({})
    assert (default.device, default.queues, default.metrics_port, default.log_format) == ("cpu", (), 0, "text")
    assert default.name.startswith("farm-")
    assert (default.stop_grace_s, default.preload) == (0, False)  # hand back at once, load on first use
    pod = WorkerSettings.from_env({"FARM_STOP_GRACE_S": "90", "FARM_PRELOAD": "1"})
    assert (pod.stop_grace_s, pod.preload) == (90, True)


@pytest.mark.parametrize("variable,value", [("FARM_DEVICE", "gpu0"), ("FARM_TORCH_THREADS", "many"),
                                            ("FARM_METRICS_PORT", "70000"), ("FARM_LOG_FORMAT", "xml"),
                                            ("FARM_STOP_GRACE_S", "-1"), ("FARM_PRELOAD", "yes")])
def test_bad_settings_name_the_variable(variable, value):
    with pytest.raises(ConfigError, match=f"^{variable}: "):
        WorkerSettings.from_env({variable: value})
