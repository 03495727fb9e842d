"""A local Kinesis (and SQS) endpoint: moto's standalone server on the socket the launcher binds.

    python -m shared.kinesis_local        # make up starts it (its port: StackConfig.kinesis_port)

moto's server (``moto[server]``, the tests' S3 stand-in) speaks the Kinesis API well enough for producers
(``put_record``/``put_records``) and for the local event source mapping (shared/event_source.py), and SQS
for its on-failure queue. Its state is in memory: a restart starts with no stream (the poller creates it
again). Served by werkzeug on the inherited listening socket (``LOCALRAG_LISTEN_FD``, see
shared/serving.py); ``GET /moto-api/`` answers 200 when it is up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys

from shared.serving import inherited_socket, listening_socket, url_of


def main() -> int:
    from moto.server import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    sock = inherited_socket() or listening_socket(
        os.environ.get("KINESIS_HOST", "127.0.0.1"), int(os.environ.get("KINESIS_PORT", "0"))
    )
    # One line per request (the poller's GetRecords, several a second) is noise: warnings and errors only.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server("127.0.0.1", 0, app, threaded=True, fd=sock.fileno())

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    print(f"kinesis: listening on {url_of(sock)}", flush=True)
    with contextlib.suppress(SystemExit, KeyboardInterrupt):
        server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
