"""`overseer doctor`: check a machine against the spec and say what to fix, with the numbers.

One check per requirement rule (`rules/requirements.yaml`, check id = rule id), the machine
checks in `overseer_plan._doctor_checks`, the recommended mode (`rules/modes.yaml`) and the
best practices that apply (`rules/practices.yaml`). A check that raises becomes a failed check
("check crashed ... please report"); the doctor itself never raises.

    from overseer_plan import probe, load_rulebook, run_doctor
    result = run_doctor(probe(), load_rulebook(), output_dir=".")
    result.exit_code()  # 0: only ok/warn/skip; 1: something failed
"""

from __future__ import annotations

import math
import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from pydantic import Field

from overseer_plan import _doctor_checks as mc
from overseer_plan._doctor_checks import DoctorContext, Finding, Status
from overseer_plan._model import StrictModel as _Model
from overseer_plan.facts import FACTS
from overseer_plan.hardware import Hardware
from overseer_plan.modes import ModeAdvice
from overseer_plan.rules import Condition, PracticeRule, RequirementRule, Rulebook
from overseer_plan.units import GB, fmt_bytes

REPORT_HINT = "overseer doctor --report > overseer-env.md"


class Check(_Model):
    id: str
    """Stable id: the rule id for rule-based checks, e.g. 'requirement.ram.minimum'."""
    title: str
    """Short name of what is checked."""
    status: Status
    """ok, warn, fail, skip (not applicable or not measurable here) or info (advice: the mode, a best practice)."""
    message: str
    """One line: what was found, with the numbers."""
    fix: str | None = None
    """What to do (an exact command or flag) when the status is not ok."""
    details: dict[str, Any] = Field(default_factory=dict)
    """Facts behind the finding and their sources (shown with --verbose)."""


class Summary(_Model):
    ok: int = 0
    warn: int = 0
    fail: int = 0
    skip: int = 0
    info: int = 0
    """Advice lines: the recommended mode and the best practices that apply."""
    mode: str | None = None
    """The recommended mode; None when the planner's fit decides."""
    exit_code: int = 0
    """0 with only ok/warn/skip/info, 1 when a check failed."""


class DoctorResult(_Model):
    checks: list[Check]
    """Every check, in order: requirements, machine checks, mode, practices."""
    summary: Summary
    """Counts per status, the mode and the exit code."""
    mode: ModeAdvice | None = None
    """The rulebook's mode advice; None if it could not be computed (the 'mode' check says why)."""

    def exit_code(self) -> int:
        """0 when nothing failed (warnings allowed), 1 when any check failed."""
        return 1 if any(c.status == "fail" for c in self.checks) else 0


@dataclass(frozen=True)
class CheckSpec:
    """A registered check: its id, title and function (None from the function: not applicable, omitted)."""

    id: str
    title: str
    fn: Callable[[DoctorContext], Finding | None]


# ---- rule-based checks -------------------------------------------------------------------

_OPS = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "=", "ne": "!="}
# Fact prefix -> key of `Hardware.unavailable` holding why that part could not be read.
_PARTS = {"gpu": "gpus", "disk": "disks", "temps": "temperatures"}
# Why a rule's `applies_when` can be false, by (fact, value); otherwise the condition is shown.
_NOT_APPLICABLE = {
    ("gpu.present", False): "no GPU: CPU training is a supported mode (overseer train --cpu-only), so this does not apply",
    ("gpu.present", None): "could not tell whether there is a GPU, so this was not checked",
}


def _label(fact: str) -> str:
    """'RAM training can use' from the fact's description in overseer_plan.facts."""
    text = re.sub(r"\s*\(.*?\)", "", FACTS.get(fact, fact))
    return text[:1].upper() + text[1:]


def _value(fact: str, v: Any) -> str:
    if v is None:
        return "unknown"
    if fact.endswith("_bytes"):
        # Rounded down: 9.996 GB against a 10 GB minimum must not read "10.0 GB ... failed".
        return f"{fmt_bytes(v)} ({math.floor(v / GB * 100 + 1e-6) / 100:.2f} GB)"
    if fact.endswith("_fraction"):
        return f"{v:.0%}"
    return str(v)


