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
# Prometheus + promtool (Debian's): tests/integration/test_observability.py and `driftloop up --prometheus`.
# Installed on its own below: without its recommends (node-exporter, a daemon) and without starting the package's.
prometheus_missing=0
{ command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; } || prometheus_missing=1
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  missing+=(postgresql)
fi
if [ ${#missing[@]} -gt 0 ] || [ "$prometheus_missing" -eq 1 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    [ "$prometheus_missing" -eq 1 ] && missing+=(prometheus)
    echo "missing system packages: ${missing[*]} (install them, e.g. sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  apt-get update -qq
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing system packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ "$prometheus_missing" -eq 1 ]; then
  echo "installing system packages: prometheus"
  # policy-rc.d answering 101 tells the postinst (invoke-rc.d / deb-systemd-invoke) not to start the daemon: only
  # the binaries are wanted. An existing policy-rc.d is left as it is.
  blocker=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    blocker=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' >"$blocker" && chmod 755 "$blocker"
    trap 'rm -f "$blocker"' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  if [ -n "$blocker" ]; then rm -f "$blocker"; trap - EXIT; fi
  # If a policy allowed the init script to start it anyway, stop that daemon by the PID in its pidfile.
  pidfile=/run/prometheus/prometheus.pid
  if [ -s "$pidfile" ]; then
    pid=$(cat "$pidfile")
    if [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = /usr/bin/prometheus ]; then
      kill "$pid" && echo "stopped the prometheus daemon the package started (pid $pid)"
    fi
    rm -f "$pidfile"
  fi
fi
