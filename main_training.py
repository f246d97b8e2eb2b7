#!/usr/bin/env python3
"""The spec's Method 1 by name: `python main_training.py --resource-efficient [other-options]`.

Same as `overseer train [options]`.
"""

import sys

from overseer_plan.cli import main

if __name__ == "__main__":
    sys.argv = ["overseer", "train", *sys.argv[1:]]
    main()
