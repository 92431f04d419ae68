"""Worker settings: frozen pydantic models, loaded from YAML with ``EXPNET_`` environment overrides.

Precedence, highest first: explicit overrides (CLI), environment (``EXPNET_KAFKA__BOOTSTRAP=...``,
nested with ``__``), the YAML file, defaults. The defaults are the packaged settings: every command works without a
file (``configs/worker.yaml`` in the repository is an example); :func:`setting_sources` says where each value came
from (``expnet-stream config show``).
"""

from __future__ import annotations

import logging
import os
import socket
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ..aggregate.settings import TemporalSettings
from ..errors import ConfigError
from ..fileio import cache_dir
from ..ops.settings import OpsSettings
from ..video.limits import DEFAULT_CODECS, DEFAULT_MAX_EXTRADATA_BYTES, DEFAULT_MAX_PIXELS


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        logging.getLogger(__name__).warning(message)


class KafkaSettings(_Section):
    bootstrap: str = Field("127.0.0.1:9092", description="comma-separated bootstrap servers")
    client_id: str = Field("expnet-stream", description="Kafka client id prefix")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = Field(None, description="SASL password (masked in every printout)")
    ssl_cafile: Path | None = Field(None, description="CA bundle that signed the brokers' certificates (SSL, SASL_SSL)")
    ssl_certfile: Path | None = Field(None, description="client certificate (PEM) for mutual TLS")
    ssl_keyfile: Path | None = Field(None, description="client private key (PEM) for mutual TLS")
    ssl_password: SecretStr | None = Field(None, description="password of the client key (masked in every printout)")
    ssl_check_hostname: bool = Field(True, description="check that the broker's certificate names its host")
    session_timeout_ms: int = Field(6000, ge=1000, description="consumer group session timeout")
    heartbeat_interval_ms: int = Field(1000, ge=100)
    max_poll_records: int = Field(64, ge=1, description="records per poll")
    request_timeout_ms: int = Field(30000, ge=1000)
    linger_ms: int = Field(
        0,
        ge=0,
        description="how long the worker's producer holds events to send more in one request; 0 sends at once "
        "(events still go out together while a request is in flight)",
    )
    fetch_max_wait_ms: int = Field(
        20,
        ge=0,
        description="longest the broker holds a worker's fetch when no data is ready; bounds the input hop of the "
        "frame-to-event latency on brokers that do not answer a waiting fetch as soon as data arrives (Tansu)",
    )

    def client_kwargs(self) -> dict[str, Any]:
        """Connection keyword arguments shared by kafka-python producers, consumers and admin clients."""
        kw: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in self.bootstrap.split(",") if s.strip()],
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            kw["sasl_mechanism"] = self.sasl_mechanism
            kw["sasl_plain_username"] = self.sasl_username
            kw["sasl_plain_password"] = self.sasl_password.get_secret_value() if self.sasl_password else None
        if self.security_protocol in ("SSL", "SASL_SSL"):
            kw["ssl_check_hostname"] = self.ssl_check_hostname
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                if getattr(self, name) is not None:
                    kw[name] = str(getattr(self, name))
            if self.ssl_password is not None:
                kw["ssl_password"] = self.ssl_password.get_secret_value()
        return kw

    @model_validator(mode="after")
    def _security(self) -> KafkaSettings:
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("kafka.ssl_keyfile needs kafka.ssl_certfile (mutual TLS)")
        if (self.ssl_certfile or self.ssl_cafile) and self.security_protocol not in ("SSL", "SASL_SSL"):
            raise ValueError(
                f"kafka.ssl_* files are set but kafka.security_protocol is {self.security_protocol}: "
                "use SSL or SASL_SSL"
            )
        if self.security_protocol == "SASL_PLAINTEXT":
            _warn_once(
                "kafka.security_protocol SASL_PLAINTEXT: the SASL exchange and every record cross the network "
                "unencrypted (with PLAIN, the password too); use SASL_SSL outside a trusted network"
            )
        return self


