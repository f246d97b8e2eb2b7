"""Container limits from cgroups (v1 and v2), read through a root path so tests can use fixture trees.

`psutil` and `os.cpu_count()` report the host; a container sees the host's RAM and cores but may
use only its cgroup's share. The limits live in the cgroup this process belongs to *and every
ancestor* (a systemd slice, a pod, a container), so we resolve `/proc/self/cgroup` against the
cgroup mounts in `/proc/self/mountinfo`, walk up to the mount point, and take the minimum.
Files: Documentation/admin-guide/cgroup-v2.rst and cgroup-v1/memory.rst in the Linux tree.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

# v1 writes LONG_MAX rounded down to a page (9223372036854771712) for "no limit"; anything this
# large is no limit in practice (no machine has 4 EiB), which also covers other page sizes.
_UNLIMITED_FROM = 2**62
_CONTAINER_MARKERS = ("docker", "kubepods", "containerd", "libpod", "lxc")


class _Sys:
    """Reads files below `root` ('/' in production, a fixture tree in tests); missing files read as None."""

    def __init__(self, root: str | Path = "/"):
        self.root = Path(root)

    def path(self, p: str) -> Path:
        return self.root / p.lstrip("/")

    def read(self, p: str) -> str | None:
        try:
            return self.path(p).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None

    def exists(self, p: str) -> bool:
        return self.path(p).exists()

    def listdir(self, p: str) -> list[str]:
        try:
            return sorted(os.listdir(self.path(p)))
        except OSError:
            return []

    def realpath(self, p: str) -> str | None:
        """Resolve symlinks (relative targets stay inside the fixture tree); None if it does not exist."""
        full = self.path(p)
        if not full.exists():
            return None
        real = Path(os.path.realpath(full))
        try:
            return "/" + str(real.relative_to(self.root.resolve()))
        except ValueError:
            return str(real)


@dataclass(frozen=True)
class _Membership:
    version: int
    """1 or 2."""
    controllers: frozenset[str]
    """v1 controllers of the hierarchy ('memory', 'cpu', ...); empty for v2."""
    dirs: tuple[str, ...]
    """The process's cgroup directory first, then each ancestor up to the mount point."""


@dataclass(frozen=True)
class CgroupMemory:
    limit_bytes: int
    """The tightest memory limit among the process's cgroups and their ancestors."""
    source: str
    """'cgroup v2 memory.max' or 'cgroup v1 memory.limit_in_bytes'."""
    usage_bytes: int | None
    """Memory charged to the binding cgroup (page cache included)."""
    inactive_file_bytes: int
    """Reclaimable page cache in the binding cgroup (0 when unknown)."""


def _mounts(fs: _Sys) -> list[tuple[int, frozenset[str], str, str]]:
    """(version, controllers, root inside the hierarchy, mount point) for each cgroup mount."""
    out = []
    for line in (fs.read("/proc/self/mountinfo") or "").splitlines():
        head, sep, tail = line.partition(" - ")
        fields, tail_fields = head.split(), tail.split()
        if not sep or len(fields) < 5 or len(tail_fields) < 3:
            continue
        fstype, root, point = tail_fields[0], fields[3], fields[4]
        if fstype == "cgroup2":
            out.append((2, frozenset(), root, point))
        elif fstype == "cgroup":
            opts = set(tail_fields[2].split(",")) | set(fields[5].split(","))
            out.append((1, frozenset(opts), root, point))
    return out


def _default_mount(fs: _Sys, version: int, controllers: frozenset[str]) -> tuple[str, str] | None:
    """Conventional mount points, for when /proc/self/mountinfo is unreadable."""
    if version == 2:
        for point in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
            if fs.exists(f"{point}/cgroup.controllers"):
                return "/", point
        return None
    for name in (",".join(sorted(controllers)), *sorted(controllers)):
        if name and fs.exists(f"/sys/fs/cgroup/{name}"):
            return "/", f"/sys/fs/cgroup/{name}"
    return None


def _ancestors(fs: _Sys, mount_root: str, point: str, path: str) -> tuple[str, ...]:
    """The process's directory under `point`, then each parent up to `point` itself."""
    rel = PurePosixPath(path)
    root = PurePosixPath(mount_root)
    # Without a cgroup namespace the mount's root is a sub-path of /proc/self/cgroup's path.
    if rel.is_relative_to(root):
        rel = PurePosixPath("/") / rel.relative_to(root)
    leaf = PurePosixPath(point) / rel.relative_to("/")
    if not fs.exists(str(leaf)):
        leaf = PurePosixPath(point)  # e.g. a private cgroup namespace: our cgroup is the mount root
    dirs = [str(leaf)]
    while PurePosixPath(dirs[-1]) != PurePosixPath(point) and dirs[-1] != "/":
        dirs.append(str(PurePosixPath(dirs[-1]).parent))
    return tuple(dirs)


