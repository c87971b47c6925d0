#!/usr/bin/env python3
"""grpcio interop client for duplex's rooms API (duplex.v1.Hub).

Usage:
    hub_client.py --scenario publish-resume --addr HOST:PORT --room R --count N
                  [--name NAME] [--step-timeout SECONDS]

Stubs are generated at runtime from proto/duplex/v1/hub.proto (grpc_tools), so this
checks the proto as a foreign stack sees it, not duplex's generated Rust types.

Scenario publish-resume, each step bounded by --step-timeout (default 20s):
  (a) one Connect session (metadata duplex-name: NAME) joins R live, publishes
      py-0..py-{N-1} (client_message_id py-i), waits for every PublishAck (matched by
      command_id) and for the N messages echoed back to this session; offsets strictly
      increase and each echo carries its ack's offset.
      Prints "published N last=<offset>".
  (b) publishes py-0 again with the same client_message_id: the ack says duplicate=true
      with the original offset, and no message is delivered for it (checked up to a Ping).
      Prints "duplicate ok".
  (c) half-closes the session (waits for the server to end it with OK), opens a new one
      and joins R with after_offset = offset of py-(N/2-1): the replay up to the Joined
      last_offset is exactly py-(N/2)..py-(N-1), no gap, no duplicate.
      Prints "resumed K from=<after>".
  (d) in that session, joining "bad room" yields a CommandError with code 3
      (INVALID_ARGUMENT) for that command, and the session still answers a Ping.
      Prints "errors ok".
  (e) after half-closing it, unary History(R, after 0, limit 5) returns py-0..py-4 at
      their acked offsets, starting at the room's first offset. Prints "history ok".

Exit 0 when every check passed. Otherwise "error: CODE: details" on stderr: a gRPC
status name for RPC failures and CommandErrors (exit 2), TIMEOUT when a step ran out of
time (exit 3), MISMATCH when the server answered but wrongly (exit 1).
"""

import argparse
import os
import queue
import sys
import threading
import time
from pathlib import Path

# Keep grpc core's INFO/absl log lines off stderr, which callers parse; an explicit
# GRPC_VERBOSITY in the environment still wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc  # noqa: E402
from google.protobuf import text_format  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = REPO_ROOT / "proto"
HUB_PROTO = "duplex/v1/hub.proto"

STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


class Failure(Exception):
    """A failed check: `code` is printed as the CODE of the error line."""

    def __init__(self, code, details, exit_code):
        super().__init__(details)
        self.code = code
        self.details = details
        self.exit_code = exit_code


def mismatch(details):
    return Failure("MISMATCH", details, 1)


def load_protos():
    sys.path.insert(0, str(PROTO_ROOT))
    return grpc.protos_and_services(HUB_PROTO)


