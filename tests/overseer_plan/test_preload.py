"""Libraries imported before the baseline, and what the estimate does about them (overseer_plan/preload.py)."""

from __future__ import annotations

import json

import pytest

from overseer_plan.calibration import DEFAULTS, load_calibration
from overseer_plan.estimate import EstimateConfig, LoraSettings, estimate
from overseer_plan.preload import ImportProfile, Preload, measure_profile, preloaded

MiB = 2**20


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OVERSEER_CACHE_DIR", str(tmp_path))


def _write(tmp_path, imports: ImportProfile | None, **cpu):
    import torch

    data = DEFAULTS.model_dump(mode="json")
    data["torch_version"] = torch.__version__
    data["cpu"].update(cpu)
    if imports is None:
        del data["imports"]
    else:
        data["imports"] = imports.model_dump(mode="json")
    (tmp_path / "calibration.json").write_text(json.dumps(data))


@pytest.mark.parametrize("cfg,mods", [
    (EstimateConfig(), []),
    (EstimateConfig(optimizer="sgd"), []),
    (EstimateConfig(optimizer="adafactor"), ["transformers.optimization"]),
    (EstimateConfig(optimizer="adamw8bit"), ["bitsandbytes"]),
    (EstimateConfig(lora=LoraSettings(rank=4), optimizer="adamw8bit"), ["peft", "bitsandbytes"]),
])
def test_which_libraries_a_run_imports_first(cfg, mods):
    assert preloaded(cfg) == mods


def test_overlap_is_what_the_library_already_imported_and_own_the_rest():
    prof = ImportProfile(build_import_bytes=100 * MiB,
                         libraries={"peft": Preload(rss_bytes=150 * MiB, build_import_bytes=4 * MiB)})
    assert prof.overlap("peft") == 96 * MiB
    assert prof.own("peft") == 54 * MiB
    assert prof.overlap("bitsandbytes") == prof.own("bitsandbytes") == 0  # not measured: no change


def test_lora_and_8bit_estimates_take_the_preload_from_growth_and_add_it_to_the_baseline(tmp_path):
    empty = ImportProfile(build_import_bytes=100 * MiB)
    measured = ImportProfile(build_import_bytes=100 * MiB, libraries={
        "peft": Preload(rss_bytes=150 * MiB, build_import_bytes=4 * MiB),
        "bitsandbytes": Preload(rss_bytes=120 * MiB, build_import_bytes=30 * MiB)})
    cfgs = {"full": EstimateConfig(), "lora": EstimateConfig(lora=LoraSettings(rank=4)),
            "8bit": EstimateConfig(optimizer="adamw8bit")}
    _write(tmp_path, empty)
    before = {k: estimate("overseer-tiny", c, method="analytic") for k, c in cfgs.items()}
    _write(tmp_path, measured)
    after = {k: estimate("overseer-tiny", c, method="analytic") for k, c in cfgs.items()}
    assert after["full"].peak_bytes == before["full"].peak_bytes
    assert after["full"].host_peak_bytes == before["full"].host_peak_bytes
    for key, lib, overlap, rss in (("lora", "peft", 96, 150), ("8bit", "bitsandbytes", 70, 120)):
        assert after[key].peak_bytes == before[key].peak_bytes - overlap * MiB
        assert after[key].host_peak_bytes == before[key].host_peak_bytes - overlap * MiB + rss * MiB
        assert any(f"{lib} imported before the baseline" in n for n in after[key].notes)


def test_a_file_from_before_the_profile_drops_the_lora_offset_fitted_without_it(tmp_path):
    # Such files stored -100.6 MiB for a frozen base: most of it was the peft import, which the
    # shipped profile now counts, so keeping it would count it twice.
    _write(tmp_path, None, frozen_base_bytes=-105_493_490)
    cal, _ = load_calibration()
    assert cal.imports == DEFAULTS.imports
    assert cal.cpu.frozen_base_bytes == DEFAULTS.cpu.frozen_base_bytes > -50 * MiB


def test_a_file_with_the_profile_keeps_its_own_offset(tmp_path):
    _write(tmp_path, DEFAULTS.imports, frozen_base_bytes=-20 * MiB)
    assert load_calibration()[0].cpu.frozen_base_bytes == -20 * MiB


def test_measured_modelling_stack_is_mostly_paid_by_importing_it_first():
    # Real processes: a one-layer model built on the meta device imports transformers' modelling
    # stack; importing transformers.modeling_utils first leaves the build little to import.
    prof = measure_profile(["transformers.modeling_utils"], repeats=1)
    assert prof.build_import_bytes > 20 * MiB
    lib = prof.libraries["transformers.modeling_utils"]
    assert lib.rss_bytes > 20 * MiB
    assert prof.overlap("transformers.modeling_utils") > prof.build_import_bytes / 2


def test_a_library_that_fails_to_import_gets_no_entry():
    prof = measure_profile(["overseer_no_such_module"], repeats=1)
    assert prof.libraries == {} and prof.build_import_bytes > 0
