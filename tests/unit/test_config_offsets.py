"""Settings validation and env overrides; the offset tracker that guards commits."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from expnet_stream.config import settings as settings_module
from expnet_stream.config.settings import DEMO_CONFIG, load_settings, setting_sources, settings_yaml_with_sources
from expnet_stream.errors import ConfigError
from expnet_stream.worker.offsets import OffsetTracker

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", [REPO / "configs" / "worker.yaml", DEMO_CONFIG])
def test_shipped_configs_validate(path: Path) -> None:
    s = load_settings(path)
    assert s.batch.max_batch >= 1 and s.topics.input


def test_packaged_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No --config: the packaged defaults, from any folder (the demo's settings travel with the package too)."""
    monkeypatch.chdir(tmp_path)
    s = load_settings(None)
    assert s.detector.name == "yunet" and s.model.name == "default" and s.topics.input == "expnet.video"
    assert DEMO_CONFIG.is_file() and DEMO_CONFIG.is_relative_to(Path(settings_module.__file__).parent)
    assert load_settings(DEMO_CONFIG).group_id == "expnet-demo"


def test_command_line_wins_over_environment_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "w.yaml"
    cfg.write_text("kafka:\n  bootstrap: file:1\n  max_poll_records: 7\nbatch:\n  max_batch: 4\n")
    monkeypatch.setenv("EXPNET_KAFKA__BOOTSTRAP", "env:2")
    monkeypatch.setenv("EXPNET_BATCH__MAX_WAIT_MS", "5")
    over = {"kafka": {"bootstrap": "cli:3"}}
    s = load_settings(cfg, over)
    assert s.kafka.bootstrap == "cli:3" and s.kafka.max_poll_records == 7 and s.batch.max_wait_ms == 5
    assert load_settings(cfg).kafka.bootstrap == "env:2"  # the override lasted one call
    src = setting_sources(cfg, over)
    assert src["kafka.bootstrap"] == "command line"
    assert src["batch.max_wait_ms"] == "env EXPNET_BATCH__MAX_WAIT_MS"
    assert src["kafka.max_poll_records"] == src["batch.max_batch"] == f"file {cfg}"
    assert src["batch.max_batch"] != src["model.engine"] == "default"
    text = settings_yaml_with_sources(s, src)
    assert "bootstrap: cli:3" in text and "# command line" in text and f"# file {cfg}" in text
    assert yaml.safe_load(text)["batch"] == {"max_batch": 4, "max_wait_ms": 5.0, "eager": True}  # still valid YAML


def test_env_overrides_yaml_and_nested(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "w.yaml"
    cfg.write_text("kafka:\n  bootstrap: file:1\n  max_poll_records: 7\nbatch:\n  max_batch: 4\n")
    monkeypatch.setenv("EXPNET_KAFKA__BOOTSTRAP", "env:2")
    monkeypatch.setenv("EXPNET_BATCH__MAX_WAIT_MS", "5")
    s = load_settings(cfg)
    assert s.kafka.bootstrap == "env:2" and s.kafka.max_poll_records == 7
    assert s.batch.max_batch == 4 and s.batch.max_wait_ms == 5


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        ("batch:\n  max_batch: 0\n", "batch.max_batch"),
        ("kafka:\n  bootstrapp: x\n", "kafka.bootstrapp"),
        ("sampling:\n  fps: -1\n", "sampling.fps"),
        ("model:\n  engine: cuda-magic\n", "model.engine"),
    ],
)
def test_bad_fields_are_named(tmp_path: Path, yaml_text: str, field: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml_text)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_settings(cfg)


def test_not_a_mapping_and_bad_yaml(tmp_path: Path) -> None:
    cfg = tmp_path / "x.yaml"
    cfg.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(cfg)
    cfg.write_text("a: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(cfg)


def test_secrets_are_masked() -> None:
    s = load_settings(None, {"kafka": {"sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password": "hunter2"}})
    assert "hunter2" not in str(s.masked()) and "hunter2" not in repr(s)
    assert s.kafka.client_kwargs()["sasl_plain_password"] == "hunter2"


def test_offset_tracker_never_skips_unfinished_work() -> None:
    t = OffsetTracker()
    assert t.committable() is None
    for o in range(10, 15):
        t.consumed(o)
    for o in (11, 12, 14):
        t.done(o)
    assert t.committable() == 10
    t.done(10)
    assert t.committable() == 13
    t.done(13)
    assert t.committable() == 15 and t.pending == 0


def test_one_security_configuration_for_every_client(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """SASL, SSL and mutual TLS from the settings reach every Kafka client (worker, ingest, tail, timeline, annotate,
    the demo's subscribers: all build theirs from ``KafkaSettings.client_kwargs``)."""
    from expnet_stream.config.settings import KafkaSettings

    plain = KafkaSettings(bootstrap="b:1").client_kwargs()
    assert plain == {"bootstrap_servers": ["b:1"], "security_protocol": "PLAINTEXT"}
    mtls = KafkaSettings(
        bootstrap="b:1",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password="pw",
        ssl_cafile=tmp_path / "ca.pem",
        ssl_certfile=tmp_path / "client.pem",
        ssl_keyfile=tmp_path / "client.key",
        ssl_password="kp",
    ).client_kwargs()
    assert mtls["ssl_certfile"] == str(tmp_path / "client.pem") and mtls["ssl_keyfile"] == str(tmp_path / "client.key")
    assert mtls["ssl_password"] == "kp" and mtls["ssl_check_hostname"] is True and mtls["sasl_plain_password"] == "pw"
    with pytest.raises(ValueError, match=r"ssl_keyfile needs kafka\.ssl_certfile"):
        KafkaSettings(security_protocol="SSL", ssl_keyfile=tmp_path / "k")
    with pytest.raises(ValueError, match="use SSL or SASL_SSL"):  # TLS files on a plaintext connection: a mistake
        KafkaSettings(ssl_cafile=tmp_path / "ca.pem")
    with caplog.at_level("WARNING"):
        KafkaSettings(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="u")
    assert "unencrypted" in caplog.text
