"""farm: a render farm for few-step diffusion image generation.

This package is the library (``farm.Farm``: submit, wait, download, cancel, retry), the producer,
the ledger and the admin CLI. It never imports torch, diffusers, peft or PIL, nor the worker
process package: rendering lives in ``engine``, the Celery worker process in ``workers``.

``import farm`` stays light: the API (and with it the ledger and the broker client) is imported
when ``farm.Farm`` is first used.
"""

from farm.errors import (
    ConfigError,
    ConflictError,
    FarmError,
    FarmTimeout,
    InfrastructureError,
    InputError,
    NotFound,
)

__version__ = "0.1.0"

# name -> module that defines it, imported on first access (PEP 562)
_LAZY = {
    "Farm": "farm.api",
    "FarmWarning": "farm.api",
    "Requeued": "farm.api",
    "plan_submission": "farm.jobs.planning",
}

__all__ = ["Farm", "FarmError", "FarmTimeout", "FarmWarning", "InputError", "ConfigError", "ConflictError",
           "InfrastructureError", "NotFound", "Requeued", "plan_submission"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'farm' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
