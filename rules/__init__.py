"""Overseer's rulebook: YAML data files, one concern per file.

Shipped inside the wheel as the ``overseer_rules`` package so that
``overseer_plan.rules`` finds them after a regular (non-editable) install.
"""

from pathlib import Path

RULES_DIR = Path(__file__).resolve().parent
