#!/usr/bin/env python3
"""An independent Python client of the companion gRPC API, for the end-to-end test.

It generates its stubs from proto/ at run time (grpc_tools.protoc into a temporary directory),
so it depends on nothing but the .proto files and the packages of requirements.txt. Run it with
scripts/python-client, which provides the venv.

    client.py --target 127.0.0.1:PORT --token TOKEN --audio FILE --recording-id ID
              [--user-id U] [--timeout 300]
    client.py --self-check

The round trip: a standard health check (grpc.health.v1, service ""), WatchResults opened in a
background thread, SubmitRecording of FILE as a voicemail, the same submission again (it must
return the same job, created=false), GetResult polled every 0.5 s until DONE or FAILED, the
watched result for the recording, and GetResult with a wrong token (UNAUTHENTICATED expected).

Output: one JSON line on stdout with what the server answered; the caller judges the content.
Exit codes: 0 when every call completed, 1 when a call failed or the arguments are wrong
(message on stderr), 2 when the result was not DONE or FAILED within --timeout.
"""

import argparse
import importlib
import json
import os
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PROTO_ROOT = ROOT / "proto"
HEALTH_PROTO = HERE / "health.proto"

POLL_INTERVAL_S = 0.5
# Bounds of the single calls and waits (each also capped by what is left of --timeout where it
# matters for the processing).
RPC_TIMEOUT_S = 60.0
HEALTH_TIMEOUT_S = 30.0
WATCH_OPEN_TIMEOUT_S = 10.0
WATCH_GRACE_S = 30.0

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_TIMEOUT = 2


class ClientError(Exception):
    """A call that did not work: reported on stderr, exit code 1."""


class Timeout(Exception):
    """The recording was not processed within --timeout: exit code 2."""


