"""Runs one small pyspark Connect query per URL and prints a JSON verdict for each.

A separate process, so that environment such as GRPC_DEFAULT_SSL_ROOTS_FILE_PATH (the CA the
client trusts) is in place before grpc initializes.

usage: python spark_client.py [--conf] URL [URL ...]    e.g. 'sc://localhost:PORT/;use_ssl=true;token=T'
For each URL in turn, a new session and a query: a small range (default), or with --conf one
config read (the cheapest RPC: its time is mostly what the plugin makes it wait). Prints
{"ok": true, "rows": [[1, 1], ...], "seconds": S} or {"ok": false, "error": "...", "seconds": S}
per URL; exit code 0 either way. S: from opening the session to the answer (or the error),
pyspark's own retries of UNAVAILABLE included.
"""

import json
import sys
import time


def run(url: str, conf_only: bool) -> dict:
    from pyspark.sql import SparkSession

    started = time.monotonic()
    try:
        spark = SparkSession.builder.remote(url).create()
        try:
            if conf_only:
                rows = [[spark.conf.get("spark.app.name")]]
            else:
                rows = spark.range(1, 6).selectExpr("id", "id * id AS square").orderBy("id").collect()
            return {"ok": True, "rows": [list(r) for r in rows], "seconds": time.monotonic() - started}
        finally:
            try:
                spark.stop()
            except Exception:  # noqa: BLE001
                pass
    except Exception as e:  # noqa: BLE001
        return {"ok": False, "type": type(e).__name__, "error": str(e), "seconds": time.monotonic() - started}


def main() -> int:
    args = sys.argv[1:]
    conf_only = bool(args) and args[0] == "--conf"
    for url in args[1:] if conf_only else args:
        print(json.dumps(run(url, conf_only)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
