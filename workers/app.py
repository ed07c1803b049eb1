"""The Celery app of a worker process.

Importing this module does not import torch: the pipelines load when the worker starts
(``workers.runtime``), inside the one process that renders (solo pool, nothing forks after).
"""

from __future__ import annotations

from farm.config import load_config
from farm.fleet.dispatch import make_celery
from farm.fleet.localfarm import broker_url_for

config = load_config()
app = make_celery(config, broker_url_for(config), main="farm-worker")
app.conf.include = ["workers.tasks"]
