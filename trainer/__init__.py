"""Overseer's trainer: an accelerate-based loop that steps down on OOM and never loses progress."""
