#!/usr/bin/env python3
"""The spec's Method 2 (convenience script): resource-efficient training with any other options.

    python run_resource_efficient_training.py --download-data URL --continuous-learning

Same as `overseer train --resource-efficient --training-config training_config.py [options]`.
"""

import sys
from pathlib import Path

from overseer_plan.cli import main

# The spec customises runs in training_config.py next to this script; flags and --config win over it.
_SETTINGS = Path(__file__).resolve().with_name("training_config.py")

if __name__ == "__main__":
    given = sys.argv[1:]
    if _SETTINGS.is_file() and not any(a.split("=")[0] == "--training-config" for a in given):
        given = ["--training-config", str(_SETTINGS), *given]
    sys.argv = ["overseer", "train", "--resource-efficient", *given]
    main()