class TopicSettings(_Section):
    input: str = Field("expnet.video", description="encoded video packets and stream control messages")
    expressions: str = Field("expnet.expressions", description="per-frame expression events")
    emotions: str = Field("expnet.emotions", description="temporal emotion aggregates")
    dlq: str = Field("expnet.dlq", description="dead-letter topic")
    state: str = Field(
        "expnet.worker-state",
        description="worker state for takeovers (track ids of open streams); partitioned like the input topic",
    )
    input_partitions: int = Field(4, ge=1, description="partitions when the worker or demo creates the input topic")


class DetectorSettings(_Section):
    name: str = Field(
        "yunet",
        description="face detector plugin: registered name, entry point or module:Class; 'yunet' (default: YuNet on "
        "ONNX Runtime, shipped in the package), 'yuface' (the same network family in a native wheel), 'haar', ...",
    )
    options: dict[str, Any] = Field(default_factory=dict, description="keyword options for the detector")


class ModelSettings(_Section):
    onnx: Path | None = Field(None, description="ONNX file with its .contract.json; None exports `name` into cache_dir")
    name: str = Field(
        "default",
        description="'default' = the trained model shipped in the package; a registered name (e.g. expnet_resnet101) "
        "exports that architecture with UNTRAINED weights when `onnx` is not set",
    )
    emotion_head: str | None = Field(
        "default",
        description="'default' = the model's own calibrated emotion output when it has one (the shipped model does), "
        "else the shipped coefficient head; 'coefficients' = the shipped head on the 29 coefficients; a path to a "
        "coefficient head (.npz); or null for no emotions",
    )
    cache_dir: Path = Field(default_factory=cache_dir, description="exported models and TensorRT plans live below this")
    engine: Literal["onnxruntime", "tensorrt", "torch"] = "onnxruntime"
    threads: int | None = Field(None, ge=1, description="engine intra-op threads; None = all cores")
    allow_spinning: bool = Field(False, description="ORT thread spinning; off when decode shares the cores")
    plan_dir: Path | None = Field(
        None, description="TensorRT plan cache root (engine 'tensorrt'); None = <cache_dir>/plans"
    )
    precision: Literal["fp32", "fp16", "int8", "int8-fp16"] = Field("fp16", description="TensorRT plan precision")
    build_on_miss: bool = Field(
        False, description="engine 'tensorrt': build the plan here when the cache has none for this GPU (minutes)"
    )
    gpu_index: int = Field(0, ge=0, description="engines 'tensorrt'/'torch': CUDA device index")
    checkpoint: Path | None = Field(None, description="engine 'torch': checkpoint with the weights of `onnx`")
    device: str | None = Field(None, description="engine 'torch': 'cuda', 'cuda:1' or 'cpu'; None = CUDA if present")
    cuda_graphs: bool = Field(False, description="engine 'torch': one CUDA graph per batch bucket (CUDA only)")


class BatchSettings(_Section):
    max_batch: int = Field(16, ge=1, description="faces per engine call")
    max_wait_ms: float = Field(40.0, ge=0, description="longest a face waits for its batch to fill")
    eager: bool = Field(
        True,
        description="run a batch as soon as the worker has read all the input the broker has (each partition at its "
        "high watermark): a frame never waits for input that is not there; a worker behind its input still fills "
        "batches (max_batch, max_wait_ms); false: a batch always waits up to max_wait_ms for max_batch faces",
    )


class IdleSettings(_Section):
    """A stream that falls silent without ``stream_end`` (ingester crash, network cut) is closed, so it never pins
    its partition's commits or holds a decoder: the worker writes an idle ``stream_end`` marker into the input
    partition (so a replay after a takeover sees the same end), then flushes the decoder, closes the windows,
    publishes the ``stream_summary`` (``end_reason: idle``) and frees the state. A packet of the stream that
    arrives later starts it afresh at its next keyframe."""

    enabled: bool = Field(True, description="close silent streams")
    stream_s: float = Field(
        30.0, gt=0, description="idle once the partition's newest capture_time is this far past the stream's last one"
    )
    wall_s: float = Field(
        60.0, gt=0, description="idle after this long without a packet while the partition is caught up (no lag)"
    )


