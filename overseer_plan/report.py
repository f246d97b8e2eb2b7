"""`overseer doctor --report`: a Markdown environment report to paste into a bug report.

The spec's Support section asks users to "report issues with system specifications included".
The layout follows `accelerate env` / `transformers env` (a bullet list under a paste line, with
`<fill in>` slots); like `torch.utils.collect_env`, every field is rendered on its own and a field
that cannot be read says "Could not collect" instead of sinking the report. Before it is returned
the text is scrubbed: GPU UUIDs, the home directory (-> '~'), the user name (-> '<user>') and the
host name (-> '<host>') never appear in it.
"""

from __future__ import annotations

import getpass
import os
import platform
import re
import socket
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from overseer_plan.doctor import DoctorResult
from overseer_plan.hardware import Hardware
from overseer_plan.units import fmt_bytes

NOT_COLLECTED = "Could not collect"
ENV_VARS = ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "PYTORCH_CUDA_ALLOC_CONF", "HIP_VISIBLE_DEVICES",
            "ROCR_VISIBLE_DEVICES", "OMP_NUM_THREADS", "PYTORCH_MPS_HIGH_WATERMARK_RATIO", "PYTHON_CPU_COUNT",
            "HF_HOME", "HF_DATASETS_CACHE", "HF_HUB_OFFLINE", "HF_ENDPOINT", "TRANSFORMERS_CACHE", "TOKENIZERS_PARALLELISM")
_UUID = re.compile(r"\b(?:GPU|MIG)-[0-9A-Fa-f-]{8,}(?:/\d+/\d+)?")
_HOME_DIRS = re.compile(r"(/home/|/Users/|[A-Za-z]:\\Users\\)[^/\\\s`'\"]+")
_MARK = {"ok": "ok", "warn": "warning", "fail": "FAILED", "skip": "skipped", "info": "advice"}


def _field(label: str, read: Callable[[], Any]) -> str:
    """One bullet; a read that fails or gives None renders as 'Could not collect'."""
    try:
        value = read()
    except Exception:  # any field may be unreadable; the report must still be produced
        value = None
    if value is None or value == "":
        value = NOT_COLLECTED
    return f"- {label}: {value}"


def _yes(flag: bool | None) -> str | None:
    return None if flag is None else ("yes" if flag else "no")


def _versions(hw: Hardware) -> list[str]:
    from overseer_plan import __version__

    sw = hw.software
    return [
        _field("Overseer", lambda: f"{__version__} ({Path(sys.executable)})"),
        _field("Python", lambda: sw.python or platform.python_version()),
        _field("PyTorch", lambda: sw.torch and f"{sw.torch} (CUDA {sw.cuda or 'none'}, HIP {sw.hip or 'none'})"),
        _field("transformers", lambda: sw.transformers or "not installed"),
        _field("accelerate", lambda: sw.accelerate or "not installed"),
        _field("nvidia-ml-py", lambda: sw.nvidia_ml_py or "not installed"),
        _field("pynvml (deprecated distribution)", lambda: sw.pynvml_distribution or "not installed"),
        _field("NVIDIA driver", lambda: sw.nvidia_driver or "none found"),
    ]


def _system(hw: Hardware) -> list[str]:
    sw, cpu = hw.software, hw.cpu
    return [
        _field("OS", lambda: sw.os or platform.platform()),
        _field("Container", lambda: _yes(sw.in_container)),
        _field("WSL", lambda: _yes(sw.wsl)),
        _field("Laptop", lambda: _yes(hw.machine.is_laptop) and f"{_yes(hw.machine.is_laptop)} "
               f"({hw.machine.laptop_evidence or 'no evidence recorded'})"),
        _field("CPU", lambda: f"{cpu.model or 'unknown model'} ({cpu.architecture or 'unknown arch'})"),
        _field("CPU cores", lambda: f"{cpu.usable_cores} usable (limited by {cpu.usable_cores_source}) of "
               f"{cpu.logical_cores} logical, {cpu.physical_cores or 'unknown'} physical"),
        _field("CPU flags", lambda: ", ".join(cpu.flags) or "none of note"),
        _field("Hugging Face Hub", _hub),
    ]


def _hub() -> str:
    from overseer_plan import hub

    return hub.describe()  # offline users' reports are about cache lookups: this says which path was taken


def _memory(hw: Hardware) -> list[str]:
    ram = hw.ram
    return [
        _field("RAM (host)", lambda: fmt_bytes(ram.total_bytes)),
        _field("RAM limit", lambda: f"{fmt_bytes(ram.limit_bytes)} ({ram.limit_source})" if ram.limit_bytes else "none"),
        _field("RAM usable (effective)", lambda: fmt_bytes(ram.effective_bytes)),
        _field("RAM available now", lambda: fmt_bytes(ram.available_bytes)),
        _field("RAM used by other processes", lambda: fmt_bytes(ram.used_by_others_bytes)),
        _field("Swap", lambda: None if ram.swap_total_bytes is None else fmt_bytes(ram.swap_total_bytes)),
    ]


