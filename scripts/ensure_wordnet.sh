#!/usr/bin/env bash
# Install Debian's wordnet-base (the real corpus of the demo and of several tests) if missing.
set -euo pipefail
if [ -f /usr/share/wordnet/data.noun ]; then
    exit 0
fi
echo "== installing WordNet (Debian package wordnet-base)"
sudo_cmd=""
if [ "$(id -u)" -ne 0 ]; then
    sudo_cmd="sudo"
fi
$sudo_cmd apt-get update
DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y --no-install-recommends wordnet-base
