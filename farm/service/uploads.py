"""Request bodies read with a limit: chunk by chunk, refused with 413 the moment they pass it,
into memory for small JSON and into a temporary file for uploads (never whole in memory)."""

from __future__ import annotations

import json
import tempfile

from fastapi import Request

from farm.service.problems import HTTPProblem

MAX_JSON_BYTES = 1 << 20  # a submission's JSON: prompts, axes, wildcards
SPOOL_BYTES = 1 << 20  # uploads past this go to disk while they arrive


def _declared_too_big(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPProblem(400, "Content-Length: not a number")
        if int(declared) > limit:
            raise HTTPProblem(413, f"the body is {declared} bytes; the limit is {limit}")


async def read_json(request: Request, limit: int = MAX_JSON_BYTES) -> dict:
    """The body as a JSON object (an empty body is ``{}``)."""
    _declared_too_big(request, limit)
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise HTTPProblem(413, f"the body is over the limit of {limit} bytes")
    if not data.strip():
        return {}
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPProblem(400, f"the body is not JSON ({type(exc).__name__})") from None
    if not isinstance(value, dict):
        raise HTTPProblem(400, "the body must be a JSON object")
    return value


async def spool(request: Request, limit: int):
    """The body in a temporary file (rewound), at most ``limit`` bytes; the caller closes it."""
    _declared_too_big(request, limit)
    handle = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPProblem(413, f"the upload is over the limit of {limit} bytes")
            handle.write(chunk)
    except BaseException:
        handle.close()
        raise
    if size == 0:
        handle.close()
        raise HTTPProblem(400, "the upload is empty")
    handle.seek(0)
    return handle
