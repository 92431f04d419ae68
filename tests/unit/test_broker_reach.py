"""An unreachable broker is one clear line: which address, why, what to check; kafka-python's retry logs only at
debug level unless -v."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from expnet_stream.cli.logs import setup_logging
from expnet_stream.cli.main import main
from expnet_stream.kafka.broker import free_port
from expnet_stream.kafka.reach import BrokerUnreachableError, require_broker

pytestmark = pytest.mark.unit


def test_closed_port_is_one_clear_error_within_the_timeout() -> None:
    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(BrokerUnreachableError) as exc:
        require_broker(f"127.0.0.1:{port}", timeout_s=1.0)
    assert time.monotonic() - t0 < 10
    text = str(exc.value)
    assert f"127.0.0.1:{port}" in text and "refused" in text.lower() and "--bootstrap" in text


def test_any_listening_server_of_the_list_is_enough() -> None:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        require_broker(f"127.0.0.1:{free_port()},127.0.0.1:{port}", timeout_s=2.0)


def test_bad_address_is_named() -> None:
    with pytest.raises(BrokerUnreachableError, match="not host:port"):
        require_broker("localhost", timeout_s=0.1)


@pytest.mark.parametrize("command", [["demo", "--json"], ["worker"], ["ingest", "x.mp4"], ["tail", "t"]])
def test_commands_say_it_in_one_line(
    command: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(require_broker, "__defaults__", (0.5,))  # try for 0.5 s instead of 8
    bootstrap = f"127.0.0.1:{free_port()}"
    assert main([*command, "--bootstrap", bootstrap]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("expnet-stream: error: cannot reach the Kafka broker at " + bootstrap)


def test_kafka_python_logs_at_debug_unless_verbose(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("kafka").level)
    try:
        logging.getLogger("kafka").setLevel(logging.NOTSET)
        setup_logging("warning")
        logging.getLogger("kafka.conn").warning("connect attempt returned error 111")
        logging.getLogger("expnet_stream.x").warning("our own warning")
        err = capsys.readouterr().err
        assert "error 111" not in err and "our own warning" in err

        logging.getLogger("kafka").setLevel(logging.NOTSET)
        setup_logging("debug")
        logging.getLogger("kafka.conn").warning("connect attempt returned error 111")
        assert "DEBUG kafka.conn: connect attempt returned error 111" in capsys.readouterr().err

        logging.getLogger("kafka").setLevel(logging.NOTSET)
        setup_logging("warning", verbose=True)
        logging.getLogger("kafka.conn").warning("connect attempt returned error 111")
        assert "WARNING kafka.conn: connect attempt returned error 111" in capsys.readouterr().err
    finally:
        root.handlers[:], lvl, klvl = saved
        root.setLevel(lvl)
        logging.getLogger("kafka").setLevel(klvl)