def memberships(fs: _Sys) -> list[_Membership]:
    """The process's cgroups, one per hierarchy, each with its ancestor chain."""
    mounts = _mounts(fs)
    out = []
    for line in (fs.read("/proc/self/cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, ctrl, path = parts
        version = 2 if hid == "0" and not ctrl else 1
        controllers = frozenset(c for c in ctrl.split(",") if c)
        match = [(r, p) for v, c, r, p in mounts if v == version and (version == 2 or controllers & c)]
        found = match[0] if match else _default_mount(fs, version, controllers)
        if found:
            out.append(_Membership(version, controllers, _ancestors(fs, found[0], found[1], path)))
    return out


def cgroup_paths(fs: _Sys) -> list[str]:
    """The raw paths in /proc/self/cgroup (for container detection)."""
    return [ln.split(":", 2)[2] for ln in (fs.read("/proc/self/cgroup") or "").splitlines() if ln.count(":") >= 2]


def in_container(fs: _Sys, env: Mapping[str, str]) -> bool:
    """Docker, podman or kubernetes markers, or a cgroup path naming a container runtime."""
    if fs.exists("/.dockerenv") or fs.exists("/run/.containerenv") or "KUBERNETES_SERVICE_HOST" in env:
        return True
    return any(m in p for p in cgroup_paths(fs) for m in _CONTAINER_MARKERS)


def _read_int(fs: _Sys, path: str) -> int | None:
    text = (fs.read(path) or "").strip()
    try:
        return int(text)
    except ValueError:
        return None


def _stat_value(fs: _Sys, path: str, keys: tuple[str, ...]) -> int:
    """First of `keys` found in a memory.stat file, 0 when absent."""
    values = dict(ln.split(None, 1) for ln in (fs.read(path) or "").splitlines() if " " in ln)
    for key in keys:
        if key in values and values[key].strip().isdigit():
            return int(values[key])
    return 0


def memory_limit(fs: _Sys) -> CgroupMemory | None:
    """The tightest cgroup memory limit over all hierarchies and ancestors; None when unlimited."""
    best: CgroupMemory | None = None
    for m in memberships(fs):
        if m.version == 1 and "memory" not in m.controllers:
            continue
        for d in m.dirs:
            if m.version == 2:
                limit, usage = _read_int(fs, f"{d}/memory.max"), _read_int(fs, f"{d}/memory.current")
                inactive = _stat_value(fs, f"{d}/memory.stat", ("inactive_file",))
            else:
                limit, usage = _read_int(fs, f"{d}/memory.limit_in_bytes"), _read_int(fs, f"{d}/memory.usage_in_bytes")
                # total_* counts the whole subtree (hierarchical); plain inactive_file only this level.
                inactive = _stat_value(fs, f"{d}/memory.stat", ("total_inactive_file", "inactive_file"))
            if limit is None or limit >= _UNLIMITED_FROM:  # v2 writes the word 'max', which reads as None
                continue
            if best is None or limit < best.limit_bytes:
                source = "cgroup v2 memory.max" if m.version == 2 else "cgroup v1 memory.limit_in_bytes"
                best = CgroupMemory(limit, source, usage, inactive)
    return best


def _quota_at(fs: _Sys, version: int, d: str) -> int | None:
    """ceil(quota / period) for one directory, None when unlimited or unreadable."""
    if version == 2:
        parts = (fs.read(f"{d}/cpu.max") or "").split()
        if len(parts) != 2 or parts[0] == "max":
            return None
        quota, period = parts
    else:
        quota, period = (fs.read(f"{d}/cpu.cfs_quota_us") or ""), (fs.read(f"{d}/cpu.cfs_period_us") or "")
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    if q <= 0 or p <= 0:  # v1 writes -1 for no quota
        return None
    # Round up like `nproc` and loky: a 1.5-core quota still runs two threads usefully.
    return max(1, math.ceil(q / p))


def cpu_quota(fs: _Sys) -> tuple[int, str] | None:
    """(cores, source) of the tightest CPU quota among the process's cgroups; None when unlimited."""
    best: tuple[int, str] | None = None
    for m in memberships(fs):
        if m.version == 1 and "cpu" not in m.controllers:
            continue
        for d in m.dirs:
            cores = _quota_at(fs, m.version, d)
            if cores is not None and (best is None or cores < best[0]):
                best = (cores, "cgroup cpu.max" if m.version == 2 else "cgroup cpu.cfs_quota_us")
    return best
