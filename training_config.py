"""Customise training here: the spec's `training_config.py`.

`python main_training.py` and `python run_resource_efficient_training.py` read `config` from this
file (any other file: `overseer train --training-config PATH`). Only the settings you assign count;
the mode's preset fills the rest, and `--config` files and command-line flags win over this file.
Every setting, with its meaning: `overseer_plan/config.py` (TrainingConfig).
"""

from overseer_plan import TrainingConfig

config = TrainingConfig()

# Custom resource-efficient settings (the spec's example; uncomment to use):
# config.resource_efficient_mode = True
# config.batch_size = 2  # Even smaller batch size
# config.max_sequence_length = 512  # Even shorter sequences
# config.max_ram_percent = 60.0  # Even lower memory threshold

# What the run is for, the spec's "When to Use" intents (development: resource-efficient; production or
# speed: standard where the machine allows it); `python main_training.py` without a mode flag plans with it:
# config.purpose = "production"

# What to train, and where `--download-data` (given without a URL) fetches fresh data from:
# config.model = "gpt2"  # a catalogue name, a local model directory or a hub id
# config.data = ["notes/"]  # text, Markdown or JSONL files and directories
# config.data_sources = ["https://example.org/corpus.tar.gz"]
