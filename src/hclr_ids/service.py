"""HTTP scoring service: ``POST /v1/predict``, ``GET /healthz`` and ``GET /metrics`` (FastAPI + uvicorn).

``/v1/predict`` takes a JSON array of flow records (objects keyed by release column names) or CSV text
(``Content-Type: text/csv``, header first) and returns one verdict per record, in order. Every record must
carry every model input as a finite number: a missing, unknown or non-numeric field, NaN, an infinity
(``Infinity``, ``1e999``, ``"inf"``) or an empty CSV cell gets a 422 that names the record index and field.
A body over ``max_body_bytes`` or with more than ``max_records`` records gets a 413.
"""

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from hclr_ids.schema import FEATURE_COLUMNS, category_of, is_attack

if TYPE_CHECKING:
    from fastapi import FastAPI

    from hclr_ids.detect import Scorer

logger = logging.getLogger(__name__)

#: Upper bounds (seconds) of the request latency histogram.
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
_MAX_DETAILS = 100


@dataclass
class ServiceConfig:
    """Network and request limits of ``hclr-ids serve``."""

    host: str = "127.0.0.1"
    port: int = 8080
    max_records: int = 10_000
    """Records per request at most; more gets a 413."""
    max_body_bytes: int = 16 * 1024 * 1024
    """Request body size at most, in bytes; more gets a 413."""
    max_concurrency: int = 16
    """Connections and tasks uvicorn serves at once; beyond that it responds 503, which bounds memory
    to about ``max_concurrency * max_body_bytes`` of request bodies."""
    graceful_shutdown_s: float = 10.0
    """Seconds requests in flight get to finish after SIGINT or SIGTERM."""
    runtime: str = "torch"
    """Recorded in ``/healthz``: ``torch`` or ``onnx``."""

    def __post_init__(self) -> None:
        if self.max_records < 1:
            raise ValueError(f"max_records must be >= 1, got {self.max_records}")
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1, got {self.max_body_bytes}")


