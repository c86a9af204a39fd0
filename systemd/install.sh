#!/bin/sh
# Install (or upgrade, or remove) edge-agent on a gateway as a systemd service.
#
#   sudo systemd/install.sh                 install or upgrade; safe to run again
#   sudo systemd/install.sh --uninstall     stop, disable, remove the program (config and data stay)
#   sudo systemd/install.sh --uninstall --purge   ... and the config, the data and the user
#
# What it does (docs/operations.md, "Installing on a gateway"):
#   - a system user edge-agent, in the dialout group (serial ports)
#   - the operator who ran sudo ($SUDO_USER; --operator USER names another, --no-operator none)
#     joins group edge-agent, so `edge-agent validate` and `edge-agent status` work without sudo
#     (from the next login); the secrets file stays root's alone
#   - the program in a venv under /opt/edge-agent, from ./wheelhouse when it exists (offline:
#     `make wheelhouse` on a machine with the same CPU architecture and Python version), else
#     from this source tree with pip (needs PyPI)
#   - /etc/edge-agent/config.yaml from config/edge-agent.yaml, root:edge-agent 0640, only when
#     there is none (yours is never overwritten; the current example lands beside it as
#     config.yaml.example); /etc/edge-agent/env for secrets, 0600
#   - /var/lib/edge-agent for the buffer, edge-agent:edge-agent 0750
#   - the unit, enabled; an upgrade restarts a running service
#
# Options for images and tests: --root DIR installs into DIR as if it were /; --prefix DIR
# instead of /opt/edge-agent; --wheelhouse DIR; --no-user and --no-systemctl skip the users and
# groups and calling systemctl (SYSTEMCTL=..., USERADD=..., USERMOD=..., USERDEL=...,
# GROUPDEL=... replace the commands themselves). With --root, systemctl only enables the unit
# (symlinks in DIR), nothing is started, and the users are made in DIR's own etc/passwd and
# etc/group when it has them (an OS image; a plain directory gets none), files owned by their ids.
set -eu

PREFIX=/opt/edge-agent
ROOT=
WHEELHOUSE=
UNINSTALL=0
PURGE=0
DO_USER=1
DO_SYSTEMCTL=1
START=0
PYTHON=${PYTHON:-python3}
SYSTEMCTL=${SYSTEMCTL:-systemctl}
USERADD=${USERADD:-useradd}
USERMOD=${USERMOD:-usermod}
USERDEL=${USERDEL:-userdel}
GROUPDEL=${GROUPDEL:-groupdel}
USER_NAME=edge-agent
DO_OPERATOR=1
OPERATOR=
SRC=$(cd "$(dirname "$0")/.." && pwd)

usage() {
    sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

while [ $# -gt 0 ]; do
    case $1 in
        --root) ROOT=${2:?--root needs a directory}; shift ;;
        --root=*) ROOT=${1#*=} ;;
        --prefix) PREFIX=${2:?--prefix needs a directory}; shift ;;
        --prefix=*) PREFIX=${1#*=} ;;
        --wheelhouse) WHEELHOUSE=${2:?--wheelhouse needs a directory}; shift ;;
        --wheelhouse=*) WHEELHOUSE=${1#*=} ;;
        --uninstall) UNINSTALL=1 ;;
        --purge) PURGE=1 ;;
        --no-user) DO_USER=0 ;;
        --operator) OPERATOR=${2:?--operator needs a user name}; shift ;;
        --operator=*) OPERATOR=${1#*=} ;;
        --no-operator) DO_OPERATOR=0 ;;
        --no-systemctl) DO_SYSTEMCTL=0 ;;
        --start) START=1 ;;
        -h|--help) usage 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage 2 >&2 ;;
    esac
    shift
done

ROOT=${ROOT%/}
if [ -n "$ROOT" ]; then
    # useradd --root wants an absolute path.
    mkdir -p "$ROOT"
    ROOT=$(cd "$ROOT" && pwd)
fi
ETC=$ROOT/etc/edge-agent
STATE=$ROOT/var/lib/edge-agent
UNIT=$ROOT/etc/systemd/system/edge-agent.service
VENV=$ROOT$PREFIX

say() { printf 'edge-agent: %s\n' "$*"; }
die() { printf 'edge-agent: %s\n' "$*" >&2; exit 1; }

if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
    die "run as root (sudo $0 $*)"
fi

# systemctl on this machine; into --root only what works offline (enable/disable: symlinks).
systemctl_() {
    if [ "$DO_SYSTEMCTL" != 1 ]; then
        say "skipped: systemctl $*"
    elif [ -z "$ROOT" ]; then
        "$SYSTEMCTL" "$@"
    else
        case $1 in
            enable|disable) "$SYSTEMCTL" --root="$ROOT" "$@" ;;
            *) say "skipped (--root): systemctl $*" ;;
        esac
    fi
}

