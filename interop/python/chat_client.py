#!/usr/bin/env python3
"""grpcio interop client for duplex's bidi Chat service.

Usage:
    chat_client.py --addr HOST:PORT [--form package|bare] [--deadline-ms N] [--count N]

Default (stdin) mode: every stdin line (trailing "\\n" removed, nothing else)
is sent as one Msg over a single bidi call, as it is read; every reply is
printed as "server: <echo text>" and flushed. At EOF the request stream is
half-closed and the client exits 0 once the server has finished the call.

--count N: sends "m0".."m{N-1}" over one call, checks the replies are exactly
"<<m0>>".."<<m{N-1}>>" in order, prints "ok N" and exits 0; otherwise prints
the first mismatch and exits 1.

Any RPC error prints "error: <STATUS_CODE_NAME>: <details>" on stderr and
exits 2. --deadline-ms sets the deadline of the (single) call.
"""

import argparse
import os
import sys
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
    sys.path.insert(0, str(PROTO_DIRS[form]))
    return grpc.protos_and_services("chat.proto")


def finish(code):
    """Exit now, without waiting for grpc's request-consumer thread.

    That thread may still be blocked reading stdin (e.g. after a deadline on
    a pipe that never closes), so a normal interpreter shutdown could hang.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def stdin_requests(protos):
    # Read raw bytes so only the trailing "\n" is removed (no universal-newline
    # translation) and a last line without "\n" is still sent. Returning from
    # the generator at EOF is what half-closes the call in grpcio.
    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline()
        if not line:
            return
        if line.endswith(b"\n"):
            line = line[:-1]
        yield protos.Msg(text=line.decode("utf-8", errors="replace"))


def run_stdin(stub, protos, timeout):
    out = sys.stdout.buffer
    for echo in stub.Chat(stdin_requests(protos), timeout=timeout):
        out.write(b"server: " + echo.text.encode("utf-8") + b"\n")
        out.flush()
    return 0


def run_count(stub, protos, timeout, n):
    requests = (protos.Msg(text=f"m{i}") for i in range(n))
    got = [echo.text for echo in stub.Chat(requests, timeout=timeout)]
    for i, text in enumerate(got[:n]):
        want = f"<<m{i}>>"
        if text != want:
            print(f"mismatch at reply {i}: want {want!r}, got {text!r}", flush=True)
            return 1
    if len(got) != n:
        print(f"mismatch: want {n} replies, got {len(got)}", flush=True)
        return 1
    print(f"ok {n}", flush=True)
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--addr", required=True, help="HOST:PORT of the Chat server")
    parser.add_argument("--form", choices=sorted(PROTO_DIRS), default="package")
    parser.add_argument("--deadline-ms", type=int, default=None, help="per-call deadline")
    parser.add_argument("--count", type=int, default=None, metavar="N",
                        help="send m0..m{N-1} and verify the echoes")
    args = parser.parse_args()

    protos, services = load_protos(args.form)
    timeout = None if args.deadline_ms is None else args.deadline_ms / 1000.0

    channel = grpc.insecure_channel(args.addr)
    stub = services.ChatStub(channel)
    try:
        if args.count is not None:
            code = run_count(stub, protos, timeout, args.count)
        else:
            code = run_stdin(stub, protos, timeout)
    except grpc.RpcError as err:
        print(f"error: {err.code().name}: {err.details()}", file=sys.stderr, flush=True)
        code = 2
    finish(code)


if __name__ == "__main__":
    main()