def finish(code):
    """Exit now: no grpc thread may keep the interpreter alive after a failure."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class Step:
    """A deadline shared by everything one scenario step waits for. CommandErrors fail
    the step unless it expects them (`accept_errors`)."""

    def __init__(self, name, seconds, accept_errors=False):
        self.name = name
        self.deadline = time.monotonic() + seconds
        self.seconds = seconds
        self.accept_errors = accept_errors

    def remaining(self):
        return self.deadline - time.monotonic()


_END = object()


class Session:
    """One Connect call: commands go in through a queue (the request iterator), frames
    come out through another, filled by a reader thread."""

    def __init__(self, stub, protos, name, call_timeout):
        self.protos = protos
        self.next_command = 1
        self._commands = queue.Queue()
        self._frames = queue.Queue()
        self._closed = False
        self.call = stub.Connect(
            self._requests(),
            metadata=(("duplex-name", name),),
            timeout=call_timeout,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _requests(self):
        # Returning from this generator is what half-closes the call in grpcio.
        while True:
            frame = self._commands.get()
            if frame is _END:
                return
            yield frame

    def _read(self):
        try:
            for frame in self.call:
                self._frames.put(("frame", frame))
            self._frames.put(("end", None))
        except grpc.RpcError as err:
            self._frames.put(("error", err))

    def send(self, **command):
        command_id = self.next_command
        self.next_command += 1
        self._commands.put(self.protos.ClientFrame(command_id=command_id, **command))
        return command_id

    def join(self, room, after_offset=None):
        join = self.protos.Join(room=room)
        if after_offset is not None:
            join.after_offset = after_offset
        return self.send(join=join)

    def publish(self, room, text, client_message_id):
        return self.send(publish=self.protos.Publish(
            room=room, payload=text.encode("utf-8"), client_message_id=client_message_id,
        ))

    def ping(self, client_time):
        return self.send(ping=self.protos.Ping(client_time_unix_micros=client_time))

    def next_frame(self, step, expect_end=False):
        """The next ServerFrame as (kind, payload); raises on timeout or a failed call."""
        remaining = step.remaining()
        if remaining <= 0:
            raise Failure("TIMEOUT", f"step {step.name}: nothing within {step.seconds}s", 3)
        try:
            kind, item = self._frames.get(timeout=remaining)
        except queue.Empty:
            raise Failure(
                "TIMEOUT", f"step {step.name}: no frame within {step.seconds}s", 3
            ) from None
        if kind == "error":
            raise Failure(item.code().name, item.details() or "", 2)
        if kind == "end":
            if expect_end:
                return ("end", None)
            raise mismatch(f"step {step.name}: the server ended the session early")
        which = item.WhichOneof("frame")
        payload = getattr(item, which) if which else None
        if which == "error":
            code = STATUS_NAMES.get(payload.code, f"CODE_{payload.code}")
            if expect_end or not step.accept_errors:
                raise Failure(
                    code,
                    f"{payload.message} (command {payload.command_id}, room {payload.room!r})",
                    2,
                )
        if which in ("lagged", "shutdown"):
            raise mismatch(f"step {step.name}: unexpected {which}: {show(payload)}")
        if expect_end:
            raise mismatch(f"step {step.name}: expected the end of the session, got {which}")
        return (which, payload)

    def frames(self, step):
        """Frames other than presence events, which are not under test here."""
        while True:
            kind, payload = self.next_frame(step)
            if kind != "presence":
                return kind, payload

    def close(self, step):
        """Half-closes the call and waits for the server to end it with OK."""
        if not self._closed:
            self._closed = True
            self._commands.put(_END)
        self.next_frame(step, expect_end=True)
        code = self.call.code()
        if code != grpc.StatusCode.OK:
            raise Failure(code.name, self.call.details() or "", 2)

    def abandon(self):
        if not self._closed:
            self._closed = True
            self._commands.put(_END)
        self.call.cancel()


def expect(condition, details):
    if not condition:
        raise mismatch(details)


def await_joined(session, step, command_id, room):
    kind, frame = session.frames(step)
    expect(kind == "joined", f"join {room}: expected joined, got {kind}: {show(frame)}")
    expect(frame.command_id == command_id and frame.room == room,
           f"join {room}: joined for command {frame.command_id} room {frame.room!r}")
    return frame


def show(frame):
    """One line, so error lines stay one line."""
    if frame is None:
        return "{}"
    return "{" + text_format.MessageToString(frame, as_one_line=True) + "}"


def text_of(message):
    return message.payload.decode("utf-8")


def scenario_publish_resume(stub, protos, args):
    room, n, name = args.room, args.count, args.name
    if n < 2 or n % 2:
        raise mismatch(f"--count must be even and >= 2, got {n}")
    seconds = args.step_timeout
    out = []

    # (a) live join, N publishes, N acks, N echoes.
    first = Session(stub, protos, name, args.call_timeout)
    sessions = [first]
    try:
        step = Step("join", seconds)
        joined = await_joined(first, step, first.join(room), room)
        expect(joined.last_offset == 0, f"room {room} is not fresh: {show(joined)}")

        step = Step("publish", seconds)
        ids = [first.publish(room, f"py-{i}", f"py-{i}") for i in range(n)]
        index_of = {command_id: i for i, command_id in enumerate(ids)}
        acks = {}
        echoed = []
        while len(acks) < n or len(echoed) < n:
            kind, frame = first.frames(step)
            if kind == "publish_ack":
                i = index_of.get(frame.command_id)
                expect(i is not None, f"ack for unknown command {frame.command_id}")
                expect(i not in acks, f"second ack for py-{i}")
                expect(frame.room == room and not frame.duplicate,
                       f"ack for py-{i}: {show(frame)}")
                acks[i] = frame.offset
            elif kind == "message":
                expect(len(echoed) < n, f"more than {n} messages: {show(frame)}")
                echoed.append(frame)
            else:
                raise mismatch(f"publishing: unexpected {kind}: {show(frame)}")
        ack_offsets = [acks[i] for i in range(n)]
        expect(all(a < b for a, b in zip(ack_offsets, ack_offsets[1:])),
               f"ack offsets do not strictly increase in publish order: {ack_offsets}")
        expect(ack_offsets[0] > 0, f"offset 0 acked: {ack_offsets[0]}")
        for i, message in enumerate(echoed):
            got = (message.room, text_of(message), message.client_message_id,
                   message.sender, message.offset)
            want = (room, f"py-{i}", f"py-{i}", name, ack_offsets[i])
            expect(got == want, f"echo {i}: got {got}, want {want}")
        last = ack_offsets[-1]
        out.append(f"published {n} last={last}")
        print(out[-1], flush=True)

        # (b) the same client_message_id again: the original offset, stored once.
        step = Step("duplicate", seconds)
        again = first.publish(room, "py-0", "py-0")
        kind, frame = first.frames(step)
        expect(kind == "publish_ack", f"duplicate publish: expected an ack, got {kind}: {show(frame)}")
        expect(frame.command_id == again and frame.room == room,
               f"duplicate ack for command {frame.command_id} room {frame.room!r}")
        expect(frame.duplicate, f"duplicate publish acked without duplicate=true: {show(frame)}")
        expect(frame.offset == ack_offsets[0],
               f"duplicate acked at {frame.offset}, original at {ack_offsets[0]}")
        ping = first.ping(1)
        kind, frame = first.frames(step)
        expect(kind == "pong" and frame.command_id == ping,
               f"after the duplicate: expected pong, got {kind}: {show(frame)}")
        out.append("duplicate ok")
        print(out[-1], flush=True)

        # (c) a clean half-close, then a new session resumes from the middle.
        first.close(Step("close", seconds))
        sessions.remove(first)
        second = Session(stub, protos, name, args.call_timeout)
        sessions.append(second)
        after = ack_offsets[n // 2 - 1]
        step = Step("resume", seconds)
        joined = await_joined(second, step, second.join(room, after_offset=after), room)
        expect(joined.last_offset == last,
               f"resume: joined.last_offset {joined.last_offset}, want {last} "
               "(was the duplicate stored?)")
        expect(joined.earliest_offset == ack_offsets[0],
               f"resume: joined.earliest_offset {joined.earliest_offset}, want {ack_offsets[0]}")
        replayed = []
        while not replayed or replayed[-1].offset < joined.last_offset:
            kind, frame = second.frames(step)
            expect(kind == "message", f"resume: unexpected {kind}: {show(frame)}")
            expect(len(replayed) < n, "resume: more messages than were published")
            replayed.append(frame)
        got = [(text_of(m), m.offset) for m in replayed]
        want = [(f"py-{i}", ack_offsets[i]) for i in range(n // 2, n)]
        expect(got == want, f"resume after {after}: got {got}, want {want}")
        out.append(f"resumed {len(replayed)} from={after}")
        print(out[-1], flush=True)

        # (d) a bad command fails alone; the session goes on.
        step = Step("errors", seconds, accept_errors=True)
        bad = second.join("bad room")
        kind, frame = second.frames(step)
        expect(kind == "error", f"join 'bad room': expected an error, got {kind}: {show(frame)}")
        expect(frame.command_id == bad and frame.code == 3,
               f"join 'bad room': error {frame.code} for command {frame.command_id}, "
               f"want 3 for {bad}: {frame.message}")
        expect(frame.room == "bad room", f"join 'bad room': error names room {frame.room!r}")
        step = Step("ping", seconds)
        ping = second.ping(42)
        kind, frame = second.frames(step)
        expect(kind == "pong", f"after the error: expected pong, got {kind}: {show(frame)}")
        expect(frame.command_id == ping and frame.client_time_unix_micros == 42,
               f"pong: {show(frame)}")
        out.append("errors ok")
        print(out[-1], flush=True)
        second.close(Step("close", seconds))
        sessions.remove(second)
    finally:
        for session in sessions:
            session.abandon()

    # (e) unary History from the start.
    history = stub.History(protos.HistoryRequest(room=room, after_offset=0, limit=5),
                           timeout=seconds)
    got = [(text_of(m), m.offset, m.client_message_id, m.sender) for m in history.messages]
    want = [(f"py-{i}", ack_offsets[i], f"py-{i}", name) for i in range(5)]
    expect(got == want, f"history: got {got}, want {want}")
    expect((history.earliest_offset, history.last_offset) == (ack_offsets[0], last),
           f"history bounds ({history.earliest_offset}, {history.last_offset}), "
           f"want ({ack_offsets[0]}, {last})")
    out.append("history ok")
    print(out[-1], flush=True)
    return 0


SCENARIOS = {"publish-resume": scenario_publish_resume}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", required=True, choices=sorted(SCENARIOS))
    parser.add_argument("--addr", required=True, help="HOST:PORT of duplex serve")
    parser.add_argument("--room", required=True)
    parser.add_argument("--count", type=int, required=True, metavar="N")
    parser.add_argument("--name", default="py-client", help="duplex-name of the sessions")
    parser.add_argument("--step-timeout", type=float, default=20.0, metavar="SECONDS")
    parser.add_argument("--call-timeout", type=float, default=120.0, metavar="SECONDS",
                        help="deadline of each Connect call, a backstop")
    args = parser.parse_args()

    protos, services = load_protos()
    channel = grpc.insecure_channel(args.addr)
    stub = services.HubStub(channel)
    try:
        code = SCENARIOS[args.scenario](stub, protos, args)
    except Failure as failure:
        print(f"error: {failure.code}: {failure.details}", file=sys.stderr, flush=True)
        code = failure.exit_code
    except grpc.RpcError as err:
        print(f"error: {err.code().name}: {err.details()}", file=sys.stderr, flush=True)
        code = 2
    channel.close()
    finish(code)


if __name__ == "__main__":
    main()
