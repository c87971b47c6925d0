#!/usr/bin/env python3
"""Writes the seed corpus of the `decode` fuzz target (fuzz/corpus/decode/).

Input format (see crates/duplex-wire/src/fuzzing.rs): records of [control][bytes], the
control byte's low bit is the direction (0 client->server, 1 server->client) and its
upper seven bits the chunk length minus one.

Two kinds of seeds:
  synthetic  frames built here: every frame type, padding, priority, CONTINUATION,
             PUSH_PROMISE, unknown types, malformed lengths, HTTP/1 instead of h2.
  captured   real connections recorded by a small proxy in this script, in the
             chunking they arrived in: `make_corpus.py capture NAME LISTEN UPSTREAM`
             proxies one connection (e.g. `duplex echo` to `duplex serve`) and saves it.
"""
import asyncio
import struct
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "corpus" / "decode"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def encode(chunks, max_len=128):
    out = bytearray()
    for direction, data in chunks:
        for i in range(0, len(data), max_len):
            piece = data[i:i + max_len]
            out.append(((len(piece) - 1) << 1) | direction)
            out += piece
    return bytes(out)


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def settings(*params, ack=False):
    return frame(4, 1 if ack else 0, 0, b"".join(struct.pack(">HI", i, v) for i, v in params))


def grpc(payload, flag=0):
    return bytes([flag]) + struct.pack(">I", len(payload)) + payload


def msg(text):
    data = text.encode()
    return b"\x0a" + bytes([len(data)]) + data


# HPACK without Huffman: literal with incremental indexing, new name.
def literal(name, value):
    return b"\x40" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


REQUEST = b"\x83\x86" + literal(":path", "/chat.Chat/Chat") + literal(":authority", "localhost") \
    + literal("content-type", "application/grpc") + literal("te", "trailers") + literal("grpc-timeout", "5S")
RESPONSE = b"\x88" + literal("content-type", "application/grpc")
TRAILERS = literal("grpc-status", "0")


def synthetic():
    seeds = {}
    handshake = [(0, PREFACE + settings((2, 0), (4, 1024))), (1, settings((3, 100), (4, 1024))),
                 (1, settings(ack=True)), (0, settings(ack=True))]
    call = [(0, frame(1, 4, 1, REQUEST)),
            (0, frame(0, 0, 1, grpc(msg("hello")) + grpc(msg("world")))),
            (1, frame(1, 4, 1, RESPONSE)),
            (1, frame(0, 0, 1, grpc(msg("<<hello>>")))),
            (1, frame(8, 0, 0, struct.pack(">I", 14))),
            (0, frame(0, 1, 1, b"")),
            (1, frame(1, 5, 1, TRAILERS))]
    seeds["synthetic-echo-call"] = encode(handshake + call, 16)
    block = REQUEST
    seeds["synthetic-continuation"] = encode(handshake + [
        (0, frame(1, 0, 1, block[:7]) + frame(9, 0, 1, block[7:20]) + frame(9, 4, 1, block[20:])),
        (0, frame(0, 8, 1, b"\x03" + grpc(msg("padded")) + b"\0\0\0")),
        (0, frame(1, 0x20 | 0x08 | 0x04, 3, b"\x02" + struct.pack(">I", 0x80000001) + b"\x0f" + b"\x83\x86\x84" + b"\0\0")),
        (0, frame(2, 0, 3, struct.pack(">IB", 1, 200))),
        (0, frame(3, 0, 3, struct.pack(">I", 8))),
    ], 128)
    big = grpc(msg("x" * 100))
    seeds["synthetic-blocked"] = encode(handshake + [
        (0, frame(1, 4, 1, REQUEST)),
        (0, frame(0, 0, 1, big[:60])), (1, frame(8, 0, 1, struct.pack(">I", 60))),
        (0, frame(0, 0, 1, big[60:])), (0, frame(0, 1, 1, b"")),
    ], 5)
    seeds["synthetic-push-ping-goaway"] = encode([
        (0, PREFACE + settings()), (1, settings((2, 1))),
        (0, frame(1, 5, 1, b"\x82\x86\x84" + literal(":authority", "x"))),
        (1, frame(5, 4, 1, struct.pack(">I", 2) + b"\x82\x86" + literal(":path", "/style.css"))),
        (1, frame(1, 4, 1, b"\x88")), (1, frame(1, 5, 2, b"\x88")),
        (0, frame(6, 0, 0, b"12345678")), (1, frame(6, 1, 0, b"12345678")),
        (1, frame(0xa, 0, 0, b"alt-svc")),
        (1, frame(7, 0, 0, struct.pack(">II", 1, 11) + b"too_many_pings")),
    ], 32)
    seeds["synthetic-malformed"] = encode([
        (0, PREFACE + frame(4, 0, 0, b"\0" * 7) + frame(0, 0, 0, b"x") + frame(8, 0, 1, b"\0\0\0\0")
         + frame(1, 8, 1, b"\x09abc") + frame(9, 4, 7, b"\x84") + frame(1, 4, 1, b"\xff\xff\xff\xff\xff")),
        (1, frame(4, 1, 0, b"\0" * 6) + frame(6, 0, 1, b"1234567") + frame(3, 0, 1, b"\0")),
    ], 128)
    seeds["synthetic-http1"] = encode([(0, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), (1, b"HTTP/1.1 400 Bad Request\r\n\r\n")])
    return seeds


async def capture(name, listen, upstream):
    chunks = []
    done = asyncio.Event()

    async def pipe(reader, writer, direction):
        while data := await reader.read(65536):
            chunks.append((direction, data))
            writer.write(data)
            await writer.drain()
        writer.close()

    async def handle(client_reader, client_writer):
        host, port = upstream.rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(pipe(client_reader, up_writer, 0), pipe(up_reader, client_writer, 1),
                             return_exceptions=True)
        done.set()

    host, port = listen.rsplit(":", 1)
    server = await asyncio.start_server(handle, host, int(port))
    print(f"listening on {listen}", flush=True)
    await done.wait()
    server.close()
    (OUT / name).write_bytes(encode(chunks))
    print(f"wrote {OUT / name}: {len(chunks)} chunks")


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    if len(sys.argv) == 5 and sys.argv[1] == "capture":
        asyncio.run(capture(*sys.argv[2:]))
        return
    for name, data in synthetic().items():
        (OUT / name).write_bytes(data)
        print(f"wrote {OUT / name}")


if __name__ == "__main__":
    main()
