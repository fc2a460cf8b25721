# Sourced by the scripts: creates (once) and uses the project's virtual environment at ./.venv,
# so that no install touches the interpreter's own packages (Debian's and Ubuntu's python3 refuse
# that, PEP 668) and pyenv, Homebrew and distribution Pythons behave the same.
# PYTHON names the interpreter the environment is created from (default: python3 on the PATH).

VENV_DIR="$PWD/.venv"
VENV_STAMP="$VENV_DIR/.smtpconf-installed"

_venv_can_be_created() {
  "$1" -c 'import ensurepip, venv' 2>/dev/null
}

_venv_create() {
  local base=${PYTHON:-python3}
  if ! command -v "$base" >/dev/null; then
    echo "no $base on the PATH: install Python 3.11 or later, or set PYTHON=/path/to/python3" >&2
    exit 1
  fi
  if ! _venv_can_be_created "$base"; then
    # Debian and Ubuntu ship venv's ensurepip in a package of its own.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "installing the python3-venv Debian package (needed to create $VENV_DIR)" >&2
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    fi
    if ! _venv_can_be_created "$base"; then
      echo "$base cannot create a virtual environment (no ensurepip): install python3-venv" \
        "(apt-get install python3-venv) or another Python 3.11+, then run this again" >&2
      exit 1
    fi
  fi
  echo "creating the virtual environment $VENV_DIR from $(command -v "$base")" >&2
  rm -rf "$VENV_DIR"
  "$base" -m venv "$VENV_DIR"
}

# use_venv EXTRAS: make sure .venv exists with the package (editable) and EXTRAS ("" or "test" or
# "test,bench") installed under tests/constraints.txt, then point PYTHON at it. The install runs
# again only when pyproject.toml or tests/constraints.txt changed, or new extras are wanted.
use_venv() {
  local extras=$1
  if ! "$VENV_DIR/bin/python" -m pip --version >/dev/null 2>&1; then
    _venv_create
  fi
  local digest
  digest=$(cat pyproject.toml tests/constraints.txt | "$VENV_DIR/bin/python" -c \
    'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')
  local installed_digest="" installed_extras=""
  if [ -f "$VENV_STAMP" ]; then
    read -r installed_digest installed_extras <"$VENV_STAMP" || true
  fi
  local wanted
  if [ "$installed_digest" = "$digest" ]; then
    wanted=$(printf '%s\n' ${installed_extras//,/ } ${extras//,/ } | sort -u | paste -sd, -)
  else
    wanted=$extras
  fi
  if [ "$installed_digest" != "$digest" ] || [ "$wanted" != "$installed_extras" ]; then
    echo "installing the package${wanted:+ with [$wanted]} into $VENV_DIR" >&2
    "$VENV_DIR/bin/python" -m pip install -q --disable-pip-version-check -c tests/constraints.txt \
      -e ".${wanted:+[$wanted]}"
    echo "$digest $wanted" >"$VENV_STAMP"
  fi
  echo "using $VENV_DIR ($("$VENV_DIR/bin/python" --version)); activate it with: . .venv/bin/activate" >&2
  PYTHON="$VENV_DIR/bin/python"
  export VIRTUAL_ENV="$VENV_DIR" PATH="$VENV_DIR/bin:$PATH"
}
