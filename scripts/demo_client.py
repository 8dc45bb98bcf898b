"""The demo's client side: the real pyspark Spark Connect client against a server guarded by
KBaseAuthServerInterceptor, and through the gateway.

  demo_client.py wait PORT [TIMEOUT_S]     wait until the server answers a gRPC call
  demo_client.py run PORT ALICE_TOKEN BOB_TOKEN
                                           alice (owner) queries; bob, a bad token and no token
                                           are denied. Exit code 0 when all five behave.
  demo_client.py warm PORT TOKEN           one quiet query: a new server's first one is slow
  demo_client.py gateway PORT ALICE_TOKEN BOB_TOKEN ERIN_TOKEN
                                           through the gateway, alice and bob each reach their own
                                           pod; erin (no pod), a bad token and no token are
                                           denied. Exit code 0 when all five behave.
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


def attempt(url: str, show: bool, pod: bool = False):
    """Runs a small query on ``url``: its row count, or with ``pod`` the server's app name."""
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.remote(url).create()
    # pyspark retries UNAVAILABLE for up to 10 minutes (a user whose notebook server is starting
    # wants that); the demo shows the first answer.
    spark.client.set_retry_policies([])
    try:
        df = spark.range(1, 6).selectExpr("id", "id * id AS square", "repeat('*', id) AS bar")
        if show:
            df.show()
        n = df.count()
        return f"the query ran on {spark.conf.get('spark.app.name')}" if pod else f"query returned {n} rows"
    finally:
        try:
            spark.stop()
        except Exception:  # noqa: BLE001 - a denied session may fail to release
            pass


def short(t: str) -> str:
    return t[:6] + "..."


def quiet() -> None:
    """pyspark logs every gRPC error with a stack trace; the demo prints its own summary."""
    import logging

    logging.getLogger("pyspark").setLevel(logging.CRITICAL)
    logging.getLogger("pyspark.sql.connect.client.logging").setLevel(logging.CRITICAL)


def play(cases: list, pod: bool = False) -> bool:
    """Each case: (title, url, token shown, expected status, expected app name or None)."""
    ok = True
    for i, (title, url, tok, want, where) in enumerate(cases, 1):
        shown = url if tok is None else url.replace(url.split("=", 1)[1], tok)
        banner(i, title, shown)
        try:
            got, msg = "OK", attempt(url, show=(i == 1 and not pod), pod=pod)
        except Exception as e:  # noqa: BLE001
            got, msg = _status_of(e)
        good = got == want and (where is None or msg.endswith(where))
        mark = "as expected" if good else f"UNEXPECTED (wanted {want}{' on ' + where if where else ''})"
        verb = "ALLOWED" if got == "OK" else "DENIED "
        print(f"    => {verb} {got}: {msg}   [{mark}]", flush=True)
        ok = ok and good
    return ok


def run(port: int, alice: str, bob: str) -> int:
    quiet()
    cases = [
        ("alice, the pod owner (token= on localhost sends 'authorization: Bearer')",
         f"sc://localhost:{port}/;token={alice}", short(alice), "OK", None),
        ("alice again, with the x-kbase-token header",
         f"sc://127.0.0.1:{port}/;x-kbase-token={alice}", short(alice), "OK", None),
        ("bob, a valid KBase user who is not the owner",
         f"sc://localhost:{port}/;token={bob}", short(bob), "PERMISSION_DENIED", None),
        ("a token KBase does not know",
         f"sc://localhost:{port}/;token=NOTAREALTOKEN0000000000000000000", "NOTARE...", "UNAUTHENTICATED", None),
        ("no token at all", f"sc://127.0.0.1:{port}/", None, "UNAUTHENTICATED", None),
    ]
    ok = play(cases)
    print("\nPart 1 " + ("passed: only the owner got in." if ok else "FAILED (see above)."), flush=True)
    return 0 if ok else 1


def gateway(port: int, alice: str, bob: str, erin: str) -> int:
    quiet()
    cases = [
        ("alice through the gateway: to her own pod",
         f"sc://localhost:{port}/;token={alice}", short(alice), "OK", "pod-alice"),
        ("bob, the same address, with x-kbase-token: to his own pod",
         f"sc://127.0.0.1:{port}/;x-kbase-token={bob}", short(bob), "OK", "pod-bob"),
        ("erin, a valid KBase user whose notebook server is not running",
         f"sc://localhost:{port}/;token={erin}", short(erin), "UNAVAILABLE", None),
        ("a stranger: a token KBase does not know",
         f"sc://localhost:{port}/;token=NOTAREALTOKEN0000000000000000000", "NOTARE...", "UNAUTHENTICATED", None),
        ("no token at all", f"sc://127.0.0.1:{port}/", None, "UNAUTHENTICATED", None),
    ]
    ok = play(cases, pod=True)
    print("\nPart 2 " + ("passed: each user reached their own pod, nobody else got in." if ok
                         else "FAILED (see above)."), flush=True)
    return 0 if ok else 1


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "wait":
        return wait(int(argv[1]), float(argv[2]) if len(argv) > 2 else 120.0)
    if len(argv) == 4 and argv[0] == "run":
        return run(int(argv[1]), argv[2], argv[3])
    if len(argv) == 3 and argv[0] == "warm":
        quiet()
        attempt(f"sc://localhost:{argv[1]}/;token={argv[2]}", show=False)
        return 0
    if len(argv) == 5 and argv[0] == "gateway":
        return gateway(int(argv[1]), argv[2], argv[3], argv[4])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
