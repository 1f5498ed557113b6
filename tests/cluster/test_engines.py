#!/usr/bin/env python3
"""test_engines.py - the cluster suite's engines work end to end: PostgreSQL
answers psql by DSN and survives a restart, RGW stores, lists and returns
objects and comes back after a stop. Runs under `engines.py run`; fails
(exit 1) without BS_TEST_ENGINES."""
import os
import secrets
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import engines  # noqa: E402


def psql(dsn, sql):
    """psql by conninfo over TCP, as any user: the DSN carries the password."""
    p = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", dsn,
                        "-c", sql], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True, timeout=60)
    if p.returncode != 0:
        raise AssertionError("psql %r failed (%d): %s" % (sql, p.returncode, p.stderr))
    return p.stdout.strip()


def step(what, t0):
    print("  %-40s %.2f s" % (what, time.monotonic() - t0), flush=True)


def main():
    try:
        e = engines.Engines.from_env()
    except engines.EngineError as err:
        print("FAIL engines: %s" % err)
        return 1
    tag = secrets.token_hex(4)
    db, bucket = "engines_" + tag, "engines-" + tag

    # The exported environment matches engines.json.
    assert os.environ["BS_TEST_PG_DSN"] == e.dsn, "BS_TEST_PG_DSN differs from engines.json"
    assert os.environ["BS_TEST_S3_ENDPOINT"] == e.s3_endpoint
    assert os.environ["BS_TEST_S3_REGION"] == "us-east-1"

    t0 = time.monotonic()
    dsn = e.create_database(db)
    psql(dsn, "CREATE TABLE t (k text PRIMARY KEY, v int)")
    psql(dsn, "INSERT INTO t VALUES ('a', 1), ('b', 2)")
    got = psql(dsn, "SELECT sum(v) FROM t")
    assert got == "3", "SELECT sum(v) gave %r" % got
    assert psql(e.dsn, "SHOW fsync") == "on", "fsync is not on"
    step("database, table, query", t0)

    t0 = time.monotonic()
    e.create_bucket(bucket)
    data = os.urandom(100000)
    e.put_object(bucket, "dir/one", data)
    e.put_object(bucket, "dir/two words", b"2")
    e.put_object(bucket, "other", b"")
    assert e.get_object(bucket, "dir/one") == data, "GET returned other bytes"
    assert e.list_objects(bucket) == [("dir/one", 100000), ("dir/two words", 1), ("other", 0)], \
        e.list_objects(bucket)
    assert e.list_objects(bucket, "dir/") == [("dir/one", 100000), ("dir/two words", 1)]
    step("bucket, put, get, list", t0)

    t0 = time.monotonic()
    e.restart_postgres()
    assert psql(dsn, "SELECT count(*) FROM t") == "2", "rows lost across a restart"
    step("postgres restart", t0)

    t0 = time.monotonic()
    psql(dsn, "INSERT INTO t VALUES ('c', 3)")
    e.kill_postgres()
    down = subprocess.run(["psql", "-X", "-d", dsn, "-c", "SELECT 1"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    assert down.returncode != 0, "postgres still answers after kill_postgres()"
    e.start_postgres()
    assert psql(dsn, "SELECT sum(v) FROM t") == "6", "committed row lost by an immediate stop"
    step("postgres immediate stop, recovery", t0)

    t0 = time.monotonic()
    e.stop_rgw()
    try:
        e.list_objects(bucket)
        raise AssertionError("S3 still answers after stop_rgw()")
    except OSError:
        pass  # connection refused: the store is away
    e.start_rgw()
    assert e.get_object(bucket, "dir/one") == data, "object lost across an RGW restart"
    step("rgw stop, start", t0)

    e.delete_bucket(bucket)
    e.drop_database(db)
    print("ok engines")
    return 0


if __name__ == "__main__":
    sys.exit(main())
