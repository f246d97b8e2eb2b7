"""What a training process has imported before its memory baseline, and what that moves.

Why. The first model a process builds imports transformers' modelling stack
(`transformers.modeling_utils`, and through it torch._dynamo, sympy, torch.distributed,
accelerate): about 100 MiB of RSS, paid during the first step by a process that had imported only
torch and transformers. The CPU protocol's growth includes it, so the calibrated constants carry
it. A process that imported peft, bitsandbytes or transformers.optimization before its baseline
has paid most of it already. Measured on the dev box (Qwen2 4 x 320, 4 x 384, AdamW, 3 steps):
ru_maxrss grew 526-541 MiB over a torch + transformers baseline and 417-456 MiB over one taken
after `import peft`, while the process's RSS at the end was the same. That is what made LoRA and
8-bit AdamW estimates 10-25% high on small models, and what the LoRA offset fitted earlier
(`CpuFactors.frozen_base_bytes`, -100.6 MiB) had been measuring without knowing it.

How. `measure_profile` builds a one-layer model on the meta device in fresh processes, after
importing torch and transformers alone and after each library, and reads RSS before and after.
The estimate then takes from its growth what the library already imported (`overlap`) and adds the
library's own share to the host baseline (`own`). Figures are per machine and version:
`overseer estimate --calibrate` measures them; `DEFAULT_PROFILE` holds the dev box's.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from typing import TYPE_CHECKING

from pydantic import Field

from overseer_plan._model import FiniteModel

if TYPE_CHECKING:
    from overseer_plan.estimate import EstimateConfig

MiB = 1024**2
_GiB = 1024**3


class Preload(FiniteModel):
    """One library imported before the baseline: what the import and the first model build add."""

    rss_bytes: int = Field(ge=0, le=8 * _GiB)
    """RSS the import adds to a process that has imported torch and transformers."""
    build_import_bytes: int = Field(ge=0, le=8 * _GiB)
    """RSS the first model build still adds after it (the modelling stack it did not import)."""


class ImportProfile(FiniteModel):
    """The modelling stack's import cost on this machine, alone and after each library."""

    build_import_bytes: int = Field(ge=0, le=8 * _GiB)
    """RSS the first model build adds by importing, with only torch and transformers imported."""
    libraries: dict[str, Preload] = {}
    """Per library (module name), the same build after importing it first."""
    provenance: str = ""
    """How these numbers were obtained."""

    def overlap(self, module: str) -> int:
        """Bytes of the modelling stack `module` imports itself: the growth a process that
        imported it before its baseline no longer shows."""
        lib = self.libraries.get(module)
        return max(self.build_import_bytes - lib.build_import_bytes, 0) if lib else 0

    def own(self, module: str) -> int:
        """Bytes `module` adds to the process beyond the modelling stack (the host baseline grows by them)."""
        lib = self.libraries.get(module)
        return max(lib.rss_bytes - self.overlap(module), 0) if lib else 0


# The dev box's figures. transformers.optimization imports transformers.trainer_utils, which imports
# peft where peft is installed (`_entry` then uses peft's figures).
DEFAULT_PROFILE = ImportProfile(
    build_import_bytes=105_746_432,
    libraries={
        "peft": Preload(rss_bytes=157_048_832, build_import_bytes=4_100_096),
        "bitsandbytes": Preload(rss_bytes=121_851_904, build_import_bytes=30_363_648),
        # Measured with peft uninstalled (105_701_376 base that run): alone, it imports almost nothing.
        "transformers.optimization": Preload(rss_bytes=1_048_576, build_import_bytes=105_123_840),
    },
    provenance=("measured by `python -m overseer_plan.preload` (3 processes per reading, the smallest) on the "
                "dev box, 2026-11-25: torch 2.13.0+cpu, transformers 5.24.0, peft 0.21.2, bitsandbytes 0.50.2; "
                "transformers.optimization with peft uninstalled"),
)