def log(msg):
    print(f"client.py: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# Stubs


class Stubs:
    """The generated modules, by short name."""

    def __init__(self, modules):
        self.__dict__.update(modules)


def generate_stubs(out_dir):
    """Runs protoc (grpc_tools) on proto/companion/v1/*.proto and health.proto into out_dir and
    imports the result."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    companion = sorted((PROTO_ROOT / "companion" / "v1").glob("*.proto"))
    if not companion:
        raise ClientError(f"no .proto files under {PROTO_ROOT / 'companion' / 'v1'}")
    for name in ("queue", "recording"):
        if not (PROTO_ROOT / "companion" / "v1" / f"{name}.proto").is_file():
            raise ClientError(f"missing proto/companion/v1/{name}.proto")

    def run(include, files):
        args = [
            "grpc_tools.protoc",
            f"-I{include}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            *[str(f.relative_to(include)) for f in files],
        ]
        code = protoc.main(args)
        if code != 0:
            raise ClientError(f"protoc failed ({code}) on {', '.join(str(f) for f in files)}")

    run(PROTO_ROOT, companion)
    run(HERE, [HEALTH_PROTO])

    # companion/ and companion/v1/ are namespace packages (protoc writes no __init__.py).
    sys.path.insert(0, str(out_dir))
    modules = {}
    for f in companion:
        stem = f.stem
        modules[f"{stem}_pb2"] = importlib.import_module(f"companion.v1.{stem}_pb2")
        modules[f"{stem}_pb2_grpc"] = importlib.import_module(f"companion.v1.{stem}_pb2_grpc")
    modules["health_pb2"] = importlib.import_module("health_pb2")
    modules["health_pb2_grpc"] = importlib.import_module("health_pb2_grpc")
    stubs = Stubs(modules)

    # What the round trip uses must be there (the contract may have moved under us).
    for attr in ("RecordingServiceStub",):
        getattr(stubs.recording_pb2_grpc, attr)
    for attr in ("SubmitRecordingRequest", "GetResultRequest", "WatchResultsRequest"):
        getattr(stubs.recording_pb2, attr)
    for attr in ("RecordingKind", "JobStatus"):
        getattr(stubs.queue_pb2, attr)
    stubs.health_pb2_grpc.HealthStub
    stubs.health_pb2.HealthCheckRequest
    return stubs


def enum_name(enum, value):
    try:
        return enum.Name(value)
    except ValueError:
        return str(value)


# ----------------------------------------------------------------------------------------------
# The round trip


class Watcher:
    """WatchResults in a background thread: remembers the first result for one recording."""

    def __init__(self, stub, request, metadata, recording_id):
        self.recording_id = recording_id
        self.call = stub.WatchResults(request, metadata=metadata)
        self.opened = threading.Event()
        self.delivered = threading.Event()
        self.result = None
        self.error = None
        self.seen = 0
        self.thread = threading.Thread(target=self._run, name="watch", daemon=True)
        self.thread.start()

    def _run(self):
        import grpc

        try:
            # Returns once the server answered the call with its headers, i.e. once its handler
            # is subscribed; submitting before that could miss a fast result.
            self.call.initial_metadata()
            self.opened.set()
            for msg in self.call:
                self.seen += 1
                if msg.recording_id == self.recording_id and self.result is None:
                    self.result = msg
                    self.delivered.set()
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.CANCELLED:
                self.error = err
        except Exception as err:  # noqa: BLE001 - reported by the main thread
            self.error = err
        finally:
            self.opened.set()

    def close(self):
        self.call.cancel()
        self.thread.join(timeout=5)


def rpc_error_text(err):
    try:
        return f"{err.code().name}: {err.details()}"
    except Exception:  # noqa: BLE001
        return str(err)


def round_trip(args, stubs, out):
    import grpc

    rec, queue, health = stubs.recording_pb2, stubs.queue_pb2, stubs.health_pb2
    # --timeout bounds the processing: it runs from the first submission.
    deadline = None

    def left():
        return deadline - time.monotonic()

    def call(what, fn, request, timeout=RPC_TIMEOUT_S, **kw):
        try:
            return fn(request, timeout=timeout, **kw)
        except grpc.RpcError as err:
            raise ClientError(f"{what}: {rpc_error_text(err)}") from None

    try:
        audio = Path(args.audio).read_bytes()
    except OSError as err:
        raise ClientError(f"cannot read --audio {args.audio}: {err}") from None

    auth = (("authorization", f"Bearer {args.token}"),)
    channel = grpc.insecure_channel(
        args.target,
        options=[
            ("grpc.enable_http_proxy", 0),
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ],
    )
    watcher = None
    try:
        # 1. Health, waiting for the server to accept connections.
        reply = call(
            "Health.Check",
            stubs.health_pb2_grpc.HealthStub(channel).Check,
            health.HealthCheckRequest(service=""),
            timeout=HEALTH_TIMEOUT_S,
            wait_for_ready=True,
        )
        out["health"] = enum_name(health.HealthCheckResponse.ServingStatus, reply.status)

        recordings = stubs.recording_pb2_grpc.RecordingServiceStub(channel)

        # 2. The watch first, so the result cannot finish before anyone listens.
        watcher = Watcher(
            recordings,
            rec.WatchResultsRequest(user_id=args.user_id),
            auth,
            args.recording_id,
        )
        if not watcher.opened.wait(WATCH_OPEN_TIMEOUT_S):
            log(f"WatchResults: no response headers after {WATCH_OPEN_TIMEOUT_S:.0f} s; going on")
        if watcher.error is not None:
            raise ClientError(f"WatchResults: {rpc_error_text(watcher.error)}")

        # 3. Submit, then the same again (idempotent on the recording id).
        request = rec.SubmitRecordingRequest(
            recording_id=args.recording_id,
            user_id=args.user_id,
            kind=queue.VOICEMAIL,
            audio=audio,
            filename=os.path.basename(args.audio),
        )
        deadline = time.monotonic() + args.timeout
        first = call("SubmitRecording", recordings.SubmitRecording, request, metadata=auth)
        out["job_id"] = first.job_id
        out["created"] = first.created
        again = call("SubmitRecording (again)", recordings.SubmitRecording, request, metadata=auth)
        out["duplicate_job_id"] = again.job_id
        out["duplicate_created"] = again.created
        if again.job_id != first.job_id or again.created:
            log(
                f"check: second submission gave job {again.job_id!r} created={again.created}, "
                f"expected {first.job_id!r} created=False"
            )

        # 4. Poll until the job ended.
        get = rec.GetResultRequest(recording_id=args.recording_id)
        while True:
            result = call(
                "GetResult",
                recordings.GetResult,
                get,
                timeout=max(1.0, min(RPC_TIMEOUT_S, left())),
                metadata=auth,
            )
            out["status"] = enum_name(queue.JobStatus, result.status)
            if result.status in (queue.DONE, queue.FAILED):
                break
            if left() <= 0:
                raise Timeout(
                    f"recording {args.recording_id} still {out['status']} after {args.timeout:g} s"
                )
            time.sleep(min(POLL_INTERVAL_S, max(0.0, left())))
        out["transcript"] = result.transcript.text
        out["language"] = result.language
        if result.HasField("failure"):
            out["failure"] = {"kind": result.failure.kind, "message": result.failure.message}
        if result.job_id and result.job_id != first.job_id:
            log(f"check: GetResult reports job {result.job_id!r}, submitted {first.job_id!r}")

        # 5. The watched result (it may well have come already).
        if not watcher.delivered.wait(WATCH_GRACE_S):
            if watcher.error is not None:
                raise ClientError(f"WatchResults: {rpc_error_text(watcher.error)}")
            raise ClientError(
                f"WatchResults delivered no result for {args.recording_id} within "
                f"{WATCH_GRACE_S:.0f} s of it ending ({watcher.seen} for other recordings)"
            )
        out["watch_status"] = enum_name(queue.JobStatus, watcher.result.status)

        # 6. A wrong token must be refused.
        wrong = (("authorization", f"Bearer wrong-{secrets.token_hex(8)}"),)
        try:
            recordings.GetResult(get, timeout=RPC_TIMEOUT_S, metadata=wrong)
            log("check: GetResult with a wrong token succeeded")
            out["unauthenticated"] = False
        except grpc.RpcError as err:
            out["unauthenticated"] = err.code() == grpc.StatusCode.UNAUTHENTICATED
            if not out["unauthenticated"]:
                log(f"check: GetResult with a wrong token gave {rpc_error_text(err)}")
    finally:
        if watcher is not None:
            watcher.close()
        channel.close()


# ----------------------------------------------------------------------------------------------
# Entry point


class Parser(argparse.ArgumentParser):
    def error(self, message):
        # Exit code 2 means a timeout here; wrong arguments are a failure like any other.
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(EXIT_FAILED)


def parse_args(argv):
    p = Parser(prog="client.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--self-check", action="store_true",
                   help="only generate and import the stubs, then exit")
    p.add_argument("--target", help="host:port of the server")
    p.add_argument("--token", help="bearer token (a PBX or admin token of the tenant)")
    p.add_argument("--audio", help="the recording to submit")
    p.add_argument("--recording-id", help="the recording id to submit it as")
    p.add_argument("--user-id", default="", help="the mailbox owner (default: none)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds from the submission to wait for the result (default 300)")
    args = p.parse_args(argv)
    if not args.self_check:
        missing = [f"--{n.replace('_', '-')}" for n in ("target", "token", "audio", "recording_id")
                   if not getattr(args, n)]
        if missing:
            p.error(f"required: {', '.join(missing)}")
        if not args.timeout > 0:
            p.error("--timeout must be positive")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="companion-pyclient-") as tmp:
        try:
            stubs = generate_stubs(Path(tmp))
        except ClientError as err:
            log(str(err))
            return EXIT_FAILED
        except Exception as err:  # noqa: BLE001 - a broken contract or install
            log(f"generating or importing the stubs failed: {type(err).__name__}: {err}")
            return EXIT_FAILED

        if args.self_check:
            services = sorted(
                name[: -len("Stub")]
                for mod in vars(stubs).values()
                for name in dir(mod)
                if name.endswith("Stub") and isinstance(getattr(mod, name), type)
            )
            print(json.dumps({"self_check": "ok", "services": services}), flush=True)
            return EXIT_OK

        out = {
            "health": None,
            "job_id": None,
            "created": None,
            "status": None,
            "transcript": None,
            "language": None,
            "watch_status": None,
            "duplicate_job_id": None,
            "duplicate_created": None,
            "unauthenticated": None,
            "failure": None,
        }
        code = EXIT_OK
        try:
            round_trip(args, stubs, out)
        except Timeout as err:
            log(str(err))
            code = EXIT_TIMEOUT
        except ClientError as err:
            log(str(err))
            code = EXIT_FAILED
        except Exception as err:  # noqa: BLE001 - report, never a bare traceback only
            log(f"{type(err).__name__}: {err}")
            code = EXIT_FAILED
        # The one JSON line, also on failure: what was gathered helps reading the test's output.
        print(json.dumps(out, ensure_ascii=False), flush=True)
        return code


if __name__ == "__main__":
    sys.exit(main())
