"""Metrics, liveness/readiness and the HTTP endpoint that serves them (loopback, ephemeral ports, no broker)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from kafka import TopicPartition
from kafka.errors import IllegalStateError
from prometheus_client.parser import text_string_to_metric_families

from expnet_stream.errors import ConfigError
from expnet_stream.ops import HealthServer, OpsSettings, WorkerHealth, WorkerMetrics, WorkerStatus, partition_lag
from expnet_stream.ops.metrics import METRIC_NAMES, STAGES

pytestmark = pytest.mark.unit


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def served() -> Iterator[tuple[WorkerMetrics, WorkerHealth, FakeClock, HealthServer]]:
    clock = FakeClock()
    metrics = WorkerMetrics()
    health = WorkerHealth(liveness_timeout_s=10.0, clock=clock)
    server = HealthServer(metrics.registry, health.snapshot, host="127.0.0.1", port=0).start()
    try:
        yield metrics, health, clock, server
    finally:
        server.stop()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_appear_and_move_over_http(served: tuple[WorkerMetrics, WorkerHealth, FakeClock, HealthServer]) -> None:
    metrics, _, _, server = served
    code, body, ctype = _get(server.url + "/metrics")
    assert code == 200 and ctype.startswith("text/plain")
    text = body.decode()
    for name in METRIC_NAMES:
        assert f"# TYPE {name.removesuffix('_total')}" in text, name
    for stage in STAGES:  # stage series exist from the start, so dashboards show zeros rather than "no data"
        assert f'expnet_stage_seconds_count{{stage="{stage}"}} 0.0' in text

    metrics.record(2, 3)
    metrics.frame_decoded(2)
    metrics.frame_decoded(2)
    metrics.frame_skipped(2)
    metrics.frame_dropped(5, "before_keyframe")
    metrics.frame_replayed(2)
    metrics.faces(4)
    metrics.batch(4)
    metrics.observe_stage("infer", 0.02)
    metrics.event_published("frame", latency_s=0.3)
    metrics.event_published("summary")
    metrics.dead_letter("bad_message")
    metrics.commit()
    metrics.commit(ok=False)
    metrics.lag(2, 17)
    metrics.assigned([2, 5])
    metrics.paused(1)
    metrics.engine_info("expnet_resnet18@UNTRAINED", "onnxruntime", trained=False)
    metrics.status(WorkerStatus.READY)

    s = _samples(_get(server.url + "/metrics")[1].decode())
    assert s[("expnet_records_total", (("partition", "2"),))] == 3
    assert s[("expnet_frames_decoded_total", (("partition", "2"),))] == 2
    assert s[("expnet_frames_skipped_total", (("partition", "2"),))] == 1
    assert s[("expnet_frames_replayed_total", (("partition", "2"),))] == 1
    assert s[("expnet_frames_dropped_total", (("partition", "5"), ("reason", "before_keyframe")))] == 1
    assert s[("expnet_faces_total", ())] == 4
    assert s[("expnet_batch_size_faces_count", ())] == 1 and s[("expnet_batch_size_faces_sum", ())] == 4
    assert s[("expnet_stage_seconds_count", (("stage", "infer"),))] == 1
    assert s[("expnet_stage_seconds_bucket", (("le", "0.025"), ("stage", "infer")))] == 1
    assert s[("expnet_frame_to_event_seconds_count", ())] == 1
    assert s[("expnet_events_published_total", (("type", "frame"),))] == 1
    assert s[("expnet_events_published_total", (("type", "summary"),))] == 1
    assert s[("expnet_dead_letters_total", (("reason", "bad_message"),))] == 1
    assert s[("expnet_commits_total", ())] == 1 and s[("expnet_commit_failures_total", ())] == 1
    assert s[("expnet_consumer_lag_messages", (("partition", "2"),))] == 17
    assert s[("expnet_assigned_partitions", ())] == 2 and s[("expnet_paused_partitions", ())] == 1
    info = (("engine", "onnxruntime"), ("model_id", "expnet_resnet18@UNTRAINED"), ("trained", "false"))
    assert s[("expnet_engine_info", info)] == 1
    assert s[("expnet_worker_status", (("status", "ready"),))] == 1
    assert s[("expnet_worker_status", (("status", "starting"),))] == 0

    # revoking a partition removes its lag series instead of leaving a stale value behind
    metrics.assigned([5])
    s = _samples(metrics.render().decode())
    assert ("expnet_consumer_lag_messages", (("partition", "2"),)) not in s
    assert s[("expnet_assigned_partitions", ())] == 1


def test_registries_are_independent() -> None:
    a, b = WorkerMetrics(), WorkerMetrics()
    a.frame_decoded(0)
    assert a.registry.get_sample_value("expnet_frames_decoded_total", {"partition": "0"}) == 1
    assert b.registry.get_sample_value("expnet_frames_decoded_total", {"partition": "0"}) is None


def test_readiness_flips_with_status(served: tuple[WorkerMetrics, WorkerHealth, FakeClock, HealthServer]) -> None:
    _, health, _clock, server = served

    def ready() -> tuple[int, dict[str, object]]:
        code, body, ctype = _get(server.url + "/readyz")
        assert ctype == "application/json"
        return code, json.loads(body)

    code, body = ready()
    assert code == 503 and body["status"] == "starting"
    assert _get(server.url + "/healthz")[0] == 200  # starting counts as alive

    health.set_running()
    health.set_engine_loaded(True)
    health.set_broker_reachable(True)
    code, body = ready()
    assert code == 503 and body["status"] == "not_ready"
    assert body["checks"] == {"partitions_assigned": False, "engine_loaded": True, "broker_reachable": True}

    health.set_assigned(3)
    code, body = ready()
    assert code == 200 and body["status"] == "ready" and body["ready"] is True

    health.set_broker_reachable(False)
    assert ready()[0] == 503
    health.set_broker_reachable(True)
    assert ready()[0] == 200

    health.set_assigned(0)  # revoked during a rebalance
    assert ready()[0] == 503
    health.set_assigned(1)

    health.set_draining()
    code, body = ready()
    assert code == 503 and body["status"] == "draining"
    assert _get(server.url + "/healthz")[0] == 200

    health.set_stopped()
    assert ready()[0] == 503 and _get(server.url + "/healthz")[0] == 503


def test_liveness_needs_the_loop_to_tick(served: tuple[WorkerMetrics, WorkerHealth, FakeClock, HealthServer]) -> None:
    _, health, clock, server = served
    health.set_running()
    clock.t += 9.0
    code, body, _ = _get(server.url + "/healthz")
    assert code == 200 and json.loads(body)["last_tick_age_s"] == 9.0
    clock.t += 2.0  # 11 s without a tick > 10 s timeout: a stuck poll or engine
    code, body, _ = _get(server.url + "/healthz")
    assert code == 503 and json.loads(body)["alive"] is False
    health.tick()
    assert _get(server.url + "/healthz")[0] == 200


def test_ready_without_partitions_when_configured() -> None:
    h = WorkerHealth(ready_requires_partitions=False)
    h.set_running()
    h.set_engine_loaded(True)
    h.set_broker_reachable(True)
    assert h.status is WorkerStatus.NOT_READY  # not joined yet
    h.set_assigned(0)  # joined with an empty assignment: an idle standby
    assert h.status is WorkerStatus.READY


def test_unknown_path_and_port_in_use(served: tuple[WorkerMetrics, WorkerHealth, FakeClock, HealthServer]) -> None:
    metrics, health, _, server = served
    assert _get(server.url + "/nope")[0] == 404
    with pytest.raises(ConfigError, match=r"metrics_port.*--metrics-port 0"):  # taken: says how to pick a free one
        HealthServer(metrics.registry, health.snapshot, host="127.0.0.1", port=server.port).start()


def test_secrets_never_in_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    from expnet_stream.config.settings import load_settings

    secret = "s3cr3t-Pa55-word"
    monkeypatch.setenv("EXPNET_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("EXPNET_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("EXPNET_KAFKA__SASL_USERNAME", "svc")
    monkeypatch.setenv("EXPNET_KAFKA__SASL_PASSWORD", secret)
    settings = load_settings()
    assert settings.kafka.sasl_password is not None
    metrics = WorkerMetrics()
    metrics.engine_info("m", "onnxruntime", trained=True)
    metrics.dead_letter("bad_message")
    health = WorkerHealth()
    with HealthServer(metrics.registry, health.snapshot, port=0) as server:
        for path in ("/metrics", "/healthz", "/readyz", "/"):
            body = _get(server.url + path)[1].decode()
            assert secret not in body and "svc" not in body, path


def test_ops_settings_defaults_and_validation() -> None:
    s = OpsSettings()
    assert s.metrics_host == "127.0.0.1" and s.metrics_port == 9400 and s.metrics_enabled
    assert not OpsSettings(metrics_enabled=False).metrics_enabled and OpsSettings(metrics_port=0).metrics_enabled
    with pytest.raises(ValueError, match="metrics_port"):
        OpsSettings(metrics_port=70000)
    with pytest.raises(ValueError, match="extra"):
        OpsSettings(metrics_prot=1)  # type: ignore[call-arg]


@dataclass
class _FakeConsumer:
    high: dict[int, int | None]
    pos: dict[int, int]

    def highwater(self, tp: TopicPartition) -> int | None:
        if tp.partition not in self.high:
            raise IllegalStateError("Partition is not assigned")
        return self.high[tp.partition]

    def position(self, tp: TopicPartition, timeout_ms: int | None = None) -> int | None:
        assert timeout_ms == 0  # never block the poll loop
        return self.pos.get(tp.partition)


def test_partition_lag_from_highwater_and_position() -> None:
    c = _FakeConsumer(high={0: 120, 1: None, 2: 10}, pos={0: 100, 2: 12})
    tps = [TopicPartition("expnet.video", p) for p in (0, 1, 2, 3)]
    # 1: no fetch yet; 3: revoked meanwhile; 2: position past a stale highwater -> 0, never negative
    assert partition_lag(c, tps) == {0: 20, 2: 0}


def test_status_metric_follows_health_at_scrape_time() -> None:
    health = WorkerHealth()
    metrics = WorkerMetrics(status_provider=lambda: health.status)
    get = metrics.registry.get_sample_value
    assert get("expnet_worker_status", {"status": "starting"}) == 1
    health.set_running()
    health.set_engine_loaded(True)
    health.set_broker_reachable(True)
    health.set_assigned(1)
    assert get("expnet_worker_status", {"status": "ready"}) == 1
    assert get("expnet_worker_status", {"status": "starting"}) == 0
    health.set_draining()
    assert get("expnet_worker_status", {"status": "draining"}) == 1


def test_serve_ops_and_container_probe() -> None:
    from expnet_stream.ops import serve_ops
    from expnet_stream.ops.probe import probe

    metrics, health = WorkerMetrics(), WorkerHealth()
    assert serve_ops(OpsSettings(metrics_enabled=False), metrics.registry, health.snapshot) is None
    server = serve_ops(OpsSettings(metrics_port=0), metrics.registry, health.snapshot)  # a free port, logged
    assert server is not None and server.port != 0
    with server:
        assert probe("healthz", port=server.port)  # starting counts as alive
        assert not probe("readyz", port=server.port)
    assert not probe("healthz", port=server.port, timeout_s=0.5)  # nothing listens any more


def test_idle_connections_time_out_and_connections_are_bounded(
    served: tuple[WorkerMetrics, WorkerHealth, FakeClock, HealthServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Idle connections once held a thread each for ever (300 of them, 300 threads): now each is dropped after the
    request timeout, and connections beyond the bound are closed at once; the server keeps answering."""
    import socket
    import threading

    from expnet_stream.ops import health as health_module

    _, _, _, server = served
    monkeypatch.setattr(health_module._Handler, "timeout", 0.5)
    threads_before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(health_module.MAX_CONNECTIONS + 8)]
    try:
        time.sleep(0.2)
        # one thread per connection at most up to the bound (before: one for each of them, for ever)
        assert threading.active_count() <= threads_before + health_module.MAX_CONNECTIONS
        time.sleep(1.0)  # past the request timeout: the idle connections are closed by the server
        for sock in idle:
            sock.settimeout(2.0)
            assert sock.recv(1) == b""  # closed by the server (refused at once, or timed out)
        assert _get(server.url + "/healthz")[0] in (200, 503)  # still serving
    finally:
        for sock in idle:
            sock.close()
