"""The demo's client side: the real pyspark Spark Connect client against a server guarded by
KBaseAuthServerInterceptor.

  demo_client.py wait PORT [TIMEOUT_S]     wait until the server answers a gRPC call
  demo_client.py run PORT ALICE_TOKEN BOB_TOKEN
                                           alice (owner) queries; bob, a bad token and no token
                                           are denied. Exit code 0 when all four behave.
"""

from __future__ import annotations

import re
import sys
import time
import uuid


def _status_of(exc: BaseException) -> tuple[str, str]:
    """(status code name, status message) from a pyspark Connect exception."""
    text = str(exc)
    code = re.search(r"StatusCode\.([A-Z_]+)", text)
    details = re.search(r'details = "(.*?)"\n', text, re.S)
    return (code.group(1) if code else type(exc).__name__,
            details.group(1) if details else text.strip().splitlines()[0][:300])


def wait(port: int, timeout: float) -> int:
    import grpc
    from pyspark.sql.connect.proto import base_pb2, base_pb2_grpc

    ch = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = base_pb2_grpc.SparkConnectServiceStub(ch)
    req = base_pb2.ConfigRequest(
        session_id=str(uuid.uuid4()), user_context=base_pb2.UserContext(user_id="demo"),
        operation=base_pb2.ConfigRequest.Operation(get_all=base_pb2.ConfigRequest.GetAll()))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stub.Config(req, timeout=3)
            return 0
        except grpc.RpcError as e:
            if e.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return 0  # it answered (with a denial: no token was sent)
        time.sleep(0.5)
    return 1


def banner(n: int, title: str, url: str) -> None:
    print(f"\n[{n}] {title}\n    client: SparkSession.builder.remote({url!r}).create()", flush=True)


def attempt(url: str, show: bool):
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.remote(url).create()
    try:
        df = spark.range(1, 6).selectExpr("id", "id * id AS square", "repeat('*', id) AS bar")
        if show:
            df.show()
        return df.count()
    finally:
        try:
            spark.stop()
        except Exception:  # noqa: BLE001 - a denied session may fail to release
            pass


def run(port: int, alice: str, bob: str) -> int:
    import logging

    # pyspark logs every gRPC error with a stack trace; the demo prints its own summary.
    logging.getLogger("pyspark").setLevel(logging.CRITICAL)
    logging.getLogger("pyspark.sql.connect.client.logging").setLevel(logging.CRITICAL)
    ok = True

    def short(t: str) -> str:
        return t[:6] + "..."

    cases = [
        ("alice, the pod owner (token= on localhost sends 'authorization: Bearer')",
         f"sc://localhost:{port}/;token={alice}", short(alice), "OK"),
        ("alice again, with the x-kbase-token header",
         f"sc://127.0.0.1:{port}/;x-kbase-token={alice}", short(alice), "OK"),
        ("bob, a valid KBase user who is not the owner",
         f"sc://localhost:{port}/;token={bob}", short(bob), "PERMISSION_DENIED"),
        ("a token KBase does not know",
         f"sc://localhost:{port}/;token=NOTAREALTOKEN0000000000000000000", "NOTARE...", "UNAUTHENTICATED"),
        ("no token at all", f"sc://127.0.0.1:{port}/", None, "UNAUTHENTICATED"),
    ]
    for i, (title, url, tok, want) in enumerate(cases, 1):
        shown = url if tok is None else url.replace(url.split("=", 1)[1], tok)
        banner(i, title, shown)
        try:
            n = attempt(url, show=(i == 1))
            got, msg = "OK", f"query returned {n} rows"
        except Exception as e:  # noqa: BLE001
            got, msg = _status_of(e)
        mark = "as expected" if got == want else f"UNEXPECTED (wanted {want})"
        verb = "ALLOWED" if got == "OK" else "DENIED "
        print(f"    => {verb} {got}: {msg}   [{mark}]", flush=True)
        ok = ok and got == want
    print("\nDemo " + ("passed: only the owner got in." if ok else "FAILED (see above)."), flush=True)
    return 0 if ok else 1


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "wait":
        return wait(int(argv[1]), float(argv[2]) if len(argv) > 2 else 120.0)
    if len(argv) == 4 and argv[0] == "run":
        return run(int(argv[1]), argv[2], argv[3])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