class RequestRejected(Exception):  # noqa: N818 (a rejection, not a failure)
    """A request rejected with a 4xx status and a ``detail`` list."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail


def flow_record_type(input_features: list[str]) -> Any:
    """Build the pydantic-validated record type: model inputs required, other release columns optional.

    Every field is a strict, finite float (an int is accepted; strings, booleans, NaN and infinities are
    not) and unknown fields are rejected. A ``TypedDict`` rather than a ``BaseModel`` is used so that
    validation returns plain dicts, which are turned into one array without per-record objects.
    """
    from typing import Annotated

    from pydantic import ConfigDict, Field
    from typing_extensions import NotRequired, TypedDict

    number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
    fields: dict[str, Any] = {name: number for name in input_features}
    for name in FEATURE_COLUMNS:
        if name not in fields:
            fields[name] = NotRequired[number]
    record = TypedDict("FlowRecord", fields)  # type: ignore[misc]
    record.__pydantic_config__ = ConfigDict(extra="forbid", title="FlowRecord")  # type: ignore[attr-defined]
    return record


class Predictor:
    """Validate request bodies and score them; shared by the app's request handlers (thread-safe)."""

    def __init__(self, scorer: "Scorer", config: ServiceConfig) -> None:
        from pydantic import TypeAdapter

        self.scorer = scorer
        self.config = config
        self.features = list(scorer.input_features)
        self.record_type = flow_record_type(self.features)
        self.adapter = TypeAdapter(list[self.record_type])  # type: ignore[name-defined]
        self._set_classes(list(scorer.classes))

    def _set_classes(self, classes: list[str]) -> None:
        self.classes = np.asarray(classes, dtype=object)
        self.categories = np.asarray([category_of(c) for c in classes], dtype=object)
        self.attack = np.asarray([is_attack(c) for c in classes], dtype=bool)

    def parse_json(self, body: bytes) -> np.ndarray:
        """Validate a JSON array of records; return their inputs, shape (n_records, n_inputs), float32."""
        import itertools
        import operator

        from pydantic import ValidationError

        try:
            records = self.adapter.validate_json(body)
        except ValidationError as error:
            raise self._rejection(error) from None
        self._check_count(len(records))
        values = itertools.chain.from_iterable(map(operator.itemgetter(*self.features), records))
        X = np.fromiter(values, dtype=np.float64, count=len(records) * len(self.features))
        return self._finite_float32(X.reshape(len(records), len(self.features)), None)

    def _rejection(self, error: Any) -> RequestRejected:
        issues = error.errors(include_url=False, include_input=False)
        if len(issues) == 1 and issues[0]["type"] == "json_invalid":
            return RequestRejected(400, [{"record": None, "field": None, "type": "json_invalid",
                                          "message": f"{issues[0]['msg']}; send a JSON array of flow records"}])
        if len(issues) == 1 and not issues[0]["loc"]:
            return RequestRejected(422, [{"record": None, "field": None, "type": issues[0]["type"],
                                          "message": "expected a JSON array of flow records (objects keyed by "
                                                     "release column names)"}])
        details = []
        for issue in issues[:_MAX_DETAILS]:
            loc = list(issue["loc"])
            record = loc[0] if loc and isinstance(loc[0], int) else None
            field = str(loc[1]) if len(loc) > 1 else None
            message = issue["msg"]
            if issue["type"] == "finite_number":
                message = "not a finite number; NaN, Infinity and values beyond the float range are rejected"
            elif issue["type"] == "float_type":
                message = "not a number; send a JSON number, not a string, boolean or null"
            elif issue["type"] == "extra_forbidden":
                message = f"unknown field; expected the release column names: {', '.join(self.features)}"
            elif issue["type"] == "model_type" or issue["type"] == "dict_type":
                message = "expected an object keyed by release column names"
            details.append({"record": record, "field": field, "type": issue["type"], "message": message})
        return RequestRejected(422, details)

    def parse_csv(self, body: bytes) -> np.ndarray:
        """Parse CSV text with a header line; return the inputs, shape (n_records, n_inputs), float32."""
        from hclr_ids.detect import parse_csv_lines, plan_header

        try:
            text = body.decode("utf-8").lstrip("\ufeff")
        except UnicodeDecodeError as error:
            raise RequestRejected(400, [{"record": None, "field": None, "type": "csv_invalid",
                                         "message": f"CSV body is not UTF-8 ({error})"}]) from None
        lines = text.split("\n")
        if lines and lines[-1].strip() == "":
            lines.pop()
        if not lines:
            raise RequestRejected(422, [{"record": None, "field": None, "type": "csv_invalid",
                                         "message": "CSV body is empty; send a header line and flow rows"}])
        import csv

        plan = plan_header(next(csv.reader([lines[0].rstrip("\r")])), self.features, "CSV body")
        for warning in plan.warnings:
            logger.warning("%s", warning)
        if plan.error is not None or plan.unknown:
            message = plan.error or f"unknown columns {plan.unknown}; expected release column names"
            raise RequestRejected(422, [{"record": None, "field": None, "type": "csv_header", "message": message}])
        self._check_count(len(lines) - 1)
        rows = parse_csv_lines(lines[1:], plan, self.features, "CSV body", 1, 1.0)
        details = []
        for i in np.flatnonzero(rows.errors != None)[:_MAX_DETAILS]:  # noqa: E711 (element-wise on objects)
            field = rows.error_fields[i] if rows.error_fields is not None else None
            details.append({"record": int(i), "field": field, "type": "csv_invalid", "message": rows.errors[i]})
        if details:
            raise RequestRejected(422, details)
        return self._finite_float32(rows.X, "CSV body")

    def _finite_float32(self, X: np.ndarray, source: str | None) -> np.ndarray:
        """Reject non-finite cells (also finite float64 values beyond float32's range)."""
        with np.errstate(over="ignore"):
            X32 = X.astype(np.float32)
        bad = ~np.isfinite(X32)
        if bad.any():
            details = []
            for i, j in zip(*np.nonzero(bad)):
                if len(details) == _MAX_DETAILS:
                    break
                details.append({"record": int(i), "field": self.features[j], "type": "finite_number",
                                "message": "missing or not a finite float32 number; send a finite number"})
            raise RequestRejected(422, details)
        return X32

    def _check_count(self, n: int) -> None:
        if n > self.config.max_records:
            raise RequestRejected(413, [{"record": None, "field": None, "type": "too_many_records",
                                         "message": f"{n} records, more than the limit of "
                                                    f"{self.config.max_records}; split the request"}])

    def verdicts_json(self, X: np.ndarray) -> bytes:
        """Score rows and return the response body: model version, task and one verdict per row."""
        import json

        import polars as pl

        proba = np.asarray(self.scorer.predict_proba(X), dtype=np.float32) if len(X) else np.zeros((0, 1), np.float32)
        if not np.isfinite(proba).all():
            raise RuntimeError(f"model {self.scorer.version} returned non-finite probabilities")
        best = proba.argmax(axis=1) if len(X) else np.zeros(0, dtype=np.int64)
        if proba.shape[1] != len(self.classes) and len(X):  # an adaptive scorer has learned new classes
            self._set_classes(list(self.scorer.classes)[: proba.shape[1]])
        frame = pl.DataFrame({
            "class": self.classes[best].astype(str),
            "category": self.categories[best].astype(str),
            "attack": self.attack[best],
            "confidence": np.round(proba[np.arange(len(best)), best].astype(np.float64), 6),
        })
        # An adaptive scorer (adaptation.OnlineLearner) adds flow ids, versions and unknown-traffic flags.
        annotate = getattr(self.scorer, "annotate_verdicts", None)
        if annotate is not None:
            frame = annotate(frame, X, proba)
        head = json.dumps({"model_version": self.scorer.version, "task": getattr(self.scorer, "task", None)})
        verdicts = frame.write_json() if len(best) else "[]"
        return (head[:-1] + ', "verdicts": ' + verdicts + "}").encode()


