#!/usr/bin/env bash
# Runs Herald's whole test suite, installing what is missing first.
# Usage: scripts/test.sh   (from anywhere; needs root or sudo only to install)
set -euo pipefail
cd "$(dirname "$0")/.."

fmt_color=()
if [[ "${CI:-}" == "true" ]]; then
  export CARGO_TERM_COLOR=never
  fmt_color=(--color never) # rustfmt colours its diff regardless of CARGO_TERM_COLOR
fi

step() { printf '\n==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

# --- system packages (Debian) ---------------------------------------------
missing=()
have promtool || missing+=(prometheus)
have redis-server || missing+=(redis-server)
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
if ! have node; then
  missing+=(nodejs npm)
elif ! have npm; then
  missing+=(npm)
fi
have cc || missing+=(build-essential pkg-config)

if ((${#missing[@]})); then
  step "installing Debian packages: ${missing[*]}"
  if [[ $(id -u) -eq 0 ]]; then
    sudo=()
  elif have sudo; then
    sudo=(sudo)
  else
    die "missing ${missing[*]}; run as root or install sudo"
  fi
  have apt-get || die "missing ${missing[*]} and apt-get is not available; install them by hand"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

have cargo || die "cargo not found: install Rust (rustup) first"
cargo fmt --version >/dev/null 2>&1 || die "cargo fmt not found: rustup component add rustfmt"
cargo clippy --version >/dev/null 2>&1 || die "cargo clippy not found: rustup component add clippy"

# --- browser test dependencies (npm) --------------------------------------
if [[ -f tests/browser/package.json && ! -d tests/browser/node_modules ]]; then
  step "installing tests/browser npm dependencies"
  if [[ -f tests/browser/package-lock.json ]]; then
    (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
  else
    (cd tests/browser && npm install --no-audit --no-fund --loglevel=error)
  fi
fi

# --- checks, in order; the first failure ends the run with its status ------
step "cargo fmt --all -- --check"
cargo fmt --all -- --check "${fmt_color[@]}"

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

if [[ -f dashboards/herald-alerts.yaml ]]; then
  step "promtool check rules dashboards/herald-alerts.yaml"
  promtool check rules dashboards/herald-alerts.yaml
fi
if [[ -f dashboards/herald-alerts.test.yaml ]]; then
  step "promtool test rules dashboards/herald-alerts.test.yaml"
  promtool test rules dashboards/herald-alerts.test.yaml
fi

if [[ -f scripts/check-dashboards.py ]]; then
  step "python3 scripts/check-dashboards.py"
  python3 scripts/check-dashboards.py
fi

# --- Helm chart: lint, render, schema-check (Python packages from PyPI) ----
# Builds the debug `herald` binary to run `check-config` on the rendered
# TOML; `cargo test` below reuses it.
if [[ -f tests/helm/test_chart.py ]]; then
  if ! python3 -c 'import helm_python, kubernetes_validate' >/dev/null 2>&1; then
    step "installing Python packages: helm-python-sdk kubernetes-validate"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
      helm-python-sdk kubernetes-validate
  fi
  step "python3 tests/helm/test_chart.py"
  python3 tests/helm/test_chart.py
fi

step "cargo test --workspace --all-targets"
cargo test --workspace --all-targets

step "all checks passed"
