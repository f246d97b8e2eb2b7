"""Troubleshooting ladders with numbers: what each rung of the spec's ladder changes, and whether it helps here.

The spec lists rungs to try by hand ("reduce max_sequence_length, reduce batch_size, ...,
disable mixed precision"). `walk_ladder` applies them in order to a concrete config and
estimates each one's effect on peak memory and on speed. A rung that does not help on this
hardware is shown with its numbers and not carried forward (turning mixed precision off, for
instance, usually raises memory).

`apply_change` is the one place a rung's `change` is interpreted; the trainer's OOM policy
uses it too.
"""

from __future__ import annotations

from typing import Any, Literal

from overseer_plan._model import StrictModel
from overseer_plan.config import TrainingConfig
from overseer_plan.hardware import Hardware
from overseer_plan.rules import LadderRule, Rulebook
from overseer_plan.units import fmt_bytes

# Shortest sequence a rung may halve down to: below this a causal LM sees too little context to
# learn much, and per-step overheads dominate.
MIN_SEQUENCE_LENGTH = 64


def apply_change(cfg: TrainingConfig, rule: LadderRule, num_processes: int = 1, *,
                 in_flight: bool = False) -> TrainingConfig | None:
    """The config after one rung, or None when the rung changes nothing (or cannot apply).

    `halve` steps a field down to the next smaller divisor-compatible value; with
    `keep_effective_batch`, accumulation is recomputed so that micro-batch x accumulation
    x processes stays exactly the same (never an approximate x0.9 shrink). With `in_flight`
    (a running job stepping down), halving the sequence cuts each already-packed block in two,
    so accumulation doubles and the optimizer step keeps its tokens.
    """
    ch = rule.change
    if ch.action:
        return None
    updates = _halved(cfg, ch.halve, in_flight) if ch.halve else {}
    if updates is None:
        return None
    updates.update(ch.set)
    updates.update({k: v for k, v in ch.at_least.items() if getattr(cfg, k) < v})
    if ch.at_least and not any(k in updates for k in ch.at_least):
        return None
    if ch.keep_effective_batch and not _keep_effective_batch(cfg, updates):
        return None
    if all(getattr(cfg, k) == v for k, v in updates.items()):
        return None
    return cfg.with_changes(**updates)


