#!/usr/bin/env bash
# Overseer's setup script (the spec's "Method 3"): create a virtual environment,
# install a torch build that suits this machine, install Overseer, check the machine.
# Safe to re-run: an existing environment and torch are kept.
#
#   bash setup.sh            # set up, then run `overseer doctor`
#   bash setup.sh --test     # also install the test extras (pytest, ruff)
#   OVERSEER_TORCH=cuda bash setup.sh   # force the CUDA build (default: auto)
#   OVERSEER_TORCH=cpu  bash setup.sh   # force the CPU build (no multi-GB CUDA wheels)
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=${OVERSEER_VENV:-.venv}
TORCH_CHOICE=${OVERSEER_TORCH:-auto}
EXTRAS=""
RUN_DOCTOR=1
for arg in "$@"; do
  case "$arg" in
    --test) EXTRAS="[test]" ;;
    --no-doctor) RUN_DOCTOR=0 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option '$arg' (use --test, --no-doctor)" >&2; exit 2 ;;
  esac
done

say() { printf '[setup] %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment in $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q)

has_nvidia_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; }

install_torch() {
  if "$PY" -c "import torch" >/dev/null 2>&1; then
    say "torch $("$PY" -c 'import torch; print(torch.__version__)') already installed"
    return
  fi
  local choice="$TORCH_CHOICE"
  if [ "$choice" = auto ]; then
    if has_nvidia_gpu || [ "$(uname -s)" = Darwin ]; then choice=default; else choice=cpu; fi
  fi
  case "$choice" in
    cpu)
      # A machine without an NVIDIA GPU needs no CUDA libraries. Prefer a CPU wheel pip can
      # already see (a local wheelhouse via pip's find-links), then PyTorch's CPU-only index.
      say "no NVIDIA GPU: installing a CPU-only torch build"
      "${PIP[@]}" --no-index torch 2>/dev/null \
        || "${PIP[@]}" torch --index-url https://download.pytorch.org/whl/cpu \
        || { say "could not install a CPU torch build; set OVERSEER_TORCH=default to take PyPI's build"; exit 1; } ;;
    cuda|default)
      say "installing torch from PyPI (CUDA build on Linux, MPS-enabled on macOS)"
      "${PIP[@]}" torch ;;
    *) say "OVERSEER_TORCH must be auto, cpu, cuda or default (got '$choice')"; exit 2 ;;
  esac
}

install_torch
say "installing Overseer${EXTRAS:+ with $EXTRAS}"
"${PIP[@]}" -e ".${EXTRAS}"

if [ "$RUN_DOCTOR" = 1 ]; then
  say "checking the machine"
  "$VENV/bin/overseer" doctor || true   # findings are advice; setup itself succeeded
fi
say "done: activate with 'source $VENV/bin/activate'"
