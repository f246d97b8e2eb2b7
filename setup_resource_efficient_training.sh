#!/usr/bin/env bash
# The spec's Method 3 by name: set up (see setup.sh), then start resource-efficient training.
# Extra arguments go to `overseer train`, e.g. --download-data URL --continuous-learning.
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh --no-doctor
settings=()
# The spec customises runs in training_config.py; flags win over it.
if [ -f training_config.py ] && [[ " $* " != *" --training-config"* ]]; then
  settings=(--training-config training_config.py)
fi
exec "${OVERSEER_VENV:-.venv}/bin/overseer" train --resource-efficient ${settings[@]+"${settings[@]}"} "$@"
