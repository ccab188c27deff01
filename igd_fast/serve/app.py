"""The FastAPI application over a calibrated :class:`igd_fast.score.Scorer`.

``POST /v1/predict`` (an image as the raw body or multipart field ``image``; ``?map=1``,
``?mask=1`` add the anomaly map and pred_mask as base64 PNG), ``GET /healthz`` (the process
answers), ``GET /readyz`` (model loaded, calibrated, worker running), ``GET /metrics``
(Prometheus). Every refusal is a 4xx JSON body ``{"error", "detail", "status"}``; only a
failure of the service itself is a 5xx (503 overloaded, 504 timed out, 500 a bug)."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from .auth import check_key
from .batching import MicroBatcher
from .bodies import read_image
from .encode import prediction_json
from .errors import ApiError
from .metrics import CONTENT_TYPE, Metrics
from .settings import ServeSettings

PATHS = ("/v1/predict", "/healthz", "/readyz", "/metrics")
log = logging.getLogger("igd_fast.serve")


class Service:
    """What the routes share: the scorer behind the micro-batcher, the settings, the metrics."""

    def __init__(self, scorer: Any, settings: ServeSettings) -> None:
        self.scorer, self.settings, self.metrics = scorer, settings, Metrics()
        post = scorer.post_processor  # calibrates now (or reads threshold.json), not on the first request
        self.map_range = post.map_range
        self.calibrated = post.threshold is not None
        self.arriving = 0  # requests being read and decoded, not yet queued (read by the worker thread)
        self.batcher = MicroBatcher(scorer.predict, settings.max_batch, settings.max_wait_ms / 1000.0,
                                    settings.max_queue, self.metrics.batch, lambda: self.arriving)  # fmt: skip

    @property
    def ready(self) -> bool:
        return self.calibrated and self.batcher.alive

    def authorize(self, request: Request) -> None:
        if self.settings.auth:
            check_key(request.headers, self.settings.api_keys)

    async def predict(self, request: Request, want_map: bool, want_mask: bool) -> dict:
        self.authorize(request)
        self.arriving += 1
        try:
            image = await read_image(request, self.settings)
        finally:
            self.arriving -= 1
        self.metrics.waiting.set(self.batcher.waiting)
        try:
            p = await self.batcher.submit(image)
        except ApiError:
            raise
        except Exception as e:  # noqa: BLE001 - the scorer failed: logged, answered 500, the service goes on
            log.exception("scoring failed")
            raise ApiError(500, "internal", f"scoring failed: {type(e).__name__}: {e}") from None
        if not (want_map or want_mask):
            return prediction_json(p, self.map_range, False, False)
        return await run_in_threadpool(prediction_json, p, self.map_range, want_map, want_mask)


def _error(e: ApiError, metrics: Metrics) -> JSONResponse:
    metrics.errors.labels(e.reason).inc()
    return JSONResponse(e.body(), e.status, headers=e.headers)


def _handlers(app: FastAPI, metrics: Metrics) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return _error(e, metrics)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        reason = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "bad_request")
        return _error(ApiError(e.status_code, reason, str(e.detail), dict(e.headers or {})), metrics)

    @app.exception_handler(RequestValidationError)
    async def bad_query(request: Request, e: RequestValidationError) -> JSONResponse:
        where = "; ".join(f"{'.'.join(str(x) for x in d['loc'])}: {d['msg']}" for d in e.errors())
        return _error(ApiError(422, "bad_query", f"bad request parameters: {where}"), metrics)

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception) -> JSONResponse:
        return _error(ApiError(500, "internal", f"the service failed: {type(e).__name__}: {e}"), metrics)


class CountRequests:
    """ASGI middleware: every HTTP answer in the requests counter and the latency histogram
    (plain ASGI: a fraction of the per-request cost of an ``@app.middleware``)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0, status = time.perf_counter(), [500]  # an exception that escapes is answered 500

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope["path"] if scope["path"] in PATHS else "other"
            self.metrics.requests.labels(path, str(status[0])).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - t0)


def create_app(scorer: Any, settings: ServeSettings | None = None) -> FastAPI:
    """The application serving ``scorer`` (a :class:`igd_fast.score.Scorer`; calibrated here
    when it is not yet). The model worker stops when the application shuts down."""
    service = Service(scorer, settings or ServeSettings())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await run_in_threadpool(service.batcher.close)

    app = FastAPI(title="igd-fast", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    _handlers(app, service.metrics)
    app.add_middleware(CountRequests, metrics=service.metrics)
    _routes(app, service)
    return app


def _routes(app: FastAPI, service: Service) -> None:
    timeout = service.settings.timeout_s

    @app.post("/v1/predict")
    async def predict(request: Request, map: bool = False, mask: bool = False) -> JSONResponse:
        try:  # the whole request, body upload included, within the timeout
            return JSONResponse(await asyncio.wait_for(service.predict(request, map, mask), timeout))
        except asyncio.TimeoutError:
            raise ApiError(504, "timeout", f"no answer within {timeout:g} s (--timeout); the model is busy or the "
                           "upload too slow") from None  # fmt: skip

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        ok = service.ready
        # no key needed here, so nothing about the model (its path) is told
        body = {"ready": ok, "calibrated": service.calibrated, "worker": service.batcher.alive}
        return JSONResponse(body, 200 if ok else 503)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        service.authorize(request)
        service.metrics.waiting.set(service.batcher.waiting)
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)
