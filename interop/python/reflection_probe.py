#!/usr/bin/env python3
"""grpcio-reflection (v1alpha) probe: lists the services a server offers through
reflection and resolves method descriptors from them, as grpcurl or grpcui would.

Usage:
    reflection_probe.py --addr HOST:PORT

Prints "service NAME" for each listed service (sorted), then for chat.Chat/Chat and
duplex.v1.Hub/Connect and grpc.health.v1.Health/Watch a line
"method SERVICE/METHOD INPUT OUTPUT client_streaming=B server_streaming=B" with the
full names of the message types, resolved through the reflected file descriptors. Exit 0;
on failure "error: ..." on stderr and exit 1.
"""

import argparse
import sys

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

METHODS = [
    ("chat.Chat", "Chat"),
    ("duplex.v1.Hub", "Connect"),
    ("grpc.health.v1.Health", "Watch"),
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", required=True)
    args = parser.parse_args()
    with grpc.insecure_channel(args.addr) as channel:
        try:
            database = ProtoReflectionDescriptorDatabase(channel)
            for service in sorted(database.get_services()):
                print("service", service, flush=True)
            pool = DescriptorPool(database)
            for service, method in METHODS:
                descriptor = pool.FindServiceByName(service).FindMethodByName(method)
                print(
                    "method",
                    f"{service}/{method}",
                    descriptor.input_type.full_name,
                    descriptor.output_type.full_name,
                    f"client_streaming={descriptor.client_streaming}",
                    f"server_streaming={descriptor.server_streaming}",
                    flush=True,
                )
        except (grpc.RpcError, KeyError) as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
