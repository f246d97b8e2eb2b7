"""TrainingConfig: presets fill what the user did not set; the spec's snippet works as written."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from overseer_plan.errors import ConfigErrors, UserInputError


def test_spec_configuration_snippet_runs_as_written() -> None:
    from overseer_plan import TrainingConfig

    # Verbatim from the spec's Configuration section.
    config = TrainingConfig()
    config.resource_efficient_mode = True
    config.batch_size = 2  # Even smaller batch size
    config.max_sequence_length = 512  # Even shorter sequences
    config.max_ram_percent = 60.0  # Even lower memory threshold

    assert (config.batch_size, config.max_sequence_length, config.max_ram_percent) == (2, 512, 60.0)
    # Everything else from the resource-efficient preset.
    assert config.gradient_accumulation_steps == 16
    assert config.learning_rate == 5e-5
    assert config.max_gpu_percent == 75.0
    assert config.gradient_checkpointing is True
    assert config.num_workers == 1 and config.pin_memory is False
    assert (config.save_steps, config.eval_steps, config.logging_steps) == (200, 50, 25)
    assert config.memory_check_interval == 15.0
    assert config.precision() == "fp16"


def test_default_is_standard_mode() -> None:
    from overseer_plan import TrainingConfig

    c = TrainingConfig()
    assert c.mode == "standard"
    assert (c.batch_size, c.gradient_accumulation_steps, c.max_sequence_length) == (16, 4, 2048)
    assert c.effective_batch_size() == 64 and c.effective_batch_size(num_processes=4) == 256


def test_switching_mode_back_restores_the_other_preset_but_keeps_user_values() -> None:
    from overseer_plan import TrainingConfig

    c = TrainingConfig(resource_efficient_mode=True, learning_rate=3e-4)
    c.resource_efficient_mode = False
    assert c.batch_size == 16 and c.learning_rate == 3e-4
    assert c.explicit_fields() == {"resource_efficient_mode", "learning_rate"}


def test_assignments_are_validated() -> None:
    from overseer_plan import TrainingConfig

    c = TrainingConfig()
    with pytest.raises(ValidationError):
        c.batch_size = 0
    with pytest.raises(ValidationError):
        c.mixed_precision_dtype = "fp8"


def test_yaml_round_trip(tmp_path: Path) -> None:
    from overseer_plan import TrainingConfig

    c = TrainingConfig(resource_efficient_mode=True, batch_size=2)
    c.save(tmp_path / "c.yaml")
    back = TrainingConfig.load(tmp_path / "c.yaml")
    assert back.model_dump() == c.model_dump()


def test_plan_file_config_section_is_accepted(tmp_path: Path) -> None:
    from overseer_plan import TrainingConfig

    (tmp_path / "plan.yaml").write_text("mode: standard\nconfig:\n  batch_size: 8\n  gradient_accumulation_steps: 8\n")
    assert TrainingConfig.load(tmp_path / "plan.yaml").effective_batch_size() == 64


def test_bad_files_name_every_bad_key(tmp_path: Path) -> None:
    from overseer_plan import TrainingConfig

    (tmp_path / "bad.yaml").write_text("batch_size: many\nlearning_rate: -1\ncolour: blue\n")
    with pytest.raises(ConfigErrors) as info:
        TrainingConfig.load(tmp_path / "bad.yaml")
    msg = str(info.value)
    assert "batch_size" in msg and "learning_rate" in msg and "colour: unknown setting" in msg
    assert msg.startswith("3 problems")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(UserInputError, match="expected a mapping"):
        TrainingConfig.load(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("a: [1,\n")
    with pytest.raises(UserInputError, match="not valid YAML"):
        TrainingConfig.load(tmp_path / "broken.yaml")
    with pytest.raises(UserInputError, match="cannot read"):
        TrainingConfig.load(tmp_path / "missing.yaml")
