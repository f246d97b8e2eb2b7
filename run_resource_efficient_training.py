#!/usr/bin/env python3
"""The spec's Method 2 (convenience script): resource-efficient training with any other options.

    python run_resource_efficient_training.py --download-data URL --continuous-learning

Same as `overseer train --resource-efficient [options]`.
"""

import sys

from overseer_plan.cli import main

if __name__ == "__main__":
    sys.argv = ["overseer", "train", "--resource-efficient", *sys.argv[1:]]
    main()