# Users and groups of the system being installed: this machine's, or those of the OS image in
# --root DIR (its etc/passwd and etc/group; the host's would give the image the wrong ids).
lookup() { # passwd|group NAME -> that line
    if [ -z "$ROOT" ]; then
        getent "$1" "$2"
    else
        awk -F: -v name="$2" '$1 == name { print; found = 1 } END { exit !found }' \
            "$ROOT/etc/$1" 2>/dev/null
    fi
}
have_user() { lookup passwd "$1" >/dev/null 2>&1; }
# Users and groups are managed here, or inside an image that has its own user database.
MANAGE_USERS=$DO_USER
if [ -n "$ROOT" ] && { [ ! -f "$ROOT/etc/passwd" ] || [ ! -f "$ROOT/etc/group" ]; }; then
    MANAGE_USERS=0
fi
users_() { # useradd|usermod|userdel|groupdel ARGS...: on this machine, or inside --root DIR
    cmd=$1
    shift
    if [ -n "$ROOT" ]; then "$cmd" --root "$ROOT" "$@"; else "$cmd" "$@"; fi
}

# The files' owner and group, numeric: edge-agent's when it exists, else (tests, --no-user) ours.
owner_uid() {
    lookup passwd "$USER_NAME" 2>/dev/null | cut -d: -f3 | grep . || id -u
}
owner_gid() {
    lookup group "$USER_NAME" 2>/dev/null | cut -d: -f3 | grep . || id -g
}
in_group() { # USER GROUP: listed as a member (a supplementary group)
    lookup group "$2" 2>/dev/null | cut -d: -f4 | tr ',' '\n' | grep -qx "$1"
}

# ---------------------------------------------------------------------------------------------
if [ "$UNINSTALL" = 1 ]; then
    if [ -f "$UNIT" ]; then
        systemctl_ stop edge-agent.service || true
        systemctl_ disable edge-agent.service || true
        rm -f "$UNIT"
        systemctl_ daemon-reload || true
        say "removed the service"
    fi
    if [ -L "$ROOT/usr/local/bin/edge-agent" ]; then
        rm -f "$ROOT/usr/local/bin/edge-agent"
    fi
    if [ -d "$VENV" ]; then
        rm -rf "$VENV"
        say "removed $PREFIX"
    fi
    if [ "$PURGE" = 1 ]; then
        rm -rf "$ETC" "$STATE"
        say "removed /etc/edge-agent and /var/lib/edge-agent (config and buffer)"
        if [ "$MANAGE_USERS" = 1 ] && have_user "$USER_NAME"; then
            users_ "$USERDEL" "$USER_NAME" || true
            say "removed user $USER_NAME"
        fi
        # userdel keeps the group when login.defs says USERGROUPS_ENAB no (or an image has none).
        if [ "$MANAGE_USERS" = 1 ] && lookup group "$USER_NAME" >/dev/null 2>&1; then
            users_ "$GROUPDEL" "$USER_NAME" || true
            say "removed group $USER_NAME"
        fi
    else
        say "kept /etc/edge-agent and /var/lib/edge-agent (--purge removes them)"
    fi
    exit 0
fi

# ---------------------------------------------------------------------------------------------
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
    die "Python 3.11 or newer is needed ($PYTHON): on Debian 12 / Raspberry Pi OS bookworm: apt-get install python3 python3-venv"
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null ||
    die "the venv module is missing: apt-get install python3-venv"

# 1. The user, in dialout for serial ports.
if [ "$MANAGE_USERS" = 1 ]; then
    if have_user "$USER_NAME"; then
        users_ "$USERMOD" -a -G dialout "$USER_NAME"
    else
        users_ "$USERADD" --system --home-dir /var/lib/edge-agent --no-create-home \
            --shell /usr/sbin/nologin --user-group --groups dialout "$USER_NAME"
        say "created system user $USER_NAME (groups: dialout)"
    fi
else
    say "skipped: creating user $USER_NAME"
fi
GROUP=$(owner_gid)
OWNER=$(owner_uid)

# 1b. The operator joins group edge-agent: the config (0640) and the buffer become readable to
# them, so `edge-agent validate` and `edge-agent status` need no sudo. Not the secrets in
# /etc/edge-agent/env (root, 0600). Whoever ran sudo, unless named otherwise; never root.
JOINED=
if [ -z "$OPERATOR" ]; then
    OPERATOR=${SUDO_USER:-}
fi
if [ "$DO_OPERATOR" = 1 ] && [ "$MANAGE_USERS" = 1 ] && [ -n "$OPERATOR" ] &&
    [ "$OPERATOR" != root ] && lookup group "$USER_NAME" >/dev/null 2>&1; then
    if ! have_user "$OPERATOR"; then
        say "no user $OPERATOR: not added to group $USER_NAME"
    elif in_group "$OPERATOR" "$USER_NAME"; then
        say "$OPERATOR is in group $USER_NAME already"
    else
        users_ "$USERMOD" -a -G "$USER_NAME" "$OPERATOR"
        JOINED=$OPERATOR
        say "added $OPERATOR to group $USER_NAME (reads the config; never /etc/edge-agent/env)"
    fi
