#!/usr/bin/env bash
# Install what ntpy's tests need: the real NTP clients the interop tests run (chrony,
# ntpsec's ntpdig/ntpdate, ntpq extracted from the ntpsec package), headless Chromium and
# its driver for the web status page test, systemd's tools (systemd-analyze verify and
# systemd-socket-activate for the unit tests; policy-rc.d below keeps it from starting
# anything), man-db (the man page render test), clang, llvm and libbpf (build-time deps of
# the XDP fast path's program, src/ntpy/daemon/bpf/; libbpf1 also loads it at run time) with
# iproute2 (its tests read `ip link`), libseccomp2 (the seccomp filter), gpsd (the refclock
# SHM test runs its own gpsd; policy-rc.d keeps the packaged one stopped) and the Python
# test tools. Idempotent
# and quick when everything is already present.
#
# Safety: installing an NTP package must never start a daemon that would steer the
# machine's clock, so /usr/sbin/policy-rc.d (exit 101 = "action forbidden") is put in
# place before apt-get and left there.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
APT_PACKAGES=(chrony ntpsec-ntpdig ntpsec-ntpdate python3-ntp chromium chromium-driver systemd man-db
              clang llvm libbpf-dev libbpf1 iproute2 libseccomp2
              gpsd gpsd-tools python3-gps)
NTPQ_DIR=/opt/ntpsec-extract          # ntpq lives at $NTPQ_DIR/usr/bin/ntpq
export DEBIAN_FRONTEND=noninteractive

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

ensure_policy_rc_d() {
    local want='#!/bin/sh
# Installed by ntpy .ci/install-deps.sh: forbid package scripts from starting services.
exit 101'
    if [ ! -f /usr/sbin/policy-rc.d ] || ! grep -qx 'exit 101' /usr/sbin/policy-rc.d; then
        printf '%s\n' "$want" | as_root tee /usr/sbin/policy-rc.d >/dev/null
    fi
    as_root chmod 755 /usr/sbin/policy-rc.d
}

apt_packages_missing() {
    local pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
            return 0
        fi
    done
    return 1
}

# NTP daemons that may steer the clock. A chronyd with -x (virtual clock) or -Q (measure
# only) cannot, so one started by a test or benchmark is not reported.
ntp_daemons_running() {
    local f comm args
    for f in /proc/[0-9]*/comm; do
        comm="$(cat "$f" 2>/dev/null || true)"
        case "$comm" in
            chronyd|ntpd) ;;
            *) continue;;
        esac
        args="$(tr '\0' ' ' < "${f%/comm}/cmdline" 2>/dev/null || true)"
        [ -n "$args" ] || continue
        if [ "$comm" = chronyd ] && [[ " $args" =~ \ -[a-zA-Z]*[xQ] ]] \
            && ! [[ " $args" =~ \ -[a-zA-Z]*q ]]; then
            continue
        fi
        echo "${f%/comm}: $args"
    done
}

ensure_policy_rc_d
APT_UPDATED=0
if apt_packages_missing; then
    as_root apt-get update -qq
    APT_UPDATED=1
    as_root apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}"
fi

if [ ! -x "$NTPQ_DIR/usr/bin/ntpq" ]; then
    [ "$APT_UPDATED" -eq 1 ] || as_root apt-get update -qq
    tmp="$(mktemp -d)"
    # Download as root into our own temp dir (the _apt sandbox user cannot write there).
    (cd "$tmp" && apt-get download -qq -o APT::Sandbox::User=root ntpsec)
    as_root mkdir -p "$NTPQ_DIR"
    as_root dpkg-deb -x "$tmp"/ntpsec_*.deb "$NTPQ_DIR"
    rm -rf "$tmp"
fi

running="$(ntp_daemons_running)"
if [ -n "$running" ]; then
    echo "install-deps: an NTP daemon is running; tests need it stopped:" >&2
    echo "$running" >&2
    exit 1
fi

python -m pip install -q --root-user-action=ignore -e "$REPO_ROOT[test]"

echo "install-deps: chronyd $(chronyd --version | awk '{print $4}'), $(ntpdig -V 2>&1)," \
     "$("$NTPQ_DIR/usr/bin/ntpq" --version 2>&1), ntplib" \
     "$(python -c 'import importlib.metadata as m; print(m.version("ntplib"))')"
