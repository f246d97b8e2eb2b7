"""The rulebook: the user's spec as data, loaded and validated here, interpreted elsewhere.

Every rule has an `id`, a `source` (the section of the spec it encodes) and a
one-line `why`. Conditions are structured data evaluated against a flat dict of
facts (see `overseer_plan.facts`), never strings that get evaluated. Matching
never depends on the order of entries: ladders carry explicit step numbers.

Rule kinds:
    preset       a setting a mode's preset fills in          (`mode`, `set`)
    requirement  a check on the machine                      (`check`, `severity`, `fix`)
    mode         when a mode is the right one                (`when`, `mode`)
    ladder       one rung of a troubleshooting ladder        (`symptom`, `step`, `change`)
    practice     a best practice shown when it applies       (`when`, `advice`)
"""

from __future__ import annotations

import functools
import math
import operator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from overseer_plan.errors import ConfigErrors, UserInputError
from overseer_plan.units import parse_size

Mode = Literal["standard", "resource-efficient"]
Symptom = Literal["oom", "slow", "overwhelmed"]
_OPS = ("lt", "le", "gt", "ge", "eq", "ne", "in", "present")
_COMPARE = {
    "lt": operator.lt, "le": operator.le, "gt": operator.gt, "ge": operator.ge,
    "eq": operator.eq, "ne": operator.ne, "in": lambda value, ref: value in ref,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)


class Condition(_Strict):
    """A structured condition. Exactly one of: a leaf test on a fact, `all`, `any`, `not`."""

    fact: str | None = None
    """Dotted fact name, e.g. 'ram.effective_bytes' (see overseer_plan.facts)."""
    lt: Any = None
    """True when fact < value."""
    le: Any = None
    """True when fact <= value."""
    gt: Any = None
    """True when fact > value."""
    ge: Any = None
    """True when fact >= value."""
    eq: Any = None
    """True when fact == value."""
    ne: Any = None
    """True when fact != value."""
    in_: list[Any] | None = Field(default=None, alias="in")
    """True when fact is one of these values."""
    present: bool | None = None
    """True when the fact is known (not None) and this is true, or unknown and this is false."""
    all: list[Condition] | None = None
    """True when every sub-condition is true."""
    any: list[Condition] | None = None
    """True when at least one sub-condition is true."""
    not_: Condition | None = Field(default=None, alias="not")
    """True when the sub-condition is false."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("lt", "le", "gt", "ge", mode="before")
    @classmethod
    def _sizes(cls, v: Any) -> Any:
        # Sizes may be written as '16GB' (decimal, as the spec writes them) or '8GiB'.
        if isinstance(v, str):
            return parse_size(v, what="condition value")
        return v

    def model_post_init(self, _ctx: Any) -> None:
        groups = [self.all is not None, self.any is not None, self.not_ is not None, self.fact is not None]
        if sum(groups) != 1:
            raise ValueError("a condition needs exactly one of: fact, all, any, not")
        if self.fact is not None:
            ops = [op for op in _OPS if self._op_value(op) is not None]
            if len(ops) != 1:
                raise ValueError(f"condition on {self.fact!r} needs exactly one of {', '.join(_OPS)}")
            ref = self._op_value(ops[0])
            # Ordering a fact against a list or a word raises TypeError only when the doctor runs.
            if ops[0] in ("lt", "le", "gt", "ge") and not _is_number(ref):
                raise ValueError(f"condition on {self.fact!r}: {ops[0]} needs a number or a size such as '16GB' (got {ref!r})")

    def _op_value(self, op: str) -> Any:
        return self.in_ if op == "in" else getattr(self, op)

    def facts(self) -> set[str]:
        """All fact names this condition reads."""
        if self.fact is not None:
            return {self.fact}
        subs = self.all or self.any or ([self.not_] if self.not_ else [])
        return set().union(*(c.facts() for c in subs))

    def holds(self, facts: dict[str, Any]) -> bool:
        """Evaluate against `facts`. An unknown fact (None) makes a comparison false."""
        if self.all is not None:
            return all(c.holds(facts) for c in self.all)
        if self.any is not None:
            return any(c.holds(facts) for c in self.any)
        if self.not_ is not None:
            return not self.not_.holds(facts)
        value = facts.get(self.fact)  # type: ignore[arg-type]
        if self.present is not None:
            return (value is not None) == self.present
        if value is None:
            return False
        for op in _OPS:
            ref = self._op_value(op)
            if ref is not None:
                return _COMPARE[op](value, ref)
        raise AssertionError("validated condition without an operator")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class _Rule(_Strict):
    id: str
    """Unique id, e.g. 'preset.resource-efficient.batch_size'."""
    source: str
    """The section of the spec this rule encodes."""
    why: str
    """One line: why this rule exists."""


class PresetRule(_Rule):
    kind: Literal["preset"]
    mode: Mode
    """The mode whose preset this belongs to."""
    set: dict[str, Any]
    """TrainingConfig field -> value."""


class RequirementRule(_Rule):
    kind: Literal["requirement"]
    check: Condition
    """Passes when this holds."""
    severity: Literal["fail", "warn", "note"]
    """What a failed check means: a hard minimum, a recommendation, or just a note."""
    applies_when: Condition | None = None
    """Only checked when this holds (e.g. only with a GPU)."""
    fix: str
    """What to do when the check fails."""


class ModeRule(_Rule):
    kind: Literal["mode"]
    mode: Mode
    """The mode recommended when `when` holds."""
    when: Condition
    """Facts that make this mode the right one."""


class Change(_Strict):
    """What a ladder rung changes."""

    set: dict[str, Any] = Field(default_factory=dict)
    """Absolute new values for TrainingConfig fields."""
    at_least: dict[str, Any] = Field(default_factory=dict)
    """Raise these fields to at least the value (the rung does nothing where they are already higher)."""
    halve: str | None = None
    """A field halved along the divisors of the effective batch (repeatable rung)."""
    keep_effective_batch: bool = False
    """Recompute gradient accumulation so micro-batch x accumulation x processes is unchanged."""
    action: str | None = None
    """A non-config action the doctor explains with numbers: close_other_apps, standard_mode, smaller_model, data_subset."""


class LadderRule(_Rule):
    kind: Literal["ladder"]
    symptom: Symptom
    """Which troubleshooting ladder."""
    step: int
    """Position in the spec's list (1 = first)."""
    change: Change
    """What this rung changes."""
    semantics_preserving: bool = False
    """True when the rung does not change what is learned (same data, same effective batch)."""
    retry_order: int | None = None
    """Position in the automatic OOM retry-down (None: not used automatically)."""