def _gpus(hw: Hardware) -> list[str]:
    if hw.gpus is None:
        return [_field("GPUs", lambda: f"{NOT_COLLECTED} ({hw.unavailable.get('gpus', 'no reason recorded')})")]
    if not hw.gpus:
        return ["- GPUs: none"]
    # No UUIDs: name, memory, capability, backend only.
    return [_field(f"GPU{g.index}", lambda g=g: f"{g.name}, {fmt_bytes(g.memory_total_bytes)} total, "
                   f"{fmt_bytes(g.memory_free_bytes)} free, compute capability {g.compute_capability or 'n/a'}, "
                   f"{g.backend}{', MIG' if g.is_mig else ''}, {len(g.processes)} other process(es)")
            for g in hw.gpus]


def _disks_and_temps(hw: Hardware) -> list[str]:
    kind = {True: "HDD", False: "SSD", None: "unknown"}
    lines = [_field(f"Disk ({d.role})", lambda d=d: f"{d.path}: {fmt_bytes(d.free_bytes)} free of "
                    f"{fmt_bytes(d.total_bytes)}, {kind[d.rotational]}, {d.fstype or 'unknown fs'}")
             for d in hw.disks or []] or [_field("Disks", lambda: None)]
    temps = [_field(f"Temperature {s.chip} {s.label}".rstrip(), lambda s=s: f"{s.current_c:.0f}°C (high "
                    f"{s.high_c if s.high_c is not None else 'n/a'}, critical {s.critical_c if s.critical_c is not None else 'n/a'})")
             for s in hw.temperatures or []]
    temps += [_field(f"Temperature GPU{g.index}", lambda g=g: f"{g.temperature_c:.0f}°C "
                     f"(slowdown {g.temperature_slowdown_c if g.temperature_slowdown_c is not None else 'n/a'})")
              for g in hw.gpus or [] if g.temperature_c is not None]
    return lines + (temps or [f"- Temperatures: {NOT_COLLECTED} ({hw.unavailable.get('temperatures', 'no sensors')})"])


def _findings(result: DoctorResult) -> list[str]:
    lines = [f"- [{_MARK[c.status]}] {c.id}: {c.message}" + (f" Fix: {c.fix}" if c.fix else "") for c in result.checks]
    s = result.summary
    lines.append(f"- Summary: {s.ok} ok, {s.warn} warning(s), {s.fail} failed, {s.skip} skipped, {s.info} advice; "
                 f"mode: {s.mode or 'fit decides'}; exit code {s.exit_code}")
    return lines


def _environment() -> list[str]:
    return [f"- {name}: {os.environ[name] if name in os.environ else '(unset)'}" for name in ENV_VARS]


def _section(title: str, lines: Iterable[str]) -> str:
    return f"### {title}\n" + "\n".join(lines) + "\n"


def render_report(hw: Hardware, result: DoctorResult) -> str:
    """The Markdown report for `hw` and the doctor's `result`, with personal data redacted."""
    parts = [
        "<!-- Copy-and-paste the text below into your GitHub issue and FILL IN the last section. -->",
        "## Overseer environment report\n",
        _section("Versions", _versions(hw)),
        _section("System", _system(hw)),
        _section("Memory", _memory(hw)),
        _section("GPUs", _gpus(hw)),
        _section("Disks and temperatures", _disks_and_temps(hw)),
        _section("Not probed", [f"- {k}: {v}" for k, v in sorted(hw.unavailable.items())] or ["- nothing"]),
        _section("Set by hand", [f"- {o}" for o in hw.overrides] or ["- nothing"]),
        _section("Doctor findings", _findings(result)),
        _section("Environment variables", _environment()),
        _section("What happened", ["- Command run: <fill in>", "- What happened (error, last lines of the log): <fill in>",
                                   "- What you expected: <fill in>"]),
    ]
    return redact("\n".join(parts))


def _identity() -> tuple[list[str], list[str], list[str]]:
    """(home directories, user names, host names) of this process, each read defensively."""
    homes, users, hosts = [], [], []
    for read, into in ((lambda: str(Path.home()), homes), (lambda: os.path.expanduser("~"), homes),
                       (getpass.getuser, users), (lambda: Path.home().name, users),
                       (socket.gethostname, hosts), (platform.node, hosts)):
        try:
            value = read()
        except Exception:  # no passwd entry, no HOME: nothing to redact from that source
            continue
        if value and value not in into:
            into.append(value)
    hosts += [h.split(".")[0] for h in hosts if "." in h]
    return homes, users, hosts


def redact(text: str) -> str:
    """Replace GPU UUIDs, home directories, the user name and host names in `text`."""
    homes, users, hosts = _identity()
    text = _UUID.sub("<gpu-uuid>", text)
    for home in sorted((h.rstrip("/\\") for h in homes if len(h.rstrip("/\\")) > 1), key=len, reverse=True):
        text = text.replace(home, "~")
    text = _HOME_DIRS.sub(lambda m: m.group(1) + "<user>", text)
    for name, repl in [(u, "<user>") for u in users] + [(h, "<host>") for h in hosts]:
        if len(name) >= 2:
            text = re.sub(rf"(?<![\w.-]){re.escape(name)}(?![\w-])", repl, text)
    return text
