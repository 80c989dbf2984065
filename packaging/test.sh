#!/usr/bin/env bash
# README's test command: sudo ./packaging/test.sh
# Installs the test identity provider's npm packages (and the browser driver) if missing,
# builds every binary the lab runs (the end-to-end tests start them from target/debug), then
# runs every test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "test.sh: the end-to-end tests build network namespaces; run as root (sudo)" >&2
  exit 1
fi
# The IdP (oidc-provider) and the browser driver (puppeteer-core, a devDependency).
if [ -f tests/idp/package.json ] && { [ ! -d tests/idp/node_modules/oidc-provider ] ||
  [ ! -d tests/idp/node_modules/puppeteer-core ]; }; then
  (cd tests/idp && npm ci --no-audit --no-fund)
fi
cargo build --workspace --bins
# --no-fail-fast: one CI run reports every failing suite, not only the first.
cargo test --workspace --no-fail-fast "$@"
