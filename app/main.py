"""The FastAPI application: ``create_app()`` for ASGI servers, ``serve()`` for ``bdia serve``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException

from bdia.jobqueue.logs import configure_logging
from bdia.jobqueue.settings import Settings, get_settings

from . import __doc__ as DESCRIPTION
from .auth import ApiKeys, Authenticate
from .deadlines import BodyDeadline, uvicorn_options
from .deps import Services
from .limits import LimitBody
from .metrics import CountRequests, HttpCounters
from .parsing import validation_problem
from .problems import STATUS_CODES, Problem, document
from .routes import edits, inversions, jobs, system, webhooks
from .routes.playground import router as playground

log = logging.getLogger("bdia.api")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API over the Redis that ``settings`` (default: the ``BDIA_*`` environment) names."""
    settings = settings or get_settings()
    keys = ApiKeys.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from .webhooks import Dispatcher

        services = Services.connect(settings)
        app.state.services = services
        try:
            for model in settings.served_models:
                await services.queue.ensure_group(model)
        except RedisError as exc:  # start anyway; /readyz says what is wrong
            log.warning("Redis at %s is not reachable yet: %s", settings.redis_url, exc)
        stop = asyncio.Event()
        dispatcher = Dispatcher(settings, services.redis) if settings.api_webhooks else None
        delivering = asyncio.create_task(dispatcher.run(stop)) if dispatcher else None
        yield
        stop.set()
        if delivering is not None:
            await delivering
        await services.close()

    app = FastAPI(
        title="bdia",
        version="1.0",
        summary="Lossless image editing by exact diffusion inversion (BDIA)",
        description=DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=lambda route: route.name,  # operation ids: the route functions' names
    )
    app.state.http_counters = HttpCounters()
    app.add_middleware(edits.FormsToUpload)
    app.add_middleware(LimitBody, limit=settings.max_request_bytes)
    app.add_middleware(Authenticate, keys=keys)
    app.add_middleware(CountRequests, counters=app.state.http_counters)
    app.add_middleware(BodyDeadline, timeout_s=settings.http_body_timeout_s)
    if origins := [o.strip() for o in settings.cors_origins.split(",") if o.strip()]:
        app.add_middleware(  # outermost: preflights need no key, and errors carry the CORS headers too
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "Idempotency-Key", "Prefer", "Last-Event-ID"],
            expose_headers=[
                "Location",
                "Retry-After",
                "ETag",
                "WWW-Authenticate",
                "Idempotent-Replayed",
                "Preference-Applied",
            ],
            max_age=600,
        )
    _add_problem_handlers(app)
    generate = app.openapi
    app.openapi = lambda: document(generate())  # type: ignore[method-assign]

    for module in (inversions, edits, jobs, system, webhooks):
        app.include_router(module.router)
    app.include_router(playground)  # the page at /: not an API operation, open (its /v1 calls carry the key)
    return app


def _add_problem_handlers(app: FastAPI) -> None:
    """Render every error as problem+json with a stable ``code``."""

    @app.exception_handler(Problem)
    async def on_problem(request: Request, exc: Problem) -> JSONResponse:
        return exc.response(request.url.path)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_problem(list(exc.errors())).response(request.url.path)

    @app.exception_handler(HTTPException)
    async def on_http(request: Request, exc: HTTPException) -> JSONResponse:
        code = STATUS_CODES.get(exc.status_code, "error")
        problem = Problem(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))
        return problem.response(request.url.path)

    @app.exception_handler(RedisError)
    async def on_redis(request: Request, exc: RedisError) -> JSONResponse:
        log.error("Redis error on %s: %s", request.url.path, exc)
        problem = Problem(503, "unavailable", "the job store (Redis) is unavailable", headers={"Retry-After": "5"})
        return problem.response(request.url.path)

    @app.exception_handler(Exception)
    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return Problem(500, "internal_error", "an internal error occurred").response(request.url.path)


def cli(argv: list[str] | None = None) -> int:
    """``bdia serve [--host H] [--port P]``: run the API until stopped. Returns the exit code."""
    import argparse

    parser = argparse.ArgumentParser(prog="bdia serve", description="Run the HTTP API under uvicorn.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    serve(args.host, args.port)
    return 0


def serve(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the API under uvicorn (``bdia serve``), with the limits on slow and numerous clients of
    ``deadlines.uvicorn_options`` (``BDIA_HTTP_*``)."""
    import uvicorn

    settings = get_settings()
    configure_logging(settings)
    app = create_app(settings)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=None,
        proxy_headers=True,
        access_log=settings.access_log,
        **uvicorn_options(settings),
    )