fi

# 2. The program, in its own venv (an upgrade reinstalls into the same venv).
if [ -z "$WHEELHOUSE" ] && [ -d "$SRC/wheelhouse" ]; then
    WHEELHOUSE=$SRC/wheelhouse
fi
if [ ! -x "$VENV/bin/python" ]; then
    mkdir -p "$(dirname "$VENV")"
    "$PYTHON" -m venv "$VENV"
fi
if [ -n "$WHEELHOUSE" ]; then
    [ -d "$WHEELHOUSE" ] || die "no wheelhouse at $WHEELHOUSE"
    say "installing from $WHEELHOUSE (offline)"
    "$VENV/bin/python" -m pip install --quiet --no-index --find-links "$WHEELHOUSE" \
        --upgrade edge-agent
else
    say "installing from $SRC (downloads dependencies from PyPI)"
    "$VENV/bin/python" -m pip install --quiet --upgrade "$SRC"
fi
# The documentation beside the program: both READMEs, the changelog and docs/ (the pages the
# READMEs link to, same relative paths), the Grafana dashboard, the Prometheus rules and the
# bundled device profiles (found there by name: agent/app/config/profilefiles.py).
DOCS=$VENV/share/edge-agent
mkdir -p "$DOCS"
for f in README.md README.zh-CN.md CHANGELOG.md; do
    if [ -f "$SRC/$f" ]; then
        install -m 0644 "$SRC/$f" "$DOCS/$f"
    fi
done
rm -rf "${DOCS:?}/docs"
if [ -d "$SRC/docs" ]; then
    cp -R "$SRC/docs" "$DOCS/docs"
fi
for d in grafana prometheus profiles; do
    if [ -d "$SRC/config/$d" ]; then
        rm -rf "${DOCS:?}/$d"
        cp -R "$SRC/config/$d" "$DOCS/$d"
    fi
done
VERSION=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("edge-agent"))')
say "installed edge-agent $VERSION in $PREFIX"

# 3. Config (never overwritten) and secrets file; state directory.
install -d -m 0750 -o root -g "$GROUP" "$ETC"
install -m 0640 -o root -g "$GROUP" "$SRC/config/edge-agent.yaml" "$ETC/config.yaml.example"
if [ ! -e "$ETC/config.yaml" ]; then
    install -m 0640 -o root -g "$GROUP" "$SRC/config/edge-agent.yaml" "$ETC/config.yaml"
    say "wrote /etc/edge-agent/config.yaml (an example: edit it)"
else
    say "kept /etc/edge-agent/config.yaml (the new example is config.yaml.example)"
fi
if [ ! -e "$ETC/env" ]; then
    umask 077
    printf '%s\n' "# Read by systemd before the agent starts; mode 0600, root only." \
        "# MQTT_PASS=..." "# EDGE_AGENT_LOG_FORMAT=json" > "$ETC/env"
    umask 022
    chmod 0600 "$ETC/env"
fi
install -d -m 0750 -o "$OWNER" -g "$GROUP" "$STATE"

# The command on every operator's PATH.
install -d -m 0755 "$ROOT/usr/local/bin"
ln -sfn "$PREFIX/bin/edge-agent" "$ROOT/usr/local/bin/edge-agent"

# 4. The unit (paths follow --prefix).
install -d -m 0755 "$(dirname "$UNIT")"
sed "s#/opt/edge-agent#$PREFIX#g" "$SRC/systemd/edge-agent.service" > "$UNIT.tmp"
chmod 0644 "$UNIT.tmp"
mv "$UNIT.tmp" "$UNIT"

if "$VENV/bin/edge-agent" validate "$ETC/config.yaml" >/dev/null 2>&1; then
    VALID=1
else
    VALID=0
    say "the config does not validate yet: $PREFIX/bin/edge-agent validate /etc/edge-agent/config.yaml"
fi

systemctl_ daemon-reload
systemctl_ enable edge-agent.service
if [ "$START" = 1 ] && [ "$VALID" = 1 ]; then
    systemctl_ restart edge-agent.service
else
    # An upgrade: a running agent restarts on the new version; a stopped one stays stopped.
    systemctl_ try-restart edge-agent.service
fi
say "done. Next: edit /etc/edge-agent/config.yaml, then: systemctl start edge-agent; edge-agent status"
if [ -n "$JOINED" ]; then
    say "$JOINED: log out and in again (a new SSH session) for group $USER_NAME to apply; until then, edge-agent validate and edge-agent status need sudo"
fi
