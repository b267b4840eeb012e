#!/usr/bin/env bash
# Install the Debian packages the tests and benchmarks run for real (redis-server, nginx, chromium, wrk,
# node and npm for the authorization server in tests/support/node and the conformance suite's
# Node backend, and libjemalloc2, the allocator the container image runs the gateway on) when missing.
# Needs root (CI runs as root); without it, it says what is missing and fails.
set -euo pipefail
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v wrk >/dev/null || need+=(wrk)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
compgen -G "/usr/lib/*-linux-gnu/libjemalloc.so.2" >/dev/null || need+=(libjemalloc2)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${need[*]} (run as root, or: sudo apt-get install ${need[*]})" >&2
    exit 1
fi
echo "installing Debian packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
