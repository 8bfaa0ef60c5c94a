#!/usr/bin/env bash
# Installs what is needed, builds, and starts toolgated in the foreground on its embedded
# defaults (standalone mode unless a configuration says otherwise). Extra arguments go to
# toolgated, e.g. scripts/run.sh --data-dir /tmp/toolgate.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/build.sh build Release
exec build/daemon/toolgated "$@"
