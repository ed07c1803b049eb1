"""`farm serve`: the farm's HTTP API (issue 23), loopback unless told otherwise."""

from __future__ import annotations

import click

from farm.cli import State, cli


@cli.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; anything but loopback needs --tls-cert/--tls-key or --behind-proxy.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--tls-cert", default=None, type=click.Path(exists=True, dir_okay=False), help="PEM certificate.")
@click.option("--tls-key", default=None, type=click.Path(exists=True, dir_okay=False), help="PEM private key.")
@click.option("--behind-proxy", is_flag=True,
              help="A TLS-terminating proxy faces the network and forwards the client's address.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info")
@click.pass_obj
def serve_cmd(state: State, host, port, tls_cert, tls_key, behind_proxy, log_level):
    """Serve the HTTP API (/v1, /openapi.json, /docs) to the keys `farm keys create` makes."""
    from farm.service.server import serve

    serve(state.farm, host=host, port=port, tls_cert=tls_cert, tls_key=tls_key, behind_proxy=behind_proxy,
          log_level=log_level)
