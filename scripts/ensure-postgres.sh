#!/usr/bin/env bash
# The tests need a PostgreSQL server: an existing one (CDC_TEST_POSTGRES_DSN, or 127.0.0.1:5432), or the
# server binaries so that the test session can start its own. Install Debian's package only when neither exists.
set -euo pipefail
if [ -n "${CDC_TEST_POSTGRES_DSN:-}" ]; then exit 0; fi
if (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then exit 0; fi
if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "no PostgreSQL server or binaries found: installing Debian's postgresql package" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  exit 0
fi
echo "no PostgreSQL reachable and no server binaries: install PostgreSQL or set CDC_TEST_POSTGRES_DSN" >&2
exit 1
