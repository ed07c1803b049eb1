"""``farm serve``: the HTTP API on uvicorn, safe by default. It binds 127.0.0.1 unless told; an
address other than loopback needs TLS (``--tls-cert``/``--tls-key``) or an explicit
``--behind-proxy`` (a TLS-terminating proxy in front, which then also supplies the client address
the failed-login limit counts by)."""

from __future__ import annotations

import ipaddress

from farm.errors import InputError

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(host: str, *, tls: bool, behind_proxy: bool) -> None:
    """Refuse to face a network in the clear: keys would travel readable."""
    if not is_loopback(host) and not tls and not behind_proxy:
        raise InputError("host", f"{host} is not a loopback address: give --tls-cert and --tls-key, or "
                                 "--behind-proxy when a TLS proxy in front of it faces the network")


def serve(farm_api, *, host: str = "127.0.0.1", port: int = 8000, tls_cert: str | None = None,
          tls_key: str | None = None, behind_proxy: bool = False, log_level: str = "info") -> None:
    if bool(tls_cert) != bool(tls_key):
        raise InputError("tls", "give both --tls-cert and --tls-key")
    check_binding(host, tls=bool(tls_cert), behind_proxy=behind_proxy)
    import uvicorn

    from farm.service.app import create_app

    farm_api.ledger  # noqa: B018 - the ledger (and its schema) before the first request
    farm_api.secret()
    app = create_app(farm_api)
    from farm.fleet import webhooks
    from farm.fleet.outbound import parse_nets

    # the outbox's deliverer runs beside the API (one in the fleet at a time: it holds a ledger lease)
    webhooks.start(farm_api.ledger, parse_nets(",".join(farm_api.config.webhook_allowed_nets)))
    uvicorn.run(app, host=host, port=port, ssl_certfile=tls_cert, ssl_keyfile=tls_key, log_level=log_level,
                proxy_headers=behind_proxy, forwarded_allow_ips="*" if behind_proxy else None,
                server_header=False, limit_concurrency=512, timeout_keep_alive=5)
