#!/usr/bin/env python3
"""The spec's Method 2 (convenience script): resource-efficient training with any other options.

    python run_resource_efficient_training.py --download-data URL --continuous-learning

Same as `overseer train --resource-efficient --training-config training_config.py [options]`.
"""

from _spec_scripts import run_train

if __name__ == "__main__":
    run_train("run_resource_efficient_training.py", ["--resource-efficient"])
