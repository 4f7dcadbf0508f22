#!/bin/sh
# Install what the test suite needs on a fresh Debian machine: the package with its
# test extra, shellcheck (lints scripts/hotswap-upgrade.sh), busybox (runs that script with
# busybox's sh and tools too), systemd-socket-activate (the socket-activation upgrade test),
# supervisor (the supervisord test), util-linux's unshare/nsenter (the PID 1 test), openssl
# (the TLS tests' certificate authority), haproxy and Ansible's community.general collection
# (the fleet test: scripts/ansible). Safe to run again: it installs only what is missing.
set -eu
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
missing=""
command -v shellcheck >/dev/null 2>&1 || missing="$missing shellcheck"
command -v busybox >/dev/null 2>&1 || missing="$missing busybox"
command -v systemd-socket-activate >/dev/null 2>&1 || missing="$missing systemd"
command -v supervisord >/dev/null 2>&1 || missing="$missing supervisor"
command -v nsenter >/dev/null 2>&1 || missing="$missing util-linux"
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing="$missing haproxy"
if [ -n "$missing" ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
fi
# The role's HAProxy module is in community.general, not in ansible-core (the test extra):
# from Galaxy when it answers, else from PyPI's `ansible`, which bundles it (~470 MB).
# (ansible-doc exits 0 for a module it cannot find; its JSON is then empty.)
if ! ansible-doc --json -t module community.general.haproxy 2>/dev/null \
        | grep -q '"community.general.haproxy"'; then
    timeout 120 ansible-galaxy collection install community.general >/dev/null 2>&1 \
        || python3 -m pip install --quiet --disable-pip-version-check ansible
fi
