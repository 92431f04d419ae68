"""``expnet-stream view``: the live view in a browser.

A small web app that reads the expressions and emotions topics as its own consumer group (it commits nothing, so
the fleet never waits for it): the streams page lists every stream heard of in the last minutes with its state
(live, ended, idle), frames/s, faces now, the dominant emotion of its last window and its lag; a stream's page shows
its live picture (decoded from the input topic only while watched, drawn with the annotators of ``annotate``), each
track's emotion over the last 60 s, and the latest window.

Binds loopback by default. With ``--token`` (or EXPNET_VIEW_TOKEN) every route asks for the token: open the printed
URL (``?token=...``) once, the page keeps it in a cookie. Needs ``pip install 'expnet-stream[view]'``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from .common import BOOTSTRAP_HELP, CONFIG_HELP, kafka_overrides

if TYPE_CHECKING:
    from ..view.settings import ViewSettings

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``view`` command to the ``expnet-stream`` parser."""
    from ..view.settings import TOKEN_ENV, ViewSettings

    d = ViewSettings()
    s = subparsers.add_parser(
        "view",
        help="the live view in a browser: streams, live pictures with faces and emotions, per-track timelines",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("--bootstrap", default=None, help=BOOTSTRAP_HELP)
    s.add_argument("--config", default=None, help=CONFIG_HELP + "; its topics and kafka section (SASL, SSL) are used")
    s.add_argument("--host", default=d.host, help="address to listen on (default: %(default)s, loopback only)")
    s.add_argument("--port", type=int, default=d.port, help="TCP port (default: %(default)s; 0 picks a free one)")
    s.add_argument(
        "--token",
        default=None,
        help=f"access token every route asks for (default: ${TOKEN_ENV}, else none); give one when --host is not "
        "loopback",
    )
    s.add_argument(
        "--group", default=None, help="the view's consumer group (default: expnet-view-<random>; never the fleet's)"
    )
    s.add_argument(
        "--max-clients",
        type=int,
        default=d.max_clients,
        help="pictures and event streams open at once; more get 429 (default: %(default)s)",
    )
    s.add_argument(
        "--max-watched",
        type=int,
        default=d.max_watched,
        help="streams whose picture is decoded at once; more get 503 (default: %(default)s)",
    )
    s.add_argument(
        "--max-streams", type=int, default=d.max_streams, help="streams the table holds (default: %(default)s)"
    )
    s.add_argument(
        "--picture-fps",
        type=float,
        default=d.picture_fps,
        help="pictures per second per watched stream (default: %(default)s)",
    )
    s.add_argument(
        "--forget-after",
        type=float,
        default=d.forget_after_s,
        help="seconds after its last event a stream leaves the table (default: %(default)s)",
    )
    s.add_argument(
        "--idle-after",
        type=float,
        default=d.idle_after_s,
        help="seconds without events after which a stream shows as idle (default: %(default)s)",
    )
    s.set_defaults(func=cmd_view)


def view_settings(args: argparse.Namespace) -> ViewSettings:
    """The view's settings from the command line (the token from EXPNET_VIEW_TOKEN when not given)."""
    from ..view.settings import ViewSettings

    return ViewSettings.with_env_token(
        args.token,
        host=args.host,
        port=args.port,
        group_id=args.group,
        max_clients=args.max_clients,
        max_watched=args.max_watched,
        max_streams=args.max_streams,
        picture_fps=args.picture_fps,
        forget_after_s=args.forget_after,
        idle_after_s=args.idle_after,
    )


def cmd_view(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from ..config.settings import load_settings
    from ..errors import ConfigError
    from ..kafka.reach import require_broker
    from ..view import require_view_extra
    from ..view.server import ViewServer
    from ..view.service import ViewService

    require_view_extra()  # before anything connects: the install command, not a traceback
    worker = load_settings(args.config, kafka_overrides(args))
    require_broker(worker.kafka.bootstrap)
    try:
        settings = view_settings(args)
    except ValidationError as exc:
        raise ConfigError(f"view options: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}") from exc
    if settings.token is None and settings.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "view host=%s is not loopback and has no --token: anyone who reaches it sees the streams", settings.host
        )
    server = ViewServer(ViewService(worker, settings)).start()
    print(f"expnet-stream view: {server.url_with_token()}  (Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
