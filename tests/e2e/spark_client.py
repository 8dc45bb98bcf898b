"""Runs one small pyspark Connect query against a URL and prints a JSON verdict.

A separate process, so that environment such as GRPC_DEFAULT_SSL_ROOTS_FILE_PATH (the CA the
client trusts) is in place before grpc initializes.

usage: python spark_client.py 'sc://localhost:PORT/;use_ssl=true;token=T'
prints {"ok": true, "rows": [[1, 1], ...], "seconds": S} or {"ok": false, "error": "...", "seconds": S};
exit code 0 either way. S: from opening the session to the rows (or the error), pyspark's own
retries of UNAVAILABLE included.
"""

import json
import sys
import time


def main() -> int:
    url = sys.argv[1]
    from pyspark.sql import SparkSession

    started = time.monotonic()
    try:
        spark = SparkSession.builder.remote(url).create()
        try:
            rows = spark.range(1, 6).selectExpr("id", "id * id AS square").orderBy("id").collect()
            print(json.dumps({"ok": True, "rows": [list(r) for r in rows],
                              "seconds": time.monotonic() - started}))
        finally:
            try:
                spark.stop()
            except Exception:  # noqa: BLE001
                pass
    except Exception as e:  # noqa: BLE001
        print(json.dumps({"ok": False, "type": type(e).__name__, "error": str(e),
                          "seconds": time.monotonic() - started}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
