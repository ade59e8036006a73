#!/usr/bin/env bash
# Debian packages the test suite drives for real: headless Chromium (pages of the Gradio demos), iproute2
# (`ip link set lo up` inside `unshare -n` to prove tests are offline), git (upstream demo repos), systemd
# (`systemd-analyze verify` on rendered units), openssh-server (the Ansible tests' own sshds on loopback), and
# debootstrap + systemd-container (bare Debian 12 test servers booted with systemd-nspawn: tests/helpers/barehost.py).
# Installs only what is missing.
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
command -v git >/dev/null 2>&1 || need+=(git)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || need+=(debootstrap)
command -v systemd-nspawn >/dev/null 2>&1 || need+=(systemd-container)
if [ ${#need[@]} -eq 0 ]; then
  echo "system packages: unchanged"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "system packages missing (${need[*]}): run this script as root or install them" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# No package may start a system service (a system sshd would listen on every address): only the tests' own run.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "system packages: installed ${need[*]}"
