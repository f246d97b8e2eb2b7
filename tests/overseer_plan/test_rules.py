"""The rulebook: every shipped file loads, the presets match the spec's table, bad files report every problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from overseer_plan.errors import ConfigErrors
from overseer_plan.rules import Condition, default_rules_dir, load_rulebook

SHIPPED = sorted(default_rules_dir().glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_file_loads_on_its_own(tmp_path: Path, path: Path) -> None:
    # Each file must be valid by itself; loading it as an override layer re-validates it.
    (tmp_path / path.name).write_text(path.read_text())
    book = load_rulebook([tmp_path])
    assert all(r.source and r.why for r in book.rules.values())


def test_rule_ids_are_unique_and_every_rule_cites_the_spec() -> None:
    book = load_rulebook()
    assert len(book.rules) >= 50
    for rule in book.rules.values():
        assert rule.source.strip(), rule.id
        assert len(rule.why) > 10, rule.id


# One row per line of the spec's presets (Key Features, Performance Comparison, Monitoring).
SPEC_TABLE = [
    ("batch_size", 16, 4),
    ("gradient_accumulation_steps", 4, 16),
    ("max_sequence_length", 2048, 1024),
    ("max_ram_percent", 85.0, 70.0),
    ("max_gpu_percent", 90.0, 75.0),
    ("gradient_checkpointing", False, True),
    ("num_workers", 4, 1),
    ("pin_memory", True, False),
    ("learning_rate", 1e-4, 5e-5),
    ("save_steps", 500, 200),
    ("eval_steps", 100, 50),
    ("memory_check_interval", 30.0, 15.0),
    ("logging_steps", 50, 25),
]


@pytest.mark.parametrize("field,standard,efficient", SPEC_TABLE, ids=[r[0] for r in SPEC_TABLE])
def test_presets_match_the_spec(field: str, standard: object, efficient: object) -> None:
    book = load_rulebook()
    assert book.preset("standard")[field][0] == standard
    assert book.preset("resource-efficient")[field][0] == efficient


def test_both_presets_keep_the_effective_batch_at_64() -> None:
    book = load_rulebook()
    for mode in ("standard", "resource-efficient"):
        p = book.preset(mode)
        assert p["batch_size"][0] * p["gradient_accumulation_steps"][0] == 64


def test_resource_efficient_forces_fp16_mixed_precision() -> None:
    p = load_rulebook().preset("resource-efficient")
    assert p["mixed_precision"][0] is True and p["mixed_precision_dtype"][0] == "fp16"


def test_ladders_follow_the_spec_order() -> None:
    book = load_rulebook()
    oom = book.ladder("oom")
    assert [r.step for r in oom] == sorted(r.step for r in oom)
    assert oom[0].change.halve == "max_sequence_length"
    assert oom[1].change.halve == "batch_size" and oom[1].change.keep_effective_batch
    assert [r.change.action for r in book.ladder("overwhelmed")][0] == "close_other_apps"
    assert book.ladder("slow")[-1].change.at_least == {"learning_rate": 7e-5}  # "increase ... slightly", never lower


def test_retry_ladder_puts_semantics_preserving_rungs_first() -> None:
    rungs = load_rulebook().retry_ladder()
    flags = [r.semantics_preserving for r in rungs]
    assert flags == sorted(flags, reverse=True), "a rung that changes what is learned comes before one that does not"
    assert rungs[0].change.halve == "batch_size"
    assert rungs[-1].change.halve == "max_sequence_length"


def test_conditions_evaluate_structured_data() -> None:
    c = Condition.model_validate({"all": [{"fact": "ram.effective_bytes", "lt": "16GB"}, {"not": {"fact": "gpu.present", "eq": True}}]})
    assert c.holds({"ram.effective_bytes": 8 * 10**9, "gpu.present": False})
    assert not c.holds({"ram.effective_bytes": 32 * 10**9, "gpu.present": False})
    # An unknown fact never satisfies a comparison.
    assert not Condition.model_validate({"fact": "ram.effective_bytes", "lt": "16GB"}).holds({})
    assert Condition.model_validate({"fact": "gpu.present", "present": False}).holds({"gpu.present": None})
    assert c.facts() == {"ram.effective_bytes", "gpu.present"}


def test_user_rules_override_shipped_rules_by_id(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text(
        "rules:\n"
        "  - id: preset.resource-efficient.batch_size\n"
        "    kind: preset\n    mode: resource-efficient\n"
        "    source: my team's policy\n    why: our laptops manage only 2\n"
        "    set: {batch_size: 2}\n"
    )
    book = load_rulebook([tmp_path])
    assert book.preset("resource-efficient")["batch_size"][0] == 2
    assert book.origin["preset.resource-efficient.batch_size"].endswith("mine.yaml")


def test_broken_rule_files_report_every_problem_at_once(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "rules:\n"
        "  - {id: x1, kind: mode, mode: turbo, source: s, why: w, when: {fact: ram.total_bytes, lt: 1}}\n"
        "  - {id: x2, kind: preset, mode: standard, source: s, why: w, set: {batch_size: 2}, colour: red}\n"
        "  - {id: x3, kind: preset, mode: standard, source: s, why: w, set: {no_such_setting: 2}}\n"
        "  - {id: x4, kind: practice, source: s, why: w, advice: a, when: {fact: no.such.fact, eq: 1}}\n"
        "  - {id: x5, kind: practice, source: s, why: w, advice: a, when: {fact: mode, lt: 1, gt: 2}}\n"
    )
    (tmp_path / "b.yaml").write_text(
        "rules:\n"
        "  - {id: y1, kind: practice, source: s, why: w, advice: a, when: {fact: mode, eq: x}}\n"
        "  - {id: y1, kind: practice, source: s, why: w, advice: a, when: {fact: mode, eq: y}}\n"
    )
    (tmp_path / "c.yaml").write_text("rules: [unclosed\n")
    with pytest.raises(ConfigErrors) as info:
        load_rulebook([tmp_path])
    text = " | ".join(info.value.problems)
    for needle in ("x1", "turbo", "colour", "no_such_setting", "no.such.fact", "x5", "duplicate rule id 'y1'", "c.yaml"):
        assert needle in text, needle
    assert len(info.value.problems) >= 7
    assert "\n" not in str(info.value)


def test_missing_rules_directory_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigErrors, match="not a directory"):
        load_rulebook([tmp_path / "nope"])
