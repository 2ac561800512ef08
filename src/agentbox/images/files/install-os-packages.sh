#!/bin/sh
# Installs what the runtime image needs on a Debian or Ubuntu base, and only what is missing: bases such
# as nikolaik/python-nodejs already carry most of it, and an apt-get round trip is the slowest step.
set -eu

if ! command -v apt-get >/dev/null 2>&1; then
    echo "agentbox: this base image has no apt-get; runtime images are built on Debian or Ubuntu bases" >&2
    exit 3
fi

need=""
want() { need="$need $1"; }

[ -x /usr/bin/tini ] || want tini
command -v bash >/dev/null 2>&1 || want bash
command -v sudo >/dev/null 2>&1 || want sudo
command -v git >/dev/null 2>&1 || want git
command -v curl >/dev/null 2>&1 || want curl
command -v ps >/dev/null 2>&1 || want procps
command -v setpriv >/dev/null 2>&1 || want util-linux
command -v useradd >/dev/null 2>&1 || want passwd
command -v update-ca-certificates >/dev/null 2>&1 || want ca-certificates
# The server's venv is made from the distribution's Python, never from a /usr/local one the agent may
# pip-install into; python3-venv brings ensurepip, which Debian ships separately.
[ -x /usr/bin/python3 ] || want python3
dpkg-query -W -f '${Status}' python3-venv 2>/dev/null | grep -q 'ok installed' || want python3-venv
# Agents pip-install all the time: a base without any pip gets the distribution's.
command -v pip3 >/dev/null 2>&1 || command -v pip >/dev/null 2>&1 || want python3-pip

if [ -n "$need" ]; then
    echo "agentbox: installing$need"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $need
    # Debian trixie and later ship setpriv in its own package.
    if ! command -v setpriv >/dev/null 2>&1; then
        apt-get install -y -q --no-install-recommends setpriv
    fi
    apt-get clean
    rm -rf /var/lib/apt/lists/*
fi

for tool in /usr/bin/tini bash sudo git curl ps setpriv useradd /usr/bin/python3; do
    command -v "$tool" >/dev/null 2>&1 || { echo "agentbox: $tool is still missing after apt-get" >&2; exit 4; }
done
