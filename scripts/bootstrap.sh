#!/usr/bin/env bash
# Create (or refresh) the toolkit environment in .venv: modelrig itself, its libraries and the test tools, then put
# the `modelrig` command on PATH (a link in ~/.local/bin, and that folder on PATH for login shells).
# Idempotent: a second run with nothing changed installs nothing.
# Knobs: PYTHON (interpreter, default python3, 3.10 or later), MODELRIG_TORCH (torch requirement for the toolkit
# env, default torch==2.13.0; the CPU build is enough for conversions), MODELRIG_TORCH_INDEX (where the CPU build
# comes from on Linux, default https://download.pytorch.org/whl/cpu; empty: pip's own configuration),
# MODELRIG_VENV (default .venv), MODELRIG_BIN_DIR (where the command is linked, default ~/.local/bin; empty: no link).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${MODELRIG_VENV:-.venv}
TORCH=${MODELRIG_TORCH:-torch==2.13.0}
BIN_DIR=${MODELRIG_BIN_DIR-$HOME/.local/bin}

# Link the venv's `modelrig` into BIN_DIR and make sure login shells have BIN_DIR on PATH (one marked line in the
# login file bash reads, and in ~/.zprofile for zsh, macOS's login shell); says what it changed.
link_command() {
  [ -n "$BIN_DIR" ] || return 0
  local target link marker line file files=()
  target="$(cd "$VENV/bin" && pwd)/modelrig"
  link="$BIN_DIR/modelrig"
  mkdir -p "$BIN_DIR"
  if [ -e "$link" ] && [ ! -L "$link" ]; then
    echo "modelrig command: $link exists and is not a link; leaving it alone (run $target)" >&2
    return 0
  fi
  if [ "$(readlink "$link" 2>/dev/null)" != "$target" ]; then
    ln -sfn "$target" "$link"
    echo "modelrig command: linked $link -> $target"
  fi
  marker="# modelrig: put $BIN_DIR on PATH"
  line="case \":\$PATH:\" in *\":$BIN_DIR:\"*) ;; *) export PATH=\"$BIN_DIR:\$PATH\" ;; esac $marker"
  # bash reads the first of these that exists as a login shell; ~/.profile is also what sh/dash read.
  for file in "$HOME/.bash_profile" "$HOME/.bash_login" "$HOME/.profile"; do
    if [ -f "$file" ]; then files+=("$file"); break; fi
  done
  [ ${#files[@]} -gt 0 ] || files+=("$HOME/.profile")
  if [ -f "$HOME/.zprofile" ] || [ "$(basename "${SHELL:-}")" = zsh ]; then files+=("$HOME/.zprofile"); fi
  for file in "${files[@]}"; do
    if ! grep -qF "$marker" "$file" 2>/dev/null; then
      printf '\n%s\n' "$line" >> "$file"
      echo "modelrig command: added $BIN_DIR to PATH in $file (new login shells; now: export PATH=\"$BIN_DIR:\$PATH\")"
    fi
  done
}

stamp="$VENV/.modelrig-bootstrap"
sha256() { if command -v sha256sum >/dev/null; then sha256sum; else shasum -a 256; fi; }  # macOS: shasum
want="$(cat pyproject.toml scripts/bootstrap.sh scripts/toolkit_torch.py | sha256 | cut -c1-16) $TORCH"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/modelrig" ]; then
  echo "toolkit env $VENV: unchanged"
  link_command
  exit 0
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "bootstrap: $PYTHON is missing or older than Python 3.10; install Python 3.10+ and run again with" \
       "PYTHON=/path/to/python3.X" >&2
  exit 1
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip uv
# torch goes through pip so that pip's own configuration (find-links, mirrors) applies to it; on Linux from the
# PyTorch CPU index (the CPU build, about 200 MB, instead of PyPI's CUDA build of several GB).
torch_args=()
while IFS= read -r arg; do torch_args+=("$arg"); done < <("$VENV/bin/python" scripts/toolkit_torch.py "$TORCH")
"$VENV/bin/python" -m pip install -q "${torch_args[@]}"
# --compile-bytecode: uv writes no .pyc by default, and where PYTHONDONTWRITEBYTECODE is set (CI images, some
# shells) nothing ever does: every ansible-playbook run, and each of its workers, would compile Ansible again.
VIRTUAL_ENV="$VENV" "$VENV/bin/uv" pip install -q --compile-bytecode --python "$VENV/bin/python" -e ".[test]"
# After the whole install: torch imported before numpy is there warns "Failed to initialize NumPy".
"$VENV/bin/python" scripts/toolkit_torch.py --installed
echo "$want" > "$stamp"
echo "toolkit env $VENV: ready ($("$VENV/bin/modelrig" --version))"
link_command
