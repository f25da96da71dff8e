#!/usr/bin/env bash
# Install CampusGuard as a systemd service on a Debian/Ubuntu box, without Docker: a campus edge
# (the guard booth PC or an industrial box) or a central gateway.
#
#   sudo bash scripts/install-appliance.sh --role edge       # or --role gateway
#
# What it does (each step says so as it goes):
#   - the system user and group `campusguard` (in `dialout` for Modbus RTU serial ports);
#   - the application in /opt/campusguard (a copy of this checkout) with its own virtualenv,
#     installed with the pinned versions of constraints.txt;
#   - /etc/campusguard/<role>.yaml from config/<role>.example.yaml if there is none yet
#     (root:campusguard, 0640: it may hold secrets; better: ${ENV} references and
#     /etc/campusguard/<role>.env, 0640, read by systemd);
#   - /var/lib/campusguard for the outbox, the databases and evidence (systemd's StateDirectory);
#   - the unit /etc/systemd/system/campusguard-<role>.service and the journald drop-in that
#     rotates the logs (config/systemd/);
#   - then it prints the next steps: edit the config, `campusguard doctor`, enable the service.
# It never starts the service itself: a half-edited config must not run.
#
# --root DIR installs into DIR instead of / (a staging tree for packaging, and the tests): no
# user is created and systemctl is not called. --no-venv skips the virtualenv (tests).
set -euo pipefail

ROLE=""
ROOT=""
VENV=1
while [ $# -gt 0 ]; do
    case "$1" in
        --role) ROLE="${2:-}"; shift 2 ;;
        --root) ROOT="${2:-}"; shift 2 ;;
        --no-venv) VENV=0; shift ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "install-appliance: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$ROLE" in
    edge|gateway) ;;
    *) echo "install-appliance: --role must be edge or gateway" >&2; exit 2 ;;
esac
if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
    echo "install-appliance: run as root (sudo), or give --root DIR for a staging tree" >&2
    exit 2
fi

SRC="$(cd "$(dirname "$0")/.." && pwd)"
APP="$ROOT/opt/campusguard"
ETC="$ROOT/etc/campusguard"
STATE="$ROOT/var/lib/campusguard"
UNITS="$ROOT/etc/systemd/system"
JOURNALD="$ROOT/etc/systemd/journald.conf.d"
say() { echo "install-appliance: $*"; }

if [ -z "$ROOT" ]; then
    if ! getent group campusguard >/dev/null; then
        say "creating the system group campusguard"
        groupadd --system campusguard
    fi
    if ! id campusguard >/dev/null 2>&1; then
        say "creating the system user campusguard (no login, home /var/lib/campusguard)"
        useradd --system --gid campusguard --home-dir /var/lib/campusguard \
            --shell /usr/sbin/nologin campusguard
    fi
    if getent group dialout >/dev/null; then
        usermod -a -G dialout campusguard
    fi
fi

say "copying the application to $APP"
mkdir -p "$APP"
for item in pyproject.toml constraints.txt README.md PROTOCOL.md campusguard contract drivers \
    edge gateway simulators webkit config dashboards; do
    if [ -e "$SRC/$item" ]; then
        rm -rf "${APP:?}/$item"
        cp -a "$SRC/$item" "$APP/$item"
    fi
done
find "$APP" -name __pycache__ -type d -prune -exec rm -rf {} +

if [ "$VENV" = 1 ]; then
    command -v python3 >/dev/null || { echo "install-appliance: python3 (3.11+) is needed" >&2; exit 1; }
    if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "install-appliance: Python 3.11 or newer is needed ($(python3 --version))" >&2
        exit 1
    fi
    if ! python3 -m venv --help >/dev/null 2>&1; then
        echo "install-appliance: install python3-venv first (apt-get install python3-venv)" >&2
        exit 1
    fi
    say "creating the virtualenv $APP/venv and installing (pinned by constraints.txt)"
    python3 -m venv "$APP/venv"
    "$APP/venv/bin/pip" install --quiet --upgrade pip
    extra=""
    [ "$ROLE" = gateway ] && extra="[postgres]"
    "$APP/venv/bin/pip" install --quiet -c "$APP/constraints.txt" "$APP$extra"
fi

say "config directory $ETC"
mkdir -p "$ETC"
if [ ! -e "$ETC/$ROLE.yaml" ]; then
    cp "$SRC/config/$ROLE.example.yaml" "$ETC/$ROLE.yaml"
    say "wrote $ETC/$ROLE.yaml from config/$ROLE.example.yaml: edit it before starting"
else
    say "kept the existing $ETC/$ROLE.yaml"
fi
if [ ! -e "$ETC/$ROLE.env" ]; then
    printf '%s\n' "# Secrets for \${ENV} references in $ROLE.yaml, e.g." \
        "# CG_MQTT_PASSWORD=..." > "$ETC/$ROLE.env"
fi
chmod 0750 "$ETC"
chmod 0640 "$ETC/$ROLE.yaml" "$ETC/$ROLE.env"
mkdir -p "$STATE"
chmod 0750 "$STATE"
if [ -z "$ROOT" ]; then
    chown root:campusguard "$ETC" "$ETC/$ROLE.yaml" "$ETC/$ROLE.env"
    chown campusguard:campusguard "$STATE"
fi

say "systemd unit $UNITS/campusguard-$ROLE.service and log rotation (journald)"
mkdir -p "$UNITS" "$JOURNALD"
install -m 0644 "$SRC/config/systemd/campusguard-$ROLE.service" "$UNITS/"
install -m 0644 "$SRC/config/systemd/journald-campusguard.conf" "$JOURNALD/campusguard.conf"
if [ -z "$ROOT" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl restart systemd-journald || true
fi

cat <<EOF

Installed. Next:
  1. edit $ETC/$ROLE.yaml (and secrets in $ETC/$ROLE.env)
  2. check everything it talks to:
       sudo -u campusguard /opt/campusguard/venv/bin/campusguard doctor --config /etc/campusguard/$ROLE.yaml
  3. start it, and at every boot:
       systemctl enable --now campusguard-$ROLE
  4. watch it:  journalctl -u campusguard-$ROLE -f
EOF