def create_app(scorer: "Scorer", config: ServiceConfig | None = None) -> "FastAPI":
    """Build the FastAPI app that serves ``scorer``.

    Args:
        scorer: a ``ModelBundle``, ``OnnxScorer`` or anything with ``predict_proba``, ``classes``,
            ``input_features`` and ``version``.
        config: request limits; the defaults of :class:`ServiceConfig` when None.
    """
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
    from pydantic import TypeAdapter
    from starlette.concurrency import run_in_threadpool

    config = config if config is not None else ServiceConfig()
    predictor = Predictor(scorer, config)
    registry = CollectorRegistry()
    requests_total = Counter("hclr_ids_requests", "HTTP requests to /v1/predict by status code",
                             ["status"], registry=registry)
    flows_total = Counter("hclr_ids_flows_scored", "Flow records scored", registry=registry)
    invalid_total = Counter("hclr_ids_invalid_records", "Flow records rejected as invalid", registry=registry)
    errors_total = Counter("hclr_ids_errors", "Requests answered with an error status, by kind",
                           ["kind"], registry=registry)
    latency = Histogram("hclr_ids_request_duration_seconds", "Time to answer /v1/predict",
                        buckets=LATENCY_BUCKETS_S, registry=registry)

    @asynccontextmanager
    async def lifespan(_app: "FastAPI") -> Any:
        logger.info("service started: model %s (%d inputs, %d classes), runtime %s",
                    scorer.version, len(predictor.features), len(predictor.classes), config.runtime)
        yield
        logger.info("service stopped: %d flows scored", int(flows_total._value.get()))

    app = FastAPI(title="HCLR-IDS", version=str(scorer.version), lifespan=lifespan,
                  description="Intrusion detection verdicts for CICIoMT2024 flow-window features.")
    record_schema = TypeAdapter(predictor.record_type).json_schema(ref_template="#/components/schemas/{model}")
    request_body = {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/FlowRecord"},
                                            "maxItems": config.max_records}},
            "text/csv": {"schema": {"type": "string", "description": "CSV with a header line of column names"}},
        },
    }

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > config.max_body_bytes:
            raise RequestRejected(413, [{"record": None, "field": None, "type": "body_too_large",
                                         "message": f"body of {declared} bytes, more than the limit of "
                                                    f"{config.max_body_bytes}; split the request"}])
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > config.max_body_bytes:
                raise RequestRejected(413, [{"record": None, "field": None, "type": "body_too_large",
                                             "message": f"body over the limit of {config.max_body_bytes} bytes; "
                                                        "split the request"}])
            chunks.append(chunk)
        return b"".join(chunks)

    def score_body(body: bytes, is_csv: bool) -> tuple[bytes, int]:
        X = predictor.parse_csv(body) if is_csv else predictor.parse_json(body)
        return predictor.verdicts_json(X), len(X)

    @app.post("/v1/predict", response_model=None, openapi_extra={"requestBody": request_body},
              responses={400: {"description": "malformed JSON or CSV"},
                         413: {"description": "body or record count over the limit"},
                         415: {"description": "unsupported content type"},
                         422: {"description": "invalid records, each named by index and field"}})
    async def predict(request: Request) -> Response:
        """Score flow records; returns one verdict per record, in order."""
        started = time.perf_counter()
        status = 200
        try:
            content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
            if content_type not in ("application/json", "text/csv", ""):
                raise RequestRejected(415, [{"record": None, "field": None, "type": "content_type",
                                             "message": f"unsupported content type {content_type!r}; "
                                                        "send application/json or text/csv"}])
            body = await read_body(request)
            payload, n = await run_in_threadpool(score_body, body, content_type == "text/csv")
            flows_total.inc(n)
            return Response(payload, media_type="application/json")
        except RequestRejected as rejection:
            status = rejection.status
            errors_total.labels(kind=str(status)).inc()
            if status == 422:
                invalid_total.inc(len({d["record"] for d in rejection.detail}))
            first = rejection.detail[0] if rejection.detail else {}
            logger.warning("rejected request from %s with %d: %d issues, first: record %s field %s: %s",
                           request.client.host if request.client else "?", status, len(rejection.detail),
                           first.get("record"), first.get("field"), first.get("message"))
            return JSONResponse({"detail": rejection.detail}, status_code=status)
        except Exception:
            status = 500
            errors_total.labels(kind="500").inc()
            logger.exception("scoring failed for a request from %s", request.client.host if request.client else "?")
            return JSONResponse({"detail": [{"record": None, "field": None, "type": "internal",
                                             "message": "scoring failed; see the service log"}]}, status_code=500)
        finally:
            requests_total.labels(status=str(status)).inc()
            latency.observe(time.perf_counter() - started)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness and the model served."""
        return {"status": "ok", "model_version": scorer.version, "task": getattr(scorer, "task", None),
                "runtime": config.runtime, "input_features": len(predictor.features)}

    @app.get("/metrics", response_class=PlainTextResponse, response_model=None)
    async def metrics() -> Response:
        """Prometheus text exposition of request, flow, error and latency metrics."""
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(record_schema.pop("$defs", {}))
            components["FlowRecord"] = record_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def serve(scorer: "Scorer", config: ServiceConfig | None = None, *, learner: Any = None) -> None:
    """Run the service with uvicorn until SIGINT or SIGTERM, then finish requests in flight and return.

    With ``learner`` (an :class:`hclr_ids.adaptation.OnlineLearner`, which is also the scorer) the service adds
    ``POST /v1/feedback``.
    """
    import uvicorn

    config = config if config is not None else ServiceConfig()
    if config.host not in _LOOPBACK_HOSTS:
        logger.warning("binding %s: the service is reachable from other hosts and has no authentication",
                       config.host)
    app = create_app(scorer, config)
    if learner is not None:
        from hclr_ids.adaptation import add_feedback_routes

        add_feedback_routes(app, learner, max_records=config.max_records, max_body_bytes=config.max_body_bytes)
    server_config = uvicorn.Config(
        app, host=config.host, port=config.port, log_config=None, access_log=False,
        limit_concurrency=config.max_concurrency, timeout_graceful_shutdown=config.graceful_shutdown_s,
    )
    logger.info("listening on http://%s:%d", config.host, config.port)
    uvicorn.Server(server_config).run()
