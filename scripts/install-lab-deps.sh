#!/usr/bin/env bash
# Install the Debian packages that `hclr-ids lab` runs. Safe to run again: apt-get skips what is
# already installed. Needs root (or sudo) and a Debian/Ubuntu system.
set -euo pipefail

PACKAGES=(
    iproute2           # ip netns, ip link (veth, bridge)
    ethtool            # turn off veth offloads so captures hold MTU-sized frames
    procps             # sysctl
    tcpdump            # capture on the bridge port
    hping3             # SYN, TCP, UDP and ICMP floods
    nmap               # port, OS, ping-sweep and version scans
    mosquitto          # MQTT broker
    mosquitto-clients  # mosquitto_pub / mosquitto_sub telemetry
    dsniff             # arpspoof
    dnsmasq-base       # DNS server (the binary only, no system service)
    curl               # HTTP client traffic
    iputils-ping       # ping in the benign traffic
)

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        exec sudo -- "$0" "$@"
    fi
    echo "install-lab-deps.sh: run as root (apt-get needs it)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${PACKAGES[@]}"

# The Debian mosquitto package enables a system broker on port 1883. The lab starts its own broker
# inside a network namespace, so a host broker is harmless, but it is not needed either.
if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled mosquitto >/dev/null 2>&1; then
    systemctl disable --now mosquitto >/dev/null 2>&1 || true
fi