class DecodeSettings(_Section):
    """What a stream may ask a worker to decode. Packets outside these limits are dead-lettered with a reason before
    a decoder spends memory or time on them (a decode bomb: a small packet that declares or decodes to a huge
    picture; a codec nobody sends video in)."""

    codecs: list[str] = Field(list(DEFAULT_CODECS), min_length=1, description="FFmpeg decoders a stream may name")
    max_pixels: int = Field(
        DEFAULT_MAX_PIXELS,
        ge=1,
        description="largest picture (width x height) a stream may declare; FFmpeg also refuses, before it allocates "
        "it, any frame larger than its stream declared",
    )
    max_extradata_bytes: int = Field(
        DEFAULT_MAX_EXTRADATA_BYTES,
        ge=0,
        description="largest codec extradata (real avcC/hvcC records are under a few KiB)",
    )
    memory_mb: float | None = Field(
        1024.0,
        gt=0,
        description="estimated memory of all open decoders together (a picture per decoder thread plus one, codec "
        "state, extradata); a decoder that would go over it evicts the least recently active streams' decoders, "
        "which resume at their next keyframe; None: no limit",
    )


class SamplingSettings(_Section):
    fps: float | None = Field(None, gt=0, description="frames per second to process per stream; None = every frame")


_CLI_OVERRIDES: ContextVar[dict[str, Any] | None] = ContextVar("expnet_cli_overrides", default=None)


class _CliSource(PydanticBaseSettingsSource):
    """The command line's overrides of one :func:`load_settings` call, above the environment."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return _CLI_OVERRIDES.get() or {}


class WorkerSettings(BaseSettings):
    """Everything a worker needs. Load with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="EXPNET_", env_nested_delimiter="__", frozen=True, extra="forbid", validate_default=True
    )

    group_id: str = Field("expnet-workers", description="consumer group of the fleet")
    worker_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    detector: DetectorSettings = DetectorSettings()
    model: ModelSettings = ModelSettings()
    batch: BatchSettings = BatchSettings()
    sampling: SamplingSettings = SamplingSettings()
    decode: DecodeSettings = DecodeSettings()
    temporal: TemporalSettings = TemporalSettings()
    ops: OpsSettings = OpsSettings()
    idle: IdleSettings = IdleSettings()
    track_state_interval_s: float = Field(
        1.0,
        gt=0,
        description="how often (wall time) the worker records a stream's track ids in its input partition, so a "
        "worker taking the partition over keeps them; keep it under the longest aggregate window",
    )
    state_secret: SecretStr | None = Field(
        None,
        description="the fleet's shared key for the worker-state topic: workers sign the track states they write "
        "(HMAC-SHA256 in a record header) and, taking a partition over, trust only states signed with it (env "
        "EXPNET_STATE_SECRET; masked in every printout); None: any record on that topic is trusted, so only the "
        "workers' principal may write it (deploy/README.md)",
    )
    commit_interval_ms: float = Field(500.0, ge=0, description="longest time between offset commits")
    dlq_max_value_bytes: int = Field(512 * 1024, ge=0, description="larger originals go to the DLQ without bytes")
    dlq_max_key_bytes: int = Field(
        1024, ge=0, description="larger record keys go to the DLQ as their size and SHA-256, without bytes"
    )
    max_step_s: float = Field(
        1.0,
        gt=0,
        description="longest a poll round handles records before it polls again (commits, /healthz, idle checks); "
        "the records it leaves are fetched again. A run of costly packets (large pictures) cannot stall the loop for "
        "longer than this plus one packet",
    )
    max_packet_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="larger packets are dead-lettered")
    session_takeover_s: float = Field(
        10.0,
        gt=0,
        description="a live stream refuses control records and packets of another ingest session; that session takes "
        "it over (at a keyframe) once the stream has been silent this long in stream time (an ingester restarted "
        "after a crash)",
    )
    max_streams: int = Field(
        256,
        ge=1,
        description="open decoders per worker; a new stream at the limit evicts the one that holds its slot for the "
        "least (a stream that never sent a packet first, else the least recently active), which resumes at its next "
        "keyframe",
    )
    delivery: Literal["at_least_once", "exactly_once"] = Field(
        "at_least_once",
        description="exactly_once uses Kafka transactions (needs a broker that filters aborted transactions)",
    )
    group_instance_id: str | None = Field(None, description="static membership id (restarts skip a rebalance)")
    max_queued_frames: int = Field(256, ge=1, description="pause the busiest partitions above this many queued frames")
    shutdown_deadline_s: float = Field(30.0, gt=0, description="SIGTERM: drain, publish, commit within this time")
    delivery_timeout_ms: int = Field(
        600_000, ge=1000, description="how long the producer retries an event through broker outages before failing"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # highest first: the command line (load_settings' overrides), the environment, the YAML file (init kwargs)
        return _CliSource(settings_cls), env_settings, init_settings

    def masked(self) -> dict[str, Any]:
        """The effective settings as plain data with secrets masked (for `config show` and logs)."""
        masked: dict[str, Any] = _mask(self.model_dump(mode="json"), self)
        return masked


def _mask(data: Any, model: Any) -> Any:
    if isinstance(model, BaseModel):
        out = {}
        for key, value in data.items():
            field_value = getattr(model, key, None)
            if isinstance(field_value, SecretStr):
                out[key] = "**********"
            else:
                out[key] = _mask(value, field_value)
        return out
    return data


DEMO_CONFIG = Path(__file__).resolve().parent / "demo.yaml"
"""The settings of ``expnet-stream demo`` (fast group timings, small batches), packaged with the code."""

_ENV_PREFIX = "EXPNET_"


def _read_yaml(path: Path | str) -> dict[str, Any]:
    p = Path(path)
    try:
        loaded = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {p}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {p} is not valid YAML: {exc}") from exc
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"config {p} must be a YAML mapping, got {type(loaded).__name__}")
    return loaded or {}


