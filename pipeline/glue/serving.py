"""``occmap serve``: the registered estimator over REST, bounded.

The protocol is MLflow's scoring protocol for tensors, so a client of
``mlflow models serve`` works unchanged: ``POST /invocations`` with a JSON body
``{"inputs": stamps}`` (or ``"instances"``), stamps (N, H, W, C) in [0, 1], optionally
``"params": {"allow_out_of_range": true}``; the answer is ``{"predictions": {"maps": maps,
"target": ..., "base_prob": ..., "doubt": ...}}`` (MLflow's shape for a model with named
outputs): maps (N, H, W) float32 in [-1, 1], the explained (predicted) class (N,) (0 bogus,
1 real), its probability (N,) and the doubt per map (N,) in [0, 2] where the version has
one (``pipeline.glue.pyfunc``). Errors are ``{"error_code": ..., "message": ...}`` as in MLflow,
but the message gives the reason only, never the request's data.

Bounds (what MLflow's own server lacks):
- a request body larger than ``max_request_bytes`` is answered 413 without being kept
  (known from its Content-Length, or while it streams in when it has none; up to
  ``DRAIN_FACTOR`` times the limit it is read and discarded first, so the client can read
  the answer);
- more than ``max_stamps`` stamps in one request: 413;
- one request is parsed and explained at a time (the others wait before their bodies are
  read), so the server's memory is bounded by one largest request: the body, its parsed
  form and the float32 stamps and maps.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json

DEFAULT_MAX_STAMPS = 1000
# ~20 bytes of JSON per value: 1,000 HiTS stamps (21x21x4) are ~35 MB
DEFAULT_MAX_REQUEST_BYTES = 64 * 2**20
# An over-long body of up to this many times the limit is read and discarded before the
# 413 (so an ordinary client can read the answer); a longer one is answered at once and
# its connection closed.
DRAIN_FACTOR = 4


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where there is no glibc."""
    import ctypes
    import ctypes.util

    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    return trim


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the system (glibc ``malloc_trim``): a request's
    parsed lists are freed but their pages stay with the process, which then grows by a
    little after each large request. Elsewhere (no glibc) nothing."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def error(status: int, code: str, message: str):
    """A JSON error response in MLflow's shape."""
    from starlette.responses import JSONResponse

    return JSONResponse({"error_code": code, "message": message}, status_code=status)


def parse_request(body: bytes, max_stamps: int) -> tuple[object, dict]:
    """(stamps as parsed, params) of an invocation body; ``ValueError`` with the reason
    (never the data) for a body that is not such a request, ``OverflowError`` for more
    than ``max_stamps`` stamps."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"the body is not valid JSON ({type(err).__name__} at "
                         f"{getattr(err, 'pos', '?')})") from None
    if not isinstance(payload, dict):
        raise ValueError("the body must be a JSON object with 'inputs' (or 'instances')")
    keys = [key for key in ("inputs", "instances") if key in payload]
    if len(keys) != 1:
        raise ValueError("the body must hold exactly one of 'inputs' or 'instances' (the "
                         f"stamps); it has keys {sorted(payload)[:10]}")
    stamps, params = payload[keys[0]], payload.get("params") or {}
    if not isinstance(params, dict):
        raise ValueError("'params' must be a JSON object")
    unknown = set(params) - {"allow_out_of_range"}
    if unknown:
        raise ValueError(f"unknown params {sorted(unknown)}; this model takes "
                         "'allow_out_of_range' (boolean)")
    if not isinstance(params.get("allow_out_of_range", False), bool):
        raise ValueError("'allow_out_of_range' must be true or false")
    if not isinstance(stamps, list):
        raise ValueError(f"'{keys[0]}' must be a list of stamps (N, H, W, C)")
    if len(stamps) > max_stamps:
        raise OverflowError(f"{len(stamps)} stamps in one request; this server takes at most "
                            f"{max_stamps} (send them in several requests)")
    return stamps, params


def make_app(estimator, model_uri: str, max_stamps: int = DEFAULT_MAX_STAMPS,
             max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES):
    """The ASGI app serving ``estimator`` (a loaded ``pyfunc.OcclusionEstimator``) under the
    bounds above; ``model_uri`` is reported by ``GET /version``."""
    from starlette.applications import Starlette
    from starlette.requests import ClientDisconnect
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    one_at_a_time = asyncio.Semaphore(1)
    worker = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="explain")

    async def ping(request):
        return Response("\n", media_type="application/json")

    async def version(request):
        return JSONResponse({"model_uri": model_uri, "max_stamps": max_stamps,
                             "max_request_bytes": max_request_bytes})

    async def read_body(request) -> bytes | None:
        """The body, or None as soon as it is longer than ``max_request_bytes``."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_request_bytes:
            if int(declared) <= DRAIN_FACTOR * max_request_bytes:
                await drain(request)
            return None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_request_bytes:
                await drain(request)
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def drain(request) -> None:
        """Read the rest of an over-long body without keeping it: a client that sends its
        whole body before reading the answer (most do) then sees the 413 instead of a
        reset connection."""
        async for _ in request.stream():
            pass

    async def invocations(request):
        content_type = request.headers.get("content-type", "").split(";")[0].strip()
        if content_type != "application/json":
            return error(415, "BAD_REQUEST", "send the stamps as application/json "
                         f"({{\"inputs\": stamps}}); got content type {content_type!r}")
        too_large = (f"the request is larger than {max_request_bytes} bytes, this server's "
                     f"limit (at most {max_stamps} stamps per request)")
        async with one_at_a_time:
            try:
                body = await read_body(request)
            except ClientDisconnect:
                return Response(status_code=400)
            if body is None:
                return error(413, "REQUEST_LIMIT_EXCEEDED", too_large)
            try:
                # parsing, the maps and the answer's JSON in one worker thread: the big
                # allocations then come from one malloc arena and are reused request after
                # request (thread pools spread them over many, and memory creeps up)
                text = await asyncio.get_running_loop().run_in_executor(
                    worker, answer, body)
            except OverflowError as err:
                return error(413, "REQUEST_LIMIT_EXCEEDED", str(err))
            except ValueError as err:
                return error(400, "INVALID_PARAMETER_VALUE", str(err))
            return Response(text, media_type="application/json")

    def answer(body: bytes) -> str:
        try:
            stamps, params = parse_request(body, max_stamps)
            outputs = estimator.explained(stamps, params.get("allow_out_of_range", False))
            return json.dumps({"predictions": {name: value.tolist()
                                               for name, value in outputs.items()}})
        finally:
            release_freed_memory()

    return Starlette(routes=[
        Route("/ping", ping), Route("/health", ping), Route("/version", version),
        Route("/invocations", invocations, methods=["POST"]),
    ])