def _threshold(fact: str, v: Any) -> str:
    # The spec writes sizes in decimal GB ("8GB minimum"); show them the way it does.
    return f"{v / GB:.3g} GB" if fact.endswith("_bytes") else str(v)


def _fact_source(hw: Hardware, fact: str) -> str | None:
    """Where a fact's value comes from, for the message and --verbose."""
    if fact == "ram.effective_bytes":
        binds = hw.ram.limit_bytes is not None and hw.ram.limit_bytes < hw.ram.total_bytes
        return f"{hw.ram.limit_source or 'a limit'} below host {fmt_bytes(hw.ram.total_bytes)}" if binds else "host RAM"
    if fact == "gpu.memory_bytes" and hw.gpus:
        g = min(hw.gpus, key=lambda g: g.memory_total_bytes)
        return f"GPU{g.index} {g.name}"
    if fact == "cpu.usable_cores":
        return f"{hw.cpu.usable_cores_source}; {hw.cpu.logical_cores} logical"
    if fact.startswith("disk.output") and hw.disks:
        out = [d for d in hw.disks if d.role == "output"] or hw.disks
        return out[0].path
    return None


def _describe(cond: Condition, facts: dict[str, Any], hw: Hardware) -> str:
    """'RAM training can use: 5.59 GiB (6.0 GB) [host RAM], needs >= 8 GB' for a leaf; joined for all/any/not."""
    if cond.all is not None or cond.any is not None:
        joiner = " and " if cond.all is not None else " or "
        return joiner.join(_describe(c, facts, hw) for c in (cond.all or cond.any or []))
    if cond.not_ is not None:
        return f"not ({_describe(cond.not_, facts, hw)})"
    fact = cond.fact or ""
    op = next((o for o in _OPS if getattr(cond, o) is not None), None)
    want = f"{_OPS[op]} {_threshold(fact, getattr(cond, op))}" if op else f"in {cond.in_}" if cond.in_ else "known"
    value = _value(fact, facts.get(fact))
    source = _fact_source(hw, fact)
    where = f" [{source}]" if source else ""
    return f"{_label(fact)}: {value}{where}, needs {want}"


def _requirement_finding(ctx: DoctorContext, rule: RequirementRule) -> Finding:
    """One requirement rule against the machine: pass, fail at the rule's severity, or skip."""
    facts = ctx.facts
    read = sorted(rule.check.facts() | (rule.applies_when.facts() if rule.applies_when else set()))
    details = {"rule": rule.id, "spec": rule.source, "why": rule.why, "origin": ctx.rulebook.origin.get(rule.id)}
    details |= {f: facts.get(f) for f in read}
    details |= {f"{f} source": src for f in read if (src := _fact_source(ctx.hw, f))}
    if rule.applies_when is not None and not rule.applies_when.holds(facts):
        return Finding("skip", _not_applicable(ctx, rule.applies_when), details=details)
    unknown = [f for f in sorted(rule.check.facts()) if facts.get(f) is None]
    if unknown:
        part = _PARTS.get(unknown[0].split(".")[0], unknown[0])
        reason = ctx.unavailable(part, "not in the profile")
        return Finding("skip", f"could not measure {_label(unknown[0]).lower()}: {reason}", details=details)
    message = f"{_describe(rule.check, facts, ctx.hw)} (spec: {rule.source})"
    if rule.check.holds(facts):
        return Finding("ok", message, details=details)
    status: Status = {"fail": "fail", "warn": "warn", "note": "ok"}[rule.severity]
    return Finding(status, message, rule.fix, details)


def _not_applicable(ctx: DoctorContext, cond: Condition) -> str:
    for fact in sorted(cond.facts()):
        reason = _NOT_APPLICABLE.get((fact, ctx.facts.get(fact)))
        if reason:
            return reason
    return f"does not apply: {_describe(cond, ctx.facts, ctx.hw)}"


