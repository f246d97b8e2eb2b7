#!/usr/bin/env bash
# What makes the CPU heap grow: log every malloc/free of one real protocol run, replay the log through
# glibc whole, tensors only, and without small blocks that outlive a tensor event; then the traced dry
# run of the same row with the tracer's own small allocations interleaved (BENCHMARKS.md §2).
#   bash bench/malloc_replay/run.sh [FAMILY BATCH SEQ on|off fp32|bf16 [eager|sdpa]]   (default: gpt2-4x256 8 512 on fp32)
# Needs gcc and glibc >= 2.33 (mallinfo2). Linux only. Writes to a temporary directory.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
py="${PYTHON:-$here/../../.venv/bin/python}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
gcc -O2 -shared -fPIC -o "$work/mlog.so" "$here/mlog.c" -ldl -lpthread
gcc -O2 -o "$work/replay" "$here/replay.c"
args=("${@:-gpt2-4x256 8 512 on fp32}")
# shellcheck disable=SC2086
MLOG_FILE="$work/log.bin" LD_PRELOAD="$work/mlog.so" "$py" "$here/drive.py" ${args[*]} 2>/dev/null
echo "whole log:      $("$work/replay" "$work/log.bin"); $("$py" "$here/inuse_peak.py" "$work/log.bin")"
for mode in tensors-only no-lived-small; do
  "$py" "$here/filter.py" "$work/log.bin" "$work/$mode.bin" "$mode"
  printf '%-15s %s\n' "$mode:" "$("$work/replay" "$work/$mode.bin")"
done
# The same row's traced dry run (fake tensors), its own small allocations interleaved.
# shellcheck disable=SC2086
MLOG_FILE="$work/trace.bin" LD_PRELOAD="$work/mlog.so" "$py" "$here/trace_drive.py" ${args[*]} 2>/dev/null
echo "traced run:     $("$work/replay" "$work/trace.bin"); $("$py" "$here/inuse_peak.py" "$work/trace.bin")"
# Both logs again, without the short-lived blocks the tracer makes ten times as many of (transients.py).
"$py" "$here/transients.py" "$work/log.bin" "$work/trace.bin"
