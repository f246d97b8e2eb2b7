#!/usr/bin/env bash
# The spec's Method 3 by name: set up (see setup.sh), then start resource-efficient training.
# Extra arguments go to `overseer train`, e.g. --download-data URL --continuous-learning.
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh --no-doctor
exec "${OVERSEER_VENV:-.venv}/bin/overseer" train --resource-efficient "$@"