def _mode_finding(ctx: DoctorContext) -> Finding:
    advice = ctx.mode
    command = {"resource-efficient": "overseer train --resource-efficient", "standard": "overseer train"}.get(
        advice.mode or "", "overseer plan")
    details = {rid: ctx.rulebook[rid].source for rid, _ in advice.reasons}
    return Finding("info", f"{advice.describe()} -> {command}", details=details)


def _practice_finding(ctx: DoctorContext, rule: PracticeRule) -> Finding | None:
    """A best practice as an info line when its condition holds; its warnings live in the machine checks."""
    if not rule.when.holds(ctx.facts):
        return None
    return Finding("info", rule.advice, details={"rule": rule.id, "spec": rule.source, "why": rule.why})


def _title(source: str) -> str:
    """'RAM: 8GB minimum' from 'System Requirements > RAM: 8GB minimum'; 'Start Small' from 'Best Practices 1: Start Small'."""
    last = source.split(">")[-1].strip()
    return last.split(": ", 1)[1] if last.startswith("Best Practices") and ": " in last else last


def _rule_specs(rulebook: Rulebook) -> tuple[list[CheckSpec], list[CheckSpec]]:
    """(one check per requirement rule, one per practice rule); check id = rule id."""
    requirements = [CheckSpec(r.id, _title(r.source), lambda ctx, r=r: _requirement_finding(ctx, r))
                    for r in rulebook.of_kind("requirement")]
    practices = [CheckSpec(r.id, _title(r.source), lambda ctx, r=r: _practice_finding(ctx, r))
                 for r in rulebook.of_kind("practice")]
    return requirements, practices


# ---- registry and runner -----------------------------------------------------------------

CHECKS: list[CheckSpec] = [
    CheckSpec("memory.limit", "Memory limit", mc.check_memory_limit),
    CheckSpec("memory.others", "Memory used by other processes", mc.check_other_memory),
    CheckSpec("storage.type", "Storage type", mc.check_storage_type),
    CheckSpec("temperature", "Temperatures", mc.check_temperatures),
    CheckSpec("gpu.shared", "Other processes on the GPU", mc.check_gpu_sharing),
    CheckSpec("gpu.torch", "torch can use the GPU", mc.check_torch_gpu),
    CheckSpec("software.pynvml", "NVML bindings", mc.check_pynvml),
    CheckSpec("mode", "Recommended mode", _mode_finding),
]
"""The machine checks, in display order (requirements come before, practices after)."""


def _run_one(spec: CheckSpec, ctx: DoctorContext) -> Check | None:
    try:
        found = spec.fn(ctx)
    except Exception as e:  # a broken check must not take the doctor down: report it instead
        return Check(id=spec.id, title=spec.title, status="fail",
                     message=f"check crashed: {type(e).__name__}: {e} — please report",
                     fix=f"Report it with the environment: {REPORT_HINT}",
                     details={"traceback": traceback.format_exc(limit=6)})
    if found is None:
        return None
    return Check(id=spec.id, title=spec.title, status=found.status, message=found.message,
                 fix=found.fix if found.status != "ok" else None, details=found.details)


def run_doctor(hw: Hardware, rulebook: Rulebook, *, output_dir: str | Path = ".") -> DoctorResult:
    """Run every check on `hw` and collect the results; never raises for a failing check.

    Args:
        hw: the machine (`probe()` or `Hardware.load(...)`).
        rulebook: the loaded rulebook.
        output_dir: where runs write checkpoints (an earlier run there turns off 'start small').
    """
    ctx = DoctorContext(hw, rulebook, Path(output_dir))
    requirements, practices = _rule_specs(rulebook)
    checks = [c for c in (_run_one(s, ctx) for s in requirements + CHECKS + practices) if c is not None]
    try:
        advice: ModeAdvice | None = ctx.mode
    except Exception:  # already reported by the 'mode' check
        advice = None
    counts = {s: sum(c.status == s for c in checks) for s in get_args(Status)}
    result = DoctorResult(checks=checks, summary=Summary(**counts, mode=advice.mode if advice else None), mode=advice)
    result.summary.exit_code = result.exit_code()
    return result
