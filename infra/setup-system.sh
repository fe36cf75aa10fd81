#!/usr/bin/env bash
# System packages the tests and the embedded stack need: Java 17 (Spark), PostgreSQL's server binaries
# (tests start a real PostgreSQL), Redis and Chromium (dashboard tests). Installed with apt only when missing.
set -euo pipefail
missing=()
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
# docker-compose (v1, Debian) parses docker-compose.yml without an engine; a test checks it.
command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
# Headless Chromium (Debian's) opens the web dashboard in tests/integration/test_dashboard.py.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
# Redis server: tests start their own (the online store's "redis" type, tests/integration/test_online_store_contract.py).
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing system packages: ${missing[*]} (install them, e.g. sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "installing system packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
