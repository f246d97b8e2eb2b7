"""Text rendering of a Plan for the terminal (the CLI's edge; nothing below it prints)."""

from __future__ import annotations

from typing import Any

from overseer_plan.units import fmt_bytes

_BREAKDOWN_ORDER = ("parameters", "gradients", "optimizer_states", "activations", "temporaries", "overhead")


def render_plan(plan: Any, *, explain: bool = False) -> str:
    lines = [f"Mode: {plan.mode}  (device: {plan.device}, processes: {plan.num_processes})"]
    lines += [f"  because {r}" for r in plan.mode_reasons]
    lines.append("")
    width = max(len(d.setting) for d in plan.decisions)
    for d in plan.decisions:
        lines.append(f"  {d.setting:<{width}}  {_value(d.value):<10}  [{d.rule}] {d.why}")
    lines.append("")
    lines += _memory(plan)
    if explain:
        lines += ["", "Candidates (best first):"]
        for c in plan.candidates:
            mark = "✓" if c.rejected is None else " "
            lines.append(
                f" {mark} {c.device:<4} micro {c.batch_size:>3} x accum {c.gradient_accumulation_steps:>3}  "
                f"ckpt {'on ' if c.gradient_checkpointing else 'off'}  {c.precision:<4} {c.optimizer:<9} seq {c.max_sequence_length:<5} "
                f"peak {fmt_bytes(c.peak_bytes):>10}  score {c.score:.3f}  {c.rejected or 'chosen'}"
            )
    return "\n".join(lines)


def _memory(plan: Any) -> list[str]:
    if plan.estimate is None:
        return [f"Nothing fits the budget of {fmt_bytes(plan.budget_bytes)}. Try: overseer doctor oom"]
    est = plan.estimate
    out = [f"Memory on {plan.device} (estimated, {est.get('method', 'analytic')}):"]
    breakdown = est.get("breakdown", {})
    for key in _BREAKDOWN_ORDER:
        if key in breakdown:
            out.append(f"  {key.replace('_', ' '):<18} {fmt_bytes(breakdown[key]):>12}")
    out.append(f"  {'peak':<18} {fmt_bytes(est['peak_bytes']):>12}  (at {est.get('peak_phase', '?')})")
    if est.get("long_run_extra_bytes"):
        out.append(f"  {'long-run peak':<18} {fmt_bytes(plan.planned_peak_bytes()):>12}  "
                   "(heap fragmentation after the first steps)")
    out.append(f"  {'budget':<18} {fmt_bytes(plan.budget_bytes):>12}  headroom {fmt_bytes(plan.headroom_bytes())}")
    if plan.validation:
        out.append(f"  {plan.validation}")
    return out


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)