def _halved(cfg: TrainingConfig, field: str, in_flight: bool) -> dict[str, Any] | None:
    per_process = cfg.batch_size * cfg.gradient_accumulation_steps
    if field in ("batch_size", "gradient_accumulation_steps"):
        current = getattr(cfg, field)
        # The largest divisor of the per-process batch at most half the current value.
        smaller = [d for d in range(current // 2, 0, -1) if per_process % d == 0]
        return {field: smaller[0]} if smaller else None
    value = getattr(cfg, field) // 2
    if field == "max_sequence_length":
        if cfg.max_sequence_length % 2 or value < MIN_SEQUENCE_LENGTH:
            return None
        if in_flight:
            return {field: value, "gradient_accumulation_steps": cfg.gradient_accumulation_steps * 2}
    return {field: value} if value >= 1 else None


def _keep_effective_batch(cfg: TrainingConfig, updates: dict[str, Any]) -> bool:
    """Complete `updates` so micro-batch x accumulation is unchanged; False when impossible."""
    per_process = cfg.batch_size * cfg.gradient_accumulation_steps
    if "gradient_accumulation_steps" in updates:
        acc = updates["gradient_accumulation_steps"]
        if per_process % acc:
            return False
        updates["batch_size"] = per_process // acc
    elif "batch_size" in updates:
        updates["gradient_accumulation_steps"] = per_process // updates["batch_size"]
    return True


class Rung(StrictModel):
    """One rung of a ladder, evaluated on this machine."""

    step: int
    """Step number in the spec's list."""
    rule: str
    """Rule id."""
    source: str
    """The spec section."""
    change: str
    """The concrete change, e.g. 'batch_size 4 -> 2, gradient_accumulation_steps 16 -> 32'."""
    peak_before_bytes: int | None = None
    """Estimated peak before this rung."""
    peak_after_bytes: int | None = None
    """Estimated peak after it."""
    speed_ratio: float | None = None
    """Estimated throughput after / before (1.0 = unchanged)."""
    verdict: Literal["helps", "no effect", "does not help", "advice"]
    """Whether it helps on this hardware for this symptom."""
    detail: str
    """One line with the numbers behind the verdict."""


class LadderReport(StrictModel):
    """One troubleshooting ladder walked on this machine."""

    symptom: str
    """oom, slow or overwhelmed."""
    device: str
    """The device the numbers are for."""
    budget_bytes: int
    """Memory budget on that device."""
    start: dict[str, Any]
    """The settings the walk starts from."""
    rungs: list[Rung]
    """Each rung with its effect."""
    final: dict[str, Any]
    """The settings after every helpful rung."""


_SHOWN = ("batch_size", "gradient_accumulation_steps", "max_sequence_length", "gradient_checkpointing",
          "mixed_precision", "learning_rate", "use_gpu")


def _summary(cfg: TrainingConfig) -> dict[str, Any]:
    return {k: getattr(cfg, k) for k in _SHOWN}


def _diff(a: TrainingConfig, b: TrainingConfig) -> str:
    parts = [f"{k} {getattr(a, k)} -> {getattr(b, k)}" for k in _SHOWN if getattr(a, k) != getattr(b, k)]
    return ", ".join(parts) or "no change"


class _Evaluator:
    """Estimates peak and speed of configs on one machine (cached per config)."""

    def __init__(self, hw: Hardware, model: str, device: str, num_processes: int):
        self.hw, self.model, self.device, self.n = hw, model, device, num_processes
        self._cache: dict[str, Any] = {}

    def device_for(self, cfg: TrainingConfig) -> str:
        return self.device if cfg.use_gpu else "cpu"

    def _estimate(self, cfg: TrainingConfig) -> Any:
        from overseer_plan.plan import estimate_for

        key = cfg.model_dump_json() + self.device_for(cfg)
        if key not in self._cache:
            self._cache[key] = estimate_for(self.model, cfg, self.device_for(cfg), num_processes=self.n)
        return self._cache[key]

    def peak(self, cfg: TrainingConfig) -> int:
        return int(self._estimate(cfg).long_run_peak_bytes)  # what the plan budgets for

    def speed(self, cfg: TrainingConfig) -> float:
        from overseer_plan.plan import Candidate, candidate_speed

        c = Candidate(device=self.device_for(cfg), batch_size=cfg.batch_size,
                      gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                      gradient_checkpointing=cfg.gradient_checkpointing, precision=cfg.precision(),
                      max_sequence_length=cfg.max_sequence_length)
        return candidate_speed(self.model, cfg, c, self.hw.cpu.has_native_bf16(), self._estimate(cfg), self.n)

    def budget(self, cfg: TrainingConfig) -> int:
        from overseer_plan.plan import budgets

        return budgets(self.hw, cfg, self.device_for(cfg))[0]


def walk_ladder(symptom: Literal["oom", "slow", "overwhelmed"], cfg: TrainingConfig, hw: Hardware, *,
                model: str, device: str, rulebook: Rulebook, num_processes: int = 1) -> LadderReport:
    """Apply the symptom's ladder to `cfg` rung by rung, keeping only the rungs that help."""
    cfg = _cap_sequence(cfg, model)
    ev = _Evaluator(hw, model, device, num_processes)
    current = cfg
    rungs = []
    for rule in rulebook.ladder(symptom):
        if rule.change.action:
            rungs.append(_action(rule, current, hw, ev, rulebook))
            continue
        after = apply_change(current, rule, num_processes)
        rung, keep = _judge(symptom, rule, current, after, ev)
        rungs.append(rung)
        if keep:
            current = after
    return LadderReport(symptom=symptom, device=device, budget_bytes=ev.budget(cfg), start=_summary(cfg),
                        rungs=rungs, final=_summary(current))


def _cap_sequence(cfg: TrainingConfig, model: str) -> TrainingConfig:
    """As training will: never a sequence longer than the model's maximum."""
    from overseer_plan.plan import max_positions

    limit = max_positions(model)
    return cfg.with_changes(max_sequence_length=limit) if limit and cfg.max_sequence_length > limit else cfg


def _judge(symptom: str, rule: LadderRule, before: TrainingConfig, after: TrainingConfig | None,
           ev: _Evaluator) -> tuple[Rung, bool]:
    base = {"step": rule.step, "rule": rule.id, "source": rule.source}
    if after is None:
        return Rung(**base, change="nothing to change", verdict="no effect",
                    detail="already in place at these settings, or not applicable"), False
    p0, p1 = ev.peak(before), ev.peak(after)
    speed = ev.speed(after) / ev.speed(before)
    budget = ev.budget(after)
    numbers = (f"peak {fmt_bytes(p0)} -> {fmt_bytes(p1)} ({(p1 - p0) / p0:+.0%}), "
               f"speed x{speed:.2f}, budget {fmt_bytes(budget)}")
    if symptom == "slow":
        helps = speed > 1.001 and p1 <= budget
        if "learning_rate" in rule.change.set or "learning_rate" in rule.change.at_least:
            helps = p1 <= budget  # no throughput change; fewer steps to the same loss is the hope
    else:
        helps = p1 < p0 * 0.995
    verdict = "helps" if helps else ("no effect" if abs(p1 - p0) <= p0 * 0.005 and abs(speed - 1) < 0.005 else "does not help")
    if verdict == "does not help" and symptom != "slow":
        numbers += "; not recommended here"
    return Rung(**base, change=_diff(before, after), peak_before_bytes=p0, peak_after_bytes=p1,
                speed_ratio=round(speed, 3), verdict=verdict, detail=numbers), helps


def _action(rule: LadderRule, cfg: TrainingConfig, hw: Hardware, ev: _Evaluator, book: Rulebook) -> Rung:
    base = {"step": rule.step, "rule": rule.id, "source": rule.source}
    action = rule.change.action
    if action == "close_other_apps":
        top = ", ".join(f"{p.name or p.pid} ({fmt_bytes(p.memory_bytes)})" for p in hw.ram.top_processes[:5])
        return Rung(**base, change="close other applications", verdict="advice",
                    detail=f"other processes hold {fmt_bytes(hw.ram.used_by_others_bytes)} of RAM"
                           + (f"; largest: {top}" if top else ""))
    if action == "standard_mode":
        std = TrainingConfig(resource_efficient_mode=False, **{k: getattr(cfg, k) for k in cfg.explicit_fields()
                                                                if k != "resource_efficient_mode"})
        std.apply_preset(book)
        std = _cap_sequence(std, ev.model)
        if not hw.gpus:  # the preset's use_gpu means nothing on a machine without one; do not show it as a change
            std = std.with_changes(use_gpu=cfg.use_gpu)
        p1, budget = ev.peak(std), ev.budget(std)
        speed = ev.speed(std) / ev.speed(cfg)
        fits = p1 <= budget
        return Rung(**base, change=_diff(cfg, std), peak_before_bytes=ev.peak(cfg), peak_after_bytes=p1,
                    speed_ratio=round(speed, 3), verdict="helps" if fits and speed > 1 else "does not help",
                    detail=f"standard preset needs {fmt_bytes(p1)} of a {fmt_bytes(budget)} budget"
                           f" ({'fits' if fits else 'does not fit'}), speed x{speed:.2f}")
    if action == "smaller_model":
        return Rung(**base, change="use a smaller model variant", verdict="advice",
                    detail=_smaller_models(ev, cfg))
    return Rung(**base, change="train on a subset of the data first", verdict="advice",
                detail=f"e.g. --max-steps 100: {100 * cfg.effective_batch_size() * cfg.max_sequence_length:,} tokens, "
                       f"enough to find problems before a long run")


def _smaller_models(ev: _Evaluator, cfg: TrainingConfig) -> str:
    """Catalogue models smaller than the current one, with their estimated peak at these settings."""
    from overseer_plan.errors import OverseerError
    from overseer_plan.estimate import estimate
    from overseer_plan.models import list_catalogue

    def size(name: str) -> int:
        return estimate(name).model_info.num_params

    try:
        mine = size(ev.model)
    except OverseerError as e:  # a model we cannot size: still give the generic advice
        return f"parameters, gradients and optimizer states scale with model size ({e})"
    options = sorted(((size(e.name), e.name) for e in list_catalogue() if e.name != ev.model), reverse=True)
    smaller = [(n, name) for n, name in options if n < mine][:3]
    if not smaller:
        return f"{ev.model} ({mine / 1e6:.1f}M parameters) is already the smallest known model"
    shown = []
    for n, name in smaller:
        sub = _Evaluator(ev.hw, name, ev.device, ev.n)
        limit = estimate(name).model_info.max_positions or cfg.max_sequence_length
        peak = sub.peak(cfg.with_changes(max_sequence_length=min(cfg.max_sequence_length, limit)))
        shown.append(f"{name} ({n / 1e6:.1f}M params, peak {fmt_bytes(peak)})")
    return f"{ev.model} has {mine / 1e6:.1f}M parameters; smaller: " + ", ".join(shown)
