#!/usr/bin/env python3
"""grpcio-health-checking probe for duplex's grpc.health.v1.Health service.

Usage:
    health_probe.py --addr HOST:PORT --scenario watch|check

Scenario watch: Watch the overall status (service "") and print one line per update,
"status SERVING" / "status NOT_SERVING" (flushed at once, so a test can signal the
server when it sees SERVING); when the stream ends print "ended CODE" (a gRPC status
name, OK if it finished cleanly) and exit 0.

Scenario check: Check "", "chat.Chat" and "duplex.v1.Hub" and print "check NAME STATUS"
for each; then Check "no.such.Service" and print "unknown CODE" with the RPC's status
code (NOT_FOUND per the health protocol). Exit 0.

Any unexpected failure: "error: ..." on stderr, exit 1.
"""

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def status_name(status):
    return health_pb2.HealthCheckResponse.ServingStatus.Name(status)


def watch(stub):
    stream = stub.Watch(health_pb2.HealthCheckRequest(service=""))
    try:
        for response in stream:
            print("status", status_name(response.status), flush=True)
        print("ended OK", flush=True)
    except grpc.RpcError as error:
        print("ended", error.code().name, flush=True)


def check(stub):
    for service in ["", "chat.Chat", "duplex.v1.Hub"]:
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        print("check", service or "(overall)", status_name(response.status), flush=True)
    try:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
        print("unknown OK", flush=True)
    except grpc.RpcError as error:
        print("unknown", error.code().name, flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", required=True)
    parser.add_argument("--scenario", required=True, choices=["watch", "check"])
    args = parser.parse_args()
    with grpc.insecure_channel(args.addr) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            if args.scenario == "watch":
                watch(stub)
            else:
                check(stub)
        except grpc.RpcError as error:
            print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