class PracticeRule(_Rule):
    kind: Literal["practice"]
    when: Condition
    """When the advice applies."""
    advice: str
    """What to do."""


Rule = Annotated[PresetRule | RequirementRule | ModeRule | LadderRule | PracticeRule, Field(discriminator="kind")]
_RULE = TypeAdapter(Rule)


class Rulebook(BaseModel):
    """All rules, indexed by id."""

    rules: dict[str, Any]
    """id -> rule."""
    origin: dict[str, str] = Field(default_factory=dict)
    """id -> file it came from."""

    def of_kind(self, kind: str) -> list[Any]:
        return sorted((r for r in self.rules.values() if r.kind == kind), key=lambda r: r.id)

    def preset(self, mode: Mode) -> dict[str, tuple[Any, PresetRule]]:
        """field -> (value, rule) for a mode's preset."""
        out: dict[str, tuple[Any, PresetRule]] = {}
        for r in self.of_kind("preset"):
            if r.mode == mode:
                for k, v in r.set.items():
                    out[k] = (v, r)
        return out

    def ladder(self, symptom: Symptom) -> list[LadderRule]:
        return sorted((r for r in self.of_kind("ladder") if r.symptom == symptom), key=lambda r: (r.step, r.id))

    def retry_ladder(self) -> list[LadderRule]:
        """The OOM rungs used automatically, in retry order."""
        rungs = [r for r in self.of_kind("ladder") if r.retry_order is not None]
        return sorted(rungs, key=lambda r: (r.retry_order, r.id))

    def __getitem__(self, rule_id: str) -> Any:
        return self.rules[rule_id]


def default_rules_dir() -> Path:
    """The shipped rules directory (installed package `overseer_rules`, or ./rules in a checkout)."""
    try:
        import overseer_rules

        return Path(overseer_rules.RULES_DIR)
    except ImportError:
        return Path(__file__).resolve().parent.parent / "rules"


