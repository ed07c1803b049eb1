"""The farm over HTTP (issue 23): ``farm serve``. A FastAPI app over the library API (``app``),
authentication by API key with scopes and a per-address limit on failed attempts (``auth``),
problem-details errors (``problems``), streamed uploads with size limits (``uploads``), and the
server's safe defaults (``server``: loopback unless told, TLS or an explicit proxy otherwise).

Every route but the health checks needs a key; a tenant sees only its own batches, jobs, images
and uploads (another tenant's id answers 404, as an unknown one does) and names no path on the
server's machine. The web framework is imported here and nowhere else.

May import: ``farm.api`` and everything below it. Never the CLI.
"""