def load_settings(path: Path | str | None = None, overrides: dict[str, Any] | None = None) -> WorkerSettings:
    """Load worker settings: the packaged defaults, then a YAML file, the environment and explicit overrides.

    Raises :class:`ConfigError` naming each bad field.
    """
    data = _read_yaml(path) if path is not None else {}
    try:
        token = _CLI_OVERRIDES.set(overrides or {})
        try:
            return WorkerSettings(**data)
        finally:
            _CLI_OVERRIDES.reset(token)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        where = f" in {path}" if path else ""
        raise ConfigError(f"invalid worker settings{where}: {problems}") from exc


def _leaves(data: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of the non-mapping values (and empty mappings) of nested data."""
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_leaves(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: data}


def setting_sources(
    path: Path | str | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    settings: WorkerSettings | None = None,
    environ: dict[str, str] | None = None,
) -> dict[str, str]:
    """Where each effective value of :func:`load_settings` ``(path, overrides)`` came from, by dotted key:
    ``default`` (packaged), ``file <path>``, ``env <NAME>`` or ``command line``, by the same precedence.
    ``settings``: what that call returned, when the caller has it already."""
    if settings is None:
        settings = load_settings(path, overrides)
    keys = _leaves(settings.model_dump(mode="json"))
    sources = dict.fromkeys(keys, "default")

    def mark(key: str, source: str) -> None:
        for k in keys:
            if k == key or k.startswith(key + "."):
                sources[k] = source

    if path is not None:
        for key in _leaves(_read_yaml(path)):
            mark(key, f"file {path}")
    for name in sorted(os.environ if environ is None else environ):
        if name.upper().startswith(_ENV_PREFIX):
            mark(name[len(_ENV_PREFIX) :].lower().replace("__", "."), f"env {name}")
    for key in _leaves(overrides or {}):
        mark(key, "command line")
    return sources


def settings_yaml_with_sources(settings: WorkerSettings, sources: dict[str, str]) -> str:
    """The masked settings as YAML, each value followed by a comment naming its source."""
    lines: list[str] = []

    def emit(data: dict[str, Any], prefix: str, indent: str) -> None:
        for key, value in data.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict) and value:
                lines.append(f"{indent}{key}:")
                emit(value, dotted + ".", indent + "  ")
                continue
            text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20).strip()
            text = text.removesuffix("...").strip()
            line = f"{indent}{key}: {text}"
            lines.append(f"{line.ljust(44)}  # {sources.get(dotted, 'default')}")

    emit(settings.masked(), "", "")
    return "\n".join(lines) + "\n"
