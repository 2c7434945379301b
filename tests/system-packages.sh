#!/usr/bin/env bash
# The Debian packages the test suite needs, installed (as root) when missing; `make test` runs this
# first, so one command sets up a fresh machine.
set -euo pipefail

# mysqlclient, the MariaDB driver, builds from source against the client library's headers; the
# skewed-clock chaos test runs a supervisor under libfaketime (Debian package faketime).
needs=()
if ! { command -v cc && command -v pkg-config && { pkg-config --exists mysqlclient || pkg-config --exists libmariadb; }; } >/dev/null 2>&1; then
    needs+=(default-libmysqlclient-dev pkg-config build-essential)
fi
if [ ! -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] && [ ! -e /usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1 ]; then
    needs+=(faketime)
fi
# The dashboard's browser test drives Debian's own headless Chromium through its chromedriver
# (nothing downloads a browser).
if ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
    needs+=(chromium chromium-driver)
fi
# PgBouncer: the tests start their own (transaction pooling, a loopback port) in front of PostgreSQL.
if ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ]; then
    needs+=(pgbouncer)
fi
if [ ${#needs[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "The tests need these Debian packages: ${needs[*]}; install them as root." >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${needs[@]}" </dev/null
fi
