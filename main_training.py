#!/usr/bin/env python3
"""The spec's Method 1 by name: `python main_training.py --resource-efficient [other-options]`.

Same as `overseer train --training-config training_config.py [options]`.
"""

from _spec_scripts import run_train

if __name__ == "__main__":
    run_train("main_training.py", [])
