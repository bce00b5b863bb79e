"""The HTTP service over loopback: verdicts in order, 422 per bad record and field, 413, metrics, OpenAPI."""

from __future__ import annotations

import json
import math
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from hclr_ids.data import read_features
from hclr_ids.export import ONNX_FILE_NAME, OnnxScorer
from hclr_ids.schema import FEATURE_COLUMNS
from hclr_ids.service import ServiceConfig, create_app

MAX_RECORDS = 500
MAX_BODY_BYTES = 400_000


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def scorer(bundle_dir: Path) -> OnnxScorer:
    return OnnxScorer(bundle_dir / ONNX_FILE_NAME)


@pytest.fixture(scope="module")
def base_url(scorer):
    """uvicorn serving the trained bundle's ONNX graph in a thread on a free loopback port."""
    import uvicorn

    port = _free_port()
    config = ServiceConfig(port=port, max_records=MAX_RECORDS, max_body_bytes=MAX_BODY_BYTES, runtime="onnx")
    server = uvicorn.Server(uvicorn.Config(create_app(scorer, config), host="127.0.0.1", port=port,
                                           log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start within 30 s"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


@pytest.fixture(scope="module")
def records(release_csv_dir) -> list[dict]:
    """100 real flow records of MQTT-Malformed_Data as JSON objects keyed by release column names."""
    X, names, _ = read_features(release_csv_dir / "test" / "MQTT-Malformed_Data_test.pcap.csv")
    return [dict(zip(names, map(float, row))) for row in X[:100]]


@pytest.fixture(scope="module")
def c22(cases_dir) -> bytes:
    return (cases_dir / "C22_predict_nonfinite.json").read_bytes()


def _strict_json(text: str):
    """Parse JSON as the RFC does: NaN and Infinity literals raise."""
    def reject(constant: str):
        raise ValueError(f"response contains {constant}")

    return json.loads(text, parse_constant=reject)


def _post(base_url: str, body, content_type: str = "application/json") -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(f"{base_url}/v1/predict", content=content, headers={"content-type": content_type}, timeout=60)


def test_good_batch_verdicts_in_order(base_url, records, scorer):
    response = _post(base_url, records)
    verdicts = response.json()["verdicts"]
    X = np.array([[r[name] for name in scorer.input_features] for r in records], dtype=np.float32)
    expected = np.asarray(scorer.classes)[scorer.predict_proba(X).argmax(axis=1)]
    assert response.status_code == 200
    assert len(verdicts) == 100
    assert [v["class"] for v in verdicts] == expected.tolist()
    assert response.json()["model_version"] == scorer.version


def test_csv_body_matches_json(base_url, records, release_csv_dir):
    lines = (release_csv_dir / "test" / "MQTT-Malformed_Data_test.pcap.csv").read_text().splitlines()[:101]
    from_csv = _post(base_url, "\n".join(lines) + "\n", "text/csv")
    from_json = _post(base_url, records)
    assert from_csv.status_code == 200
    assert from_csv.json()["verdicts"] == from_json.json()["verdicts"]


@pytest.mark.parametrize(("edit", "field", "kind"), [
    (lambda r: r.pop("Rate"), "Rate", "missing"),
    (lambda r: r.update({"Rate_x": 1.0}), "Rate_x", "extra_forbidden"),
    (lambda r: r.update({"Std": "12.5"}), "Std", "float_type"),
    (lambda r: r.update({"TCP": True}), "TCP", "float_type"),
    (lambda r: r.update({"Tot sum": None}), "Tot sum", "float_type"),
])
def test_invalid_record_named(base_url, records, edit, field, kind):
    batch = [dict(r) for r in records[:5]]
    edit(batch[3])
    response = _post(base_url, batch)
    assert response.status_code == 422
    assert response.json()["detail"] == [
        {"record": 3, "field": field, "type": kind, "message": response.json()["detail"][0]["message"]}
    ]


def test_c22_batch_rejected_per_record(base_url, c22):
    response = _post(base_url, c22)
    named = [(d["record"], d["field"]) for d in response.json()["detail"]]
    assert response.status_code == 422
    assert named == [(1, "Rate"), (2, "Rate"), (3, "Srate"), (4, "Rate"), (5, "Rate")]
    assert _strict_json(response.text)["detail"]


def test_c22_one_record_per_request(base_url, c22):
    # The file contains NaN and Infinity literals, so it is split on its record lines rather than parsed.
    lines = [line.rstrip(",") for line in c22.decode().splitlines() if line.startswith("{")]
    statuses = []
    for line in lines:
        response = _post(base_url, f"[{line}]")
        statuses.append(response.status_code)
        _strict_json(response.text)
        if response.status_code == 200:
            assert all(math.isfinite(v["confidence"]) for v in response.json()["verdicts"])
        else:
            assert response.json()["detail"][0]["record"] == 0
    assert statuses == [200, 422, 422, 422, 422, 422]


def test_csv_missing_cells_rejected(base_url, cases_dir):
    response = _post(base_url, (cases_dir / "C06_missing_cells.csv").read_bytes(), "text/csv")
    named = {(d["record"], d["field"]) for d in response.json()["detail"]}
    assert response.status_code == 422
    assert (1, "Rate") in named
    assert (2, "Std") in named
    assert (6, "Header_Length") in named


def test_csv_header_spaces_accepted(base_url, cases_dir):
    response = _post(base_url, (cases_dir / "C02_header_spaces.csv").read_bytes(), "text/csv")
    assert response.status_code == 200
    assert len(response.json()["verdicts"]) == 5


def test_csv_infinities_rejected(base_url, cases_dir):
    response = _post(base_url, (cases_dir / "C01_infinity_strings.csv").read_bytes(), "text/csv")
    named = sorted((d["record"], d["field"]) for d in response.json()["detail"])
    assert response.status_code == 422
    assert named == [(1, "Rate"), (1, "Srate"), (2, "Rate"), (2, "Srate"), (3, "Rate")]


def test_body_too_large(base_url, records):
    response = _post(base_url, records * 5)
    assert len(json.dumps(records * 5)) > MAX_BODY_BYTES
    assert response.status_code == 413


def test_too_many_records(base_url, records):
    small = [{name: 1.0 for name in FEATURE_COLUMNS}] * (MAX_RECORDS + 1)
    response = _post(base_url, small)
    assert response.status_code == 413
    assert "more than the limit of 500" in response.json()["detail"][0]["message"]


def test_malformed_json(base_url):
    response = _post(base_url, b"[{\"Rate\": 1")
    assert response.status_code == 400


def test_object_instead_of_array(base_url, records):
    response = _post(base_url, records[0])
    assert response.status_code == 422
    assert "JSON array" in response.json()["detail"][0]["message"]


def test_unsupported_content_type(base_url):
    response = _post(base_url, b"<flows/>", "application/xml")
    assert response.status_code == 415


def test_concurrent_requests(base_url, records):
    expected = _post(base_url, records).json()["verdicts"]
    batches = [records[i:] + records[:i] for i in range(0, 100, 5)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda b: _post(base_url, b), batches))
    assert [r.status_code for r in responses] == [200] * len(batches)
    for i, response in zip(range(0, 100, 5), responses):
        assert response.json()["verdicts"] == expected[i:] + expected[:i]


def test_healthz(base_url, scorer):
    response = httpx.get(f"{base_url}/healthz", timeout=30)
    assert response.status_code == 200
    assert response.json()["model_version"] == scorer.version
    assert response.json()["runtime"] == "onnx"


def test_metrics_count_flows(base_url, records):
    def scored() -> float:
        text = httpx.get(f"{base_url}/metrics", timeout=30).text
        return float(next(line.split()[1] for line in text.splitlines() if line.startswith("hclr_ids_flows_scored_total")))

    before = scored()
    _post(base_url, records[:7])
    after = scored()
    text = httpx.get(f"{base_url}/metrics", timeout=30).text
    assert after - before == 7
    assert "hclr_ids_request_duration_seconds_bucket" in text
    assert 'hclr_ids_requests_total{status="200"}' in text


def test_openapi_record_schema(base_url, scorer):
    schema = httpx.get(f"{base_url}/openapi.json", timeout=30).json()
    record = schema["components"]["schemas"]["FlowRecord"]
    body = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert set(record["properties"]) == set(FEATURE_COLUMNS)
    assert sorted(record["required"]) == sorted(scorer.input_features)
    assert record["additionalProperties"] is False
    assert body["application/json"]["schema"]["items"]["$ref"] == "#/components/schemas/FlowRecord"
    assert "text/csv" in body


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_serve_command_stops_cleanly(bundle_dir, runtime):
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "hclr_ids", "serve", "--model", str(bundle_dir), "--runtime", runtime,
         "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "hclr-ids serve did not answer within 60 s"
                time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert health.status_code == 200
    assert health.json()["runtime"] == runtime
    # uvicorn re-raises the signal it caught once shutdown is complete.
    assert process.returncode in (0, -signal.SIGTERM)
    assert "service started" in err
    assert "service stopped" in err