def preloaded(cfg: EstimateConfig) -> list[str]:
    """Libraries a run of `cfg` imports before its baseline, as a script that uses them does at its top
    (and as the CPU protocol, overseer_plan/_measure.py, does): peft for LoRA, bitsandbytes for 8-bit
    AdamW, transformers.optimization for the trainer's Adafactor."""
    mods = []
    if cfg.lora is not None:
        mods.append("peft")
    if cfg.optimizer == "adamw8bit":
        mods.append("bitsandbytes")
    if cfg.optimizer == "adafactor":
        mods.append("transformers.optimization")
    return mods


def _entry(module: str) -> str:
    """The profile entry that stands for `module` here: transformers.optimization pulls in peft when
    peft is installed (through transformers.trainer_utils), and then costs what peft does."""
    if module == "transformers.optimization" and importlib.util.find_spec("peft") is not None:
        return "peft"
    return module


def adjustment(cfg: EstimateConfig, profile: ImportProfile) -> tuple[int, int, list[str]]:
    """(growth change, baseline change, libraries) for a CPU run of `cfg`.

    The libraries share the modelling stack, so the growth drops by the largest overlap and the
    baseline grows by the largest import (their own shares overlap too; the difference is a few MiB).
    """
    mods = preloaded(cfg)
    if not mods:
        return 0, 0, []
    entries = [_entry(m) for m in mods]
    overlap = max(profile.overlap(e) for e in entries)
    rss = max(profile.libraries[e].rss_bytes if e in profile.libraries else 0 for e in entries)
    return -overlap, rss, mods


# Run in a fresh process: import torch and transformers, then the modules named in argv, then build
# a one-layer Llama on the meta device (no weights allocated): RSS after each stage. Module names come
# in argv, never in the code string.
_PROBE = """
import importlib, json, sys
import psutil
proc = psutil.Process()
import torch, transformers
r0 = proc.memory_info().rss
for name in sys.argv[1:]:
    importlib.import_module(name)
r1 = proc.memory_info().rss
config = transformers.LlamaConfig(num_hidden_layers=1, hidden_size=64, intermediate_size=128,
                                  num_attention_heads=4, num_key_value_heads=4, vocab_size=256)
with torch.device("meta"):
    transformers.AutoModelForCausalLM.from_config(config)
r2 = proc.memory_info().rss
print(json.dumps({"rss": r1 - r0, "build": r2 - r1}))
"""


def _probe(modules: list[str], timeout_s: float = 300.0) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, *modules], capture_output=True, text=True,
                         timeout=timeout_s, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return int(got["rss"]), int(got["build"])


def measure_profile(modules: list[str] | None = None, *, repeats: int = 2) -> ImportProfile:
    """Measure the profile on this machine: fresh processes, the smallest of `repeats` readings each
    (a reading can only be inflated, by a collector pass or a lazily touched page).

    `modules` defaults to the libraries `preloaded` can name that are installed here.
    """
    if modules is None:
        modules = [m for m in ("peft", "bitsandbytes", "transformers.optimization")
                   if importlib.util.find_spec(m.split(".")[0]) is not None]
    base = min(_probe([])[1] for _ in range(repeats))
    libs = {}
    for m in modules:
        try:
            runs = [_probe([m]) for _ in range(repeats)]
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, ValueError, IndexError):
            continue  # installed but fails to import here: no run can preload it, so no entry
        libs[m] = Preload(rss_bytes=min(r for r, _ in runs), build_import_bytes=min(b for _, b in runs))
    return ImportProfile(build_import_bytes=base, libraries=libs,
                         provenance="measured by `overseer estimate --calibrate` (overseer_plan.preload)")


def main() -> None:
    """`python -m overseer_plan.preload`: print this machine's profile as JSON (for the shipped defaults)."""
    print(json.dumps(measure_profile(repeats=3).model_dump(mode="json"), indent=2))


if __name__ == "__main__":
    main()
