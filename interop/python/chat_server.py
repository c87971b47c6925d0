#!/usr/bin/env python3
"""grpcio interop server for duplex's bidi Chat service.

Every Msg received on a Chat call is answered with one Echo whose text is
"<<text>>", in order, on the same call.

Usage:
    chat_server.py [--host 127.0.0.1] [--port 0] [--form package|bare]

--form package serves proto/chat.proto       (method path /chat.Chat/Chat)
--form bare    serves interop/proto/bare/chat.proto (method path /Chat/Chat)

Once bound it prints "listening on HOST:PORT" (the actual port) on stdout and
flushes, then serves until SIGTERM or SIGINT, stops and exits 0.
Stubs are generated at runtime with grpc_tools; nothing is written to disk.
"""

import argparse
import os
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path

# Keep grpc core's INFO/absl log lines (e.g. "Got goaway") off stderr, which
# callers parse; an explicit GRPC_VERBOSITY in the environment still wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_DIRS = {
    "package": REPO_ROOT / "proto",
    "bare": REPO_ROOT / "interop" / "proto" / "bare",
}


def load_protos(form):
    """Return (messages module, services module) for the chosen proto form."""
    # grpc.protos_and_services resolves the .proto against sys.path; both forms
    # are named chat.proto, so only the chosen directory is put on the path.
    sys.path.insert(0, str(PROTO_DIRS[form]))
    return grpc.protos_and_services("chat.proto")


def make_servicer(protos, services):
    class ChatServicer(services.ChatServicer):
        def Chat(self, request_iterator, context):
            for msg in request_iterator:
                yield protos.Echo(text=f"<<{msg.text}>>")

    return ChatServicer()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--form", choices=sorted(PROTO_DIRS), default="package")
    args = parser.parse_args()

    protos, services = load_protos(args.form)

    # Each open bidi call holds one worker thread for its whole life.
    # grpcio enables SO_REUSEPORT by default, which lets a second server "bind"
    # a port that is already in use; turn it off so a taken --port fails.
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=32),
        options=[("grpc.so_reuseport", 0)],
    )
    services.add_ChatServicer_to_server(make_servicer(protos, services), server)
    host = f"[{args.host}]" if ":" in args.host else args.host
    try:
        # grpcio raises RuntimeError on a failed bind (older versions returned 0).
        port = server.add_insecure_port(f"{host}:{args.port}")
    except RuntimeError as err:
        port, why = 0, f": {err}"
    else:
        why = ""
    if port == 0:
        print(f"error: could not bind {host}:{args.port}{why}", file=sys.stderr, flush=True)
        return 1

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    server.start()
    print(f"listening on {host}:{port}", flush=True)

    # Event.wait with a timeout keeps the main thread responsive to signals.
    while not stop.wait(0.5):
        pass
    server.stop(grace=1).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
