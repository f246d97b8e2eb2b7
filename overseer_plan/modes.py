"""Which mode the rulebook recommends for a machine: resource-efficient, standard, or "let the fit decide".

The spec's "When to Use" lists are data in `rules/modes.yaml`; this module only interprets them.
Resource-efficient wins whenever any of its rules holds (every matching reason is kept, so
the user sees all of them, and so are the standard rules it beat); standard needs one of its
rules to hold; when neither does, the rulebook has no opinion and the planner's fit decides
(`overseer plan`).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from overseer_plan._model import StrictModel
from overseer_plan.facts import hardware_facts
from overseer_plan.hardware import Hardware
from overseer_plan.rules import Mode, Rulebook

FIT_DECIDES = ("no mode rule matched: the planner's fit decides (overseer plan; --purpose development, production "
               "or speed says what the run is for)")


class ModeAdvice(StrictModel):
    """The rulebook's mode recommendation and the rules behind it."""

    mode: Mode | None = None
    """The recommended mode; None when no rule matched and the planner's fit decides."""
    reasons: list[tuple[str, str]] = Field(default_factory=list)
    """(rule id, why) of every matching rule of the recommended mode, sorted by rule id."""
    overruled: list[tuple[str, str]] = Field(default_factory=list)
    """(rule id, why) of matching standard rules that a resource-efficient reason beat."""

    def describe(self) -> str:
        """One line: the mode and every reason, or what happens when there is none."""
        if self.mode is None:
            return FIT_DECIDES
        line = f"{self.mode}: " + "; ".join(why.rstrip(".") for _, why in self.reasons)
        if self.overruled:
            line += " (overrules " + ", ".join(rid for rid, _ in self.overruled) + ")"
        return line


def recommend_mode(hw: Hardware, rulebook: Rulebook, *, extra: dict[str, Any] | None = None) -> ModeAdvice:
    """Apply the rulebook's mode rules to `hw`.

    Args:
        hw: the machine.
        rulebook: a loaded rulebook (`load_rulebook()`).
        extra: additional facts by name, passed to `hardware_facts`.

    Returns:
        resource-efficient when any resource-efficient rule holds (all matching reasons, and the
        standard rules it beat: a production purpose on an 8 GB machine still trains gently),
        else standard when a standard rule holds, else mode None (the planner's fit decides).
    """
    facts = hardware_facts(hw, extra)
    matching = [r for r in rulebook.of_kind("mode") if r.when.holds(facts)]
    efficient = [(r.id, r.why) for r in matching if r.mode == "resource-efficient"]
    standard = [(r.id, r.why) for r in matching if r.mode == "standard"]
    if efficient:
        return ModeAdvice(mode="resource-efficient", reasons=efficient, overruled=standard)
    if standard:
        return ModeAdvice(mode="standard", reasons=standard)
    return ModeAdvice()
