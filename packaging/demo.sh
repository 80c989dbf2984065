#!/usr/bin/env bash
# README's first command: sudo ./packaging/demo.sh
#
# On a fresh Debian/Ubuntu machine: installs what the demo needs (system packages, a Rust
# toolchain if there is none, the test identity provider's npm packages), builds ztmesh, and
# runs the narrated demo (target/debug/ztmesh-demo) in network namespaces that it creates and
# removes again. Nothing is configured outside those namespaces. Exits non-zero if any step fails.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "demo.sh: the demo builds network namespaces and TUN devices; run it as root: sudo $0" >&2
  exit 1
fi

# 1. System packages: iproute2 (namespaces), nftables (the NAT routers), a C toolchain for the
#    Rust build, Node.js for the identity provider, Chromium for the users' sign-ins.
need=()
for p in iproute2 nftables iputils-ping ca-certificates curl build-essential pkg-config chromium; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  say "Installing system packages: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 20 ]; then
  echo "demo.sh: the identity provider (npm oidc-provider 9) needs Node.js 20 or newer; found $(node --version 2>/dev/null || echo none)." >&2
  echo "         Install Node.js 20+ (e.g. from https://nodejs.org or your distribution's backports) and run again." >&2
  exit 1
fi

# 2. Rust: use the invoking user's toolchain under sudo, or install one with rustup.
if ! command -v cargo >/dev/null; then
  for d in "${SUDO_USER:+$(getent passwd "$SUDO_USER" | cut -d: -f6)/.cargo/bin}" "$HOME/.cargo/bin"; do
    if [ -n "$d" ] && [ -x "$d/cargo" ]; then export PATH="$d:$PATH"; break; fi
  done
fi
if ! command -v cargo >/dev/null; then
  say "Installing Rust (rustup, minimal profile)"
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
  export PATH="$HOME/.cargo/bin:$PATH"
fi

# 3. The identity provider's npm packages (offline afterwards).
if [ ! -d tests/idp/node_modules/oidc-provider ] || [ ! -d tests/idp/node_modules/puppeteer-core ]; then
  say "Installing the test identity provider and the browser driver (npm oidc-provider, puppeteer-core)"
  (cd tests/idp && npm ci --no-audit --no-fund)
fi

# 4. Build, then play the story.
say "Building ztmesh (the first build takes 10-15 minutes on 2 cores)"
cargo build --workspace --bins
say "Running the demo"
exec ./target/debug/ztmesh-demo
