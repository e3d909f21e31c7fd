# Source this file to build kka by hand: it points torch-sys at the PyTorch in .venv.
#   source scripts/env.sh && cargo build --release
# torch-sys runs `python` when VIRTUAL_ENV is set, so the venv's bin folder goes first on PATH.
KKA_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export VIRTUAL_ENV="$KKA_ROOT/.venv"
export PATH="$VIRTUAL_ENV/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