def _read_file(path: Path, problems: list[str]) -> list[tuple[str, Any]]:
    import yaml

    from overseer_plan._io import read_user_text

    try:
        doc = yaml.safe_load(read_user_text(path, what=path.name, hint="fix or remove it"))
    except UserInputError as e:
        problems.append(str(e))
        return []
    except yaml.YAMLError as e:
        problems.append(f"{path.name}: cannot read: {str(e).splitlines()[0]}")
        return []
    if not isinstance(doc, dict) or not isinstance(doc.get("rules"), list):
        problems.append(f"{path.name}: expected a mapping with a 'rules' list")
        return []
    unknown = set(doc) - {"rules", "description"}
    if unknown:
        problems.append(f"{path.name}: unknown top-level key(s) {sorted(unknown)}")
    out = []
    for i, raw in enumerate(doc["rules"]):
        rid = raw.get("id", f"#{i + 1}") if isinstance(raw, dict) else f"#{i + 1}"
        try:
            out.append((rid, _RULE.validate_python(raw)))
        except ValidationError as e:
            for err in e.errors():
                problems.append(f"{path.name}: rule {rid}: {_describe(err)}")
    return out


def _describe(err: dict[str, Any]) -> str:
    """One pydantic error as 'key: message (got value)', without the union's kind tag in the path."""
    loc = [str(x) for x in err["loc"]]
    if loc and loc[0] in ("preset", "requirement", "mode", "ladder", "practice"):
        loc = loc[1:]
    got = err.get("input")
    shown = f" (got {got!r})" if isinstance(got, (str, int, float, bool)) and err["type"] != "extra_forbidden" else ""
    return f"{'.'.join(loc) or '(rule)'}: {err['msg'].removeprefix('Value error, ')}{shown}"


def load_rulebook(extra_dirs: tuple[str | Path, ...] | list[str | Path] = ()) -> Rulebook:
    """Load the shipped rules, then each extra directory (its rules override shipped ones by id).

    Raises:
        ConfigErrors: every problem in every file at once (file, rule id, what is wrong).
    """
    return _load(tuple(str(d) for d in extra_dirs))


@functools.lru_cache(maxsize=8)
def _load(extra_dirs: tuple[str, ...]) -> Rulebook:
    problems: list[str] = []
    rules: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for layer, d in enumerate((str(default_rules_dir()),) + extra_dirs):
        path = Path(d)
        if not path.is_dir():
            problems.append(f"--rules {d}: not a directory")
            continue
        seen_here: dict[str, str] = {}
        for f in sorted(path.glob("*.yaml")) + sorted(path.glob("*.yml")):
            for rid, rule in _read_file(f, problems):
                if rid in seen_here:
                    problems.append(f"{f.name}: duplicate rule id {rid!r} (also in {seen_here[rid]})")
                    continue
                seen_here[rid] = f.name
                rules[rid] = rule  # a later layer overrides an earlier one by id
                origin[rid] = str(f) if layer else f.name
    problems += _check_references(rules, origin)
    if problems:
        raise ConfigErrors(problems, what="the rulebook")
    return Rulebook(rules=rules, origin=origin)


def _check_references(rules: dict[str, Any], origin: dict[str, str]) -> list[str]:
    """Every fact a condition reads exists, and every setting a rule sets is a TrainingConfig field."""
    from overseer_plan.config import TrainingConfig
    from overseer_plan.facts import FACTS

    fields = set(TrainingConfig.model_fields)
    problems = []
    for rid, r in sorted(rules.items()):
        conds = [getattr(r, a) for a in ("when", "check", "applies_when") if getattr(r, a, None) is not None]
        for fact in sorted(set().union(*(c.facts() for c in conds)) - set(FACTS)) if conds else []:
            problems.append(f"{Path(origin[rid]).name}: rule {rid}: unknown fact {fact!r} (known: see overseer_plan/facts.py)")
        where = f"{Path(origin[rid]).name}: rule {rid}"
        values = [(f"set.{k}", k, v) for k, v in r.set.items()] if r.kind == "preset" else []
        if r.kind == "ladder":
            values += [(f"change.{part}.{k}", k, v) for part in ("set", "at_least")
                       for k, v in getattr(r.change, part).items()]
            if r.change.halve:
                values.append(("change.halve", r.change.halve, None))
        for key, name, value in values:
            if name not in fields:
                problems.append(f"{where}: unknown setting {name!r}")
            elif key != "change.halve" and (why := TrainingConfig.setting_problem(name, value)):
                # Checked here, not when a plan applies the rule: there it is a pydantic traceback.
                problems.append(f"{where}: {key}: {why} (got {value!r})")
    return problems
