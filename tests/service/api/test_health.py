"""Liveness, readiness (database at head, bus, a live worker) and Prometheus metrics."""

from __future__ import annotations

import time

from service.settings import Settings

from .helpers import make_run


def test_healthz_answers_ok(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_503_without_a_worker_heartbeat_and_200_with_one(client, run_async):
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "not_ready"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["bus"] == "ok"
    assert "heartbeat" in body["checks"]["worker"]

    run_async(client.app.state.services.bus.heartbeat, "w1", 30)
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "checks": {"database": "ok", "bus": "ok", "worker": "ok"},
    }


def test_app_does_not_migrate_postgres_and_readyz_says_the_schema_is_behind(
    make_client, tmp_path, postgres
):
    url = postgres.create()
    client = make_client(Settings(data_dir=tmp_path, database_url=url))
    client.portal.call(client.app.state.services.bus.heartbeat, "w1", 30)
    response = client.get("/readyz")
    assert response.status_code == 503
    database = response.json()["checks"]["database"]
    assert "revision none" in database and "opsd db upgrade" in database


def test_embedded_app_migrates_its_sqlite_database_on_start(make_client, tmp_path):
    client = make_client(Settings(data_dir=tmp_path / "fresh"))
    assert (tmp_path / "fresh" / "opsd.db").exists()
    assert client.get("/v1/runs").json() == {"items": [], "next_cursor": None}


def test_metrics_count_requests_by_route_template_and_report_the_record(client, repo, run_async):
    make_run(repo)
    run_async(client.app.state.services.bus.heartbeat, "w1", 30)
    client.get("/v1/runs/1")
    client.get("/v1/runs/999")
    client.get("/no/such/path")

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert (
        'opsd_http_requests_total{method="GET",route="/v1/runs/{run_id}",status="200"} 1.0' in text
    )
    assert (
        'opsd_http_requests_total{method="GET",route="/v1/runs/{run_id}",status="404"} 1.0' in text
    )
    assert 'opsd_http_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    assert "opsd_http_request_duration_seconds_bucket" in text
    assert 'opsd_runs{status="queued"} 1.0' in text
    assert 'opsd_runs{status="running"} 0.0' in text
    assert "opsd_trajectories 0.0" in text
    assert "opsd_steps 0.0" in text
    assert "opsd_live_workers 1.0" in text


def test_two_apps_in_one_process_keep_separate_metrics(make_client, tmp_path):
    first = make_client(Settings(data_dir=tmp_path / "a"))
    second = make_client(Settings(data_dir=tmp_path / "b"))
    first.get("/healthz")
    line = 'opsd_http_requests_total{method="GET",route="/healthz",status="200"} 1.0'
    assert line in first.get("/metrics").text
    assert 'route="/healthz"' not in second.get("/metrics").text


def test_embedded_app_runs_an_in_process_worker_that_makes_it_ready(make_client, tmp_path):
    settings = Settings(data_dir=tmp_path, device="cpu", heartbeat_s=0.1, pipeline_process=False)
    client = make_client(settings, background=True)
    services = client.app.state.services
    assert services.orchestrator is not None and services.worker is not None
    deadline = time.monotonic() + 30
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, client.get("/readyz").json()
        time.sleep(0.1)


def test_without_an_embedded_worker_only_the_orchestrator_runs(make_client, tmp_path):
    settings = Settings(data_dir=tmp_path, embedded_worker=False, pipeline_process=False)
    client = make_client(settings, background=True)
    services = client.app.state.services
    assert services.orchestrator is not None and services.worker is None
    assert client.get("/readyz").json()["checks"]["worker"] == "no live worker heartbeat"
