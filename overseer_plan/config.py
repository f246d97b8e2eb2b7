"""`TrainingConfig`: every setting of a run, with the spec's field names.

The mode's preset (from the rulebook) fills every setting the user did not set
explicitly; settings the user sets win. So the spec's snippet works as written:

    config = TrainingConfig()
    config.resource_efficient_mode = True
    config.batch_size = 2
    config.max_sequence_length = 512
    config.max_ram_percent = 60.0

gives batch 2, sequence 512, a 60% RAM threshold, and every other value from the
resource-efficient preset (accumulation 16, learning rate 5e-5, ...).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter, ValidationError

from overseer_plan.errors import ConfigErrors, UserInputError

Precision = Literal["fp32", "fp16", "bf16"]
NonEmpty = Annotated[str, Field(min_length=1)]


class TrainingConfig(BaseModel):
    """All settings of a training run. Fields marked 'preset' default to the mode's preset."""

    # allow_inf_nan=False: no setting is infinite or NaN, and `memory_check_interval: .inf` would
    # pass `gt=0` and stop the monitor, `learning_rate: nan` fail with a misleading bound.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True,
                              allow_inf_nan=False)

    resource_efficient_mode: bool = False
    """Use the resource-efficient preset (smaller batches, checkpointing, lower thresholds)."""
    model: str | None = None
    """Model: catalogue name, HF hub id or local directory; None trains the embedded default."""
    # Empty paths are refused: '' would quietly mean the current directory.
    data: list[NonEmpty] = Field(default_factory=list)
    """Local training data: text/Markdown files or directories, JSONL with 'text', saved HF datasets."""
    data_sources: list[NonEmpty] = Field(default_factory=list)
    """Sources for --download-data: http(s) URLs (files or .tar.gz/.zip) or HF dataset ids."""
    output_dir: NonEmpty = "overseer-runs/run"
    """Run directory: checkpoints, metrics.jsonl, events.jsonl, summary.json."""

    # ---- the preset's settings (None until the preset fills them) ----
    batch_size: int = Field(default=None, ge=1)  # type: ignore[assignment]
    """Micro-batch size per process (preset: 16 standard, 4 resource-efficient)."""
    gradient_accumulation_steps: int = Field(default=None, ge=1)  # type: ignore[assignment]
    """Micro-batches per optimizer step (preset: 4 / 16, effective batch 64 either way)."""
    max_sequence_length: int = Field(default=None, ge=8)  # type: ignore[assignment]
    """Tokens per training sequence (preset: 2048 / 1024, capped at the model's maximum)."""
    learning_rate: float = Field(default=None, gt=0, le=1)  # type: ignore[assignment]
    """Peak learning rate (preset: 1e-4 / 5e-5)."""
    max_ram_percent: float = Field(default=None, gt=0, le=100)  # type: ignore[assignment]
    """RAM threshold in percent of usable RAM; crossing it steps down a rung (preset: 85 / 70)."""
    max_gpu_percent: float = Field(default=None, gt=0, le=100)  # type: ignore[assignment]
    """GPU memory threshold in percent (preset: 90 / 75)."""
    gradient_checkpointing: bool = None  # type: ignore[assignment]
    """Recompute activations in backward to save memory (preset: off / on)."""
    mixed_precision: bool = None  # type: ignore[assignment]
    """Autocast to 16-bit with fp32 master weights (preset: on; the fit picks what the hardware runs)."""
    mixed_precision_dtype: Literal["fp16", "bf16"] = None  # type: ignore[assignment]
    """16-bit type for mixed precision (preset: bf16 / fp16)."""
    num_workers: int = Field(default=None, ge=0)  # type: ignore[assignment]
    """DataLoader worker processes (preset: 4 / 1)."""
    pin_memory: bool = None  # type: ignore[assignment]
    """Page-locked host buffers for faster GPU copies (preset: on / off)."""
    save_steps: int = Field(default=None, ge=1)  # type: ignore[assignment]
    """Checkpoint every N optimizer steps (preset: 500 / 200)."""
    eval_steps: int = Field(default=None, ge=1)  # type: ignore[assignment]
    """Evaluate every N optimizer steps (preset: 100 / 50)."""
    logging_steps: int = Field(default=None, ge=1)  # type: ignore[assignment]
    """Log a metrics line every N optimizer steps (preset: 50 / 25)."""
    memory_check_interval: float = Field(default=None, gt=0)  # type: ignore[assignment]
    """Seconds between the monitor's memory samples (preset: 30 / 15)."""

    # ---- other settings ----
    use_gpu: bool = True
    """Train on a GPU when one is usable; False forces CPU-only training."""
    optimizer: Literal["adamw", "sgd", "adafactor", "adamw8bit"] = "adamw"
    """Optimizer (AdamW unless memory demands otherwise)."""
    attention: Literal["sdpa", "eager"] = "sdpa"
    """Attention implementation (sdpa does not keep the seq x seq probabilities)."""
    max_steps: int | None = Field(default=None, ge=1)
    """Stop after this many optimizer steps (wins over epochs)."""
    epochs: float | None = Field(default=None, gt=0)
    """Passes over the training data when max_steps is not set (default 1)."""
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1)
    """Share of the steps spent warming the learning rate up linearly."""
    weight_decay: float = Field(default=0.01, ge=0)
    """AdamW weight decay."""
    max_grad_norm: float = Field(default=1.0, gt=0)
    """Gradient clipping norm."""
    seed: int = Field(default=42, ge=0, le=2**32 - 1)
    """Seed for initialisation, data order and dropout, 0 to 2**32-1 (numpy rejects negative seeds, torch
    overflows past 64 bits; 32 bits is what every seeding API, np.random.seed included, accepts)."""
    save_total_limit: int = Field(default=3, ge=1)
    """Keep the last K checkpoints."""
    eval_fraction: float = Field(default=0.05, gt=0, lt=0.5)
    """Share of the data held out for evaluation."""
    eval_max_batches: int = Field(default=20, ge=1)
    """Cap on evaluation batches per evaluation, to bound its time."""
    allow_sequence_reduction: bool = False
    """Let the planner and the OOM ladder shorten sequences (changes what is learned)."""
    purpose: Literal["development", "production", "speed"] | None = None
    """What the run is for, the spec's "When to Use" intents: development picks resource-efficient; production
    or speed picks standard unless the machine needs resource-efficient. None: the machine and the fit decide."""
    scale_up: bool = False
    """Step back up a rung after stable steps with enough measured headroom (gradual scaling)."""
    replay_fraction: float = Field(default=0.2, ge=0, lt=1)
    """Continuous learning: share of each round's data replayed from earlier rounds."""
    watch_interval_s: float = Field(default=60.0, gt=0)
    """Continuous learning: seconds between checks of the data sources."""

    _explicit: set[str] = PrivateAttr(default_factory=set)

    # ---- preset handling ----
    def model_post_init(self, _ctx: Any) -> None:
        self._explicit = set(self.model_fields_set)
        self.apply_preset()

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name in type(self).model_fields:
            self._explicit.add(name)
            if name == "resource_efficient_mode":
                self.apply_preset()

    def apply_preset(self, rulebook: Any = None) -> None:
        """Fill every setting the user did not set explicitly from the current mode's preset."""
        from overseer_plan.rules import load_rulebook

        book = rulebook or load_rulebook()
        for name, (value, _rule) in book.preset(self.mode).items():
            if name not in type(self).model_fields:
                raise UserInputError(f"rule {_rule.id}: sets unknown setting {name!r}")
            if name not in self._explicit:
                BaseModel.__setattr__(self, name, value)  # validated, but not marked explicit
        missing = [n for n, f in type(self).model_fields.items() if getattr(self, n) is None and f.default is None
                   and n not in _OPTIONAL]
        if missing:
            raise UserInputError(f"the {self.mode} preset does not set {', '.join(missing)}; add them to the rulebook")

    @classmethod
    def setting_problem(cls, name: str, value: Any) -> str | None:
        """Why `value` is not valid for setting `name` alone, or None (for rule files, checked without a preset).

        A field's type and bounds are those declared above, so the rulebook cannot drift from them.
        """
        try:
            _setting_adapter(name).validate_python(value)
        except ValidationError as e:
            return e.errors()[0]["msg"]
        return None

    def explicit_fields(self) -> set[str]:
        """Names of the settings the user set (they win over presets and the planner)."""
        return set(self._explicit)

    def mark_explicit(self, names: set[str]) -> None:
        """Record settings as user-chosen (e.g. after loading a plan file)."""
        self._explicit |= set(names)

    def with_changes(self, **changes: Any) -> TrainingConfig:
        """A copy with `changes` applied, keeping which fields were explicit."""
        new = self.model_copy(update=changes)
        new._explicit = set(self._explicit)
        TrainingConfig.model_validate(new.model_dump())  # re-validate the updated values
        return new

    # ---- derived values ----
    @property
    def mode(self) -> Literal["standard", "resource-efficient"]:
        return "resource-efficient" if self.resource_efficient_mode else "standard"

    def effective_batch_size(self, num_processes: int = 1) -> int:
        """Sequences per optimizer step across all processes."""
        return self.batch_size * self.gradient_accumulation_steps * num_processes

    def precision(self) -> Precision:
        """The compute precision: fp32 without mixed precision, else its 16-bit type."""
        return self.mixed_precision_dtype if self.mixed_precision else "fp32"

    # ---- files ----
    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def save(self, path: str | Path) -> None:
        """Write the config as YAML, atomically."""
        from overseer_plan._io import atomic_write_text

        atomic_write_text(Path(path), self.to_yaml())

    @classmethod
    def load(cls, path: str | Path) -> TrainingConfig:
        """Read a YAML config or plan file (a plan file's `config:` section is used).

        Raises:
            ConfigErrors: every unknown key and bad value, each naming its key.
        """
        import yaml

        from overseer_plan._io import read_user_text

        p = Path(path)
        text = read_user_text(p, what=f"--config {p}", hint="pass a YAML config or a plan file from `overseer plan -o`")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise UserInputError(f"--config {p}: not valid YAML ({str(e).splitlines()[0]})") from None
        if isinstance(data, dict) and "config" in data:  # a plan file: its `config:` section is what trains
            data = data["config"]
            if not isinstance(data, dict):
                raise UserInputError(f"--config {p}: its 'config:' section must be a mapping of settings, e.g. 'batch_size: 4'")
        if not isinstance(data, dict):
            raise UserInputError(f"--config {p}: expected a mapping of settings, e.g. 'batch_size: 4'")
        return cls.from_dict(data, what=f"--config {p}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], what: str = "the config") -> TrainingConfig:
        """Validate a mapping of settings, reporting every problem at once."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            problems = []
            for err in e.errors():
                key = ".".join(str(x) for x in err["loc"]) or "(top level)"
                msg = "unknown setting" if err["type"] == "extra_forbidden" else err["msg"]
                problems.append(f"{key}: {msg}")
            raise ConfigErrors(problems, what=what) from None


@functools.cache
def _setting_adapter(name: str) -> TypeAdapter[Any]:
    field = TrainingConfig.model_fields[name]
    # The field's type with its bounds (ge=1, le=1, ...): field.metadata holds them apart from the default.
    bounded = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    return TypeAdapter(bounded, config=ConfigDict(allow_inf_nan=False))


# Settings that may legitimately stay None after the preset is applied.
_OPTIONAL = {"purpose", "model", "max_steps", "epochs"}
