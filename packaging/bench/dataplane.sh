#!/usr/bin/env bash
# dataplane.sh -- benchmark the ztmesh data plane against raw veth and stock userspace WireGuard.
#
# Two namespaces joined by one veth pair (underlay 198.18.0.1/30 <-> .2, RFC 2544 range), and
# per implementation a tunnel between them (overlay 100.64.0.1 <-> 100.64.0.2, MTU 1420):
#   raw        no tunnel, the veth itself
#   boringtun  boringtun-cli (cargo install boringtun-cli), configured with wg
#   gotatun    gotatun-cli (cargo install gotatun-cli), configured with wg
#   ztmesh     two ztmesh data planes (the ztmesh-dp-test harness, release build), identities
#              signed by a throwaway coordinator key, filter allowing everything between them
# Measured per implementation and round: iperf3 TCP 1 stream and 4 streams, UDP at max rate
# (1392-byte datagrams in tunnels, 1400 raw), ping RTT idle (200 x 10 ms) and during the TCP-1
# transfer, and CPU of both tunnel daemons during TCP-1. Rounds are interleaved
# (raw, boringtun, gotatun, ztmesh, raw, ...) so machine drift hits every implementation alike.
# Output: medians [min-max] over rounds, ztmesh's ratio to boringtun-cli and to gotatun-cli for
# every metric, RTT added over raw veth, and whether the issue's targets are met.
#
# Fails (exit 1) when an implementation asked for is not installed, when a tunnel does not come
# up, or when a measurement produced no result: a missing column is never silently skipped.
#
# Containment: namespaces named ztbench-{a,b}-PID, no default route, nothing in the root
# namespace; every load generator is bounded (iperf3 -t, ping -c, timeout); a trap kills what
# this script started and deletes the namespaces on any exit.
#
# Usage: sudo packaging/bench/dataplane.sh [--runs N] [--duration S] [--out DIR]
#                                          [--impls "raw boringtun gotatun ztmesh"]
# Needs: iproute2 iperf3 wireguard-tools iputils-ping python3, and for the default set
# boringtun-cli and gotatun (cargo install boringtun-cli gotatun-cli --locked), cargo (to build
# the harness in release mode unless ZTDP_BIN points at it).
set -Eeuo pipefail

RUNS=3
DUR=5
OUT=""
IMPLS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --duration) DUR=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --impls) IMPLS=$2; shift 2 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "must run as root" >&2; exit 1; }
export PATH="$PATH:${HOME:-/root}/.cargo/bin"
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-/tmp/ztmesh-bench-$(date +%Y%m%d-%H%M%S)}
RAW="$OUT/raw"
mkdir -p "$RAW"
IMPLS=${IMPLS:-"raw boringtun gotatun ztmesh"}
for c in ip iperf3 wg ping python3 timeout; do
  command -v "$c" >/dev/null || { echo "missing tool: $c" >&2; exit 1; }
done
for impl in $IMPLS; do
  case "$impl" in
    raw|ztmesh) ;;
    boringtun) command -v boringtun-cli >/dev/null || { echo "boringtun asked for but boringtun-cli is not installed (cargo install boringtun-cli --locked)" >&2; exit 1; } ;;
    gotatun) command -v gotatun >/dev/null || { echo "gotatun asked for but gotatun is not installed (cargo install gotatun-cli --locked)" >&2; exit 1; } ;;
    *) echo "unknown implementation: $impl (raw boringtun gotatun ztmesh)" >&2; exit 2 ;;
  esac
done

NS_A=ztbench-a-$$; NS_B=ztbench-b-$$
VA=ztbva$$; VB=ztbvb$$
UA=198.18.0.1; UB=198.18.0.2
OA=100.64.0.1; OB=100.64.0.2
WA=ztbwa$$; WB=ztbwb$$
PORT=51820
declare -A LIVE=()
D_A=""; D_B=""

FAILED="$OUT/failures.txt"
: > "$FAILED"
fail() { log "FAILED: $*"; echo "$*" >> "$FAILED"; }
log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" | tee -a "$OUT/run.log" >&2; }
in_a() { ip netns exec "$NS_A" "$@"; }
in_b() { ip netns exec "$NS_B" "$@"; }
track() { LIVE[$1]=1; }
stop_pid() {
  local pid=$1 i
  [ -n "${LIVE[$pid]:-}" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  unset "LIVE[$pid]"
}
cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  for pid in "${!LIVE[@]}"; do stop_pid "$pid"; done
  for ns in "$NS_A" "$NS_B"; do ip netns del "$ns" 2>/dev/null; done
  rm -f "/var/run/wireguard/$WA.sock" "/var/run/wireguard/$WB.sock"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Stale namespaces of earlier runs whose script is gone.
for ns in $(ip netns list | awk '{print $1}' | grep '^ztbench-' || true); do
  pid=${ns##*-}
  [ -d "/proc/$pid" ] || ip netns del "$ns" 2>/dev/null || true
done

# The harness, release build of the checked-out tree (cargo rebuilds only what changed, so a
# stale binary is never measured), unless ZTDP_BIN names one.
case " $IMPLS " in *" ztmesh "*)
  if [ -z "${ZTDP_BIN:-}" ]; then
    log "building ztmesh-dp-test (release)"
    (cd "$ROOT" && cargo build --release -q -p ztmesh-client --bin ztmesh-dp-test)
  fi ;;
esac
ZTDP_BIN=${ZTDP_BIN:-$ROOT/target/release/ztmesh-dp-test}
[ "$IMPLS" = "${IMPLS/ztmesh/}" ] || [ -x "$ZTDP_BIN" ] || { echo "no harness at $ZTDP_BIN" >&2; exit 1; }

{
  echo "date: $(date -Is)"; echo "kernel: $(uname -r)"; echo "cpus: $(nproc)"
  echo "boringtun-cli: $(boringtun-cli --version 2>/dev/null || echo absent)"
  echo "gotatun: $(gotatun --version 2>/dev/null || echo absent)"
  echo "ztmesh-dp-test: $ZTDP_BIN ($(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null))"
  echo "params: runs=$RUNS duration=$DUR impls='$IMPLS'"
} > "$OUT/env.txt"

ip netns add "$NS_A"; ip netns add "$NS_B"
ip link add "$VA" netns "$NS_A" type veth peer name "$VB" netns "$NS_B"
ip -n "$NS_A" addr add "$UA/30" dev "$VA"; ip -n "$NS_B" addr add "$UB/30" dev "$VB"
for ns in "$NS_A" "$NS_B"; do ip -n "$ns" link set lo up; done
ip -n "$NS_A" link set "$VA" up; ip -n "$NS_B" link set "$VB" up
in_a ping -c 1 -W 2 "$UB" >/dev/null
log "underlay up; results in $OUT"

daemon_ticks() { # utime+stime of a process, 0 if gone
  [ -n "$1" ] && [ -r "/proc/$1/stat" ] || { echo 0; return; }
  awk '{sub(/^.*\) /,""); print $12 + $13}' "/proc/$1/stat"
}

tunnel_up() { # impl round
  local impl=$1 r=$2 i k="$OUT/keys"
  mkdir -p "$k"; chmod 700 "$k"
  case "$impl" in
    boringtun|gotatun)
      (umask 077; wg genkey > "$k/a"; wg genkey > "$k/b")
      wg pubkey < "$k/a" > "$k/a.pub"; wg pubkey < "$k/b" > "$k/b.pub"
      if [ "$impl" = boringtun ]; then
        ip netns exec "$NS_A" boringtun-cli "$WA" --foreground --disable-drop-privileges > "$RAW/r${r}_${impl}_a.log" 2>&1 & D_A=$!
        ip netns exec "$NS_B" boringtun-cli "$WB" --foreground --disable-drop-privileges > "$RAW/r${r}_${impl}_b.log" 2>&1 & D_B=$!
      else
        ip netns exec "$NS_A" gotatun "$WA" --foreground --disable-drop-privileges -v error > "$RAW/r${r}_${impl}_a.log" 2>&1 & D_A=$!
        ip netns exec "$NS_B" gotatun "$WB" --foreground --disable-drop-privileges -v error > "$RAW/r${r}_${impl}_b.log" 2>&1 & D_B=$!
      fi
      track "$D_A"; track "$D_B"
      for i in $(seq 500); do
        [ -S "/var/run/wireguard/$WA.sock" ] && [ -S "/var/run/wireguard/$WB.sock" ] && break; sleep 0.01
      done
      in_a wg set "$WA" private-key "$k/a" listen-port $PORT peer "$(cat "$k/b.pub")" endpoint "$UB:$PORT" allowed-ips "$OB/32"
      in_b wg set "$WB" private-key "$k/b" listen-port $PORT peer "$(cat "$k/a.pub")" endpoint "$UA:$PORT" allowed-ips "$OA/32"
      in_a ip addr add "$OA/32" peer "$OB/32" dev "$WA"; in_b ip addr add "$OB/32" peer "$OA/32" dev "$WB"
      in_a ip link set "$WA" mtu 1420 up; in_b ip link set "$WB" mtu 1420 up ;;
    ztmesh)
      "$ZTDP_BIN" gen-pair "$k" "$UA" "$UB" "$PORT" "$WA" "$WB"
      ip netns exec "$NS_A" "$ZTDP_BIN" run "$k/a.json" --wait > "$RAW/r${r}_${impl}_a.out" 2> "$RAW/r${r}_${impl}_a.log" & D_A=$!
      ip netns exec "$NS_B" "$ZTDP_BIN" run "$k/b.json" --wait > "$RAW/r${r}_${impl}_b.out" 2> "$RAW/r${r}_${impl}_b.log" & D_B=$!
      track "$D_A"; track "$D_B"
      for i in $(seq 500); do
        grep -q ready "$RAW/r${r}_${impl}_a.out" 2>/dev/null && grep -q ready "$RAW/r${r}_${impl}_b.out" 2>/dev/null && break
        sleep 0.01
      done ;;
  esac
  for i in $(seq 50); do in_a ping -c 1 -W 1 "$OB" >/dev/null 2>&1 && return 0; done
  fail "round $r: $impl tunnel did not come up"; return 1
}

tunnel_down() {
  stop_pid "$D_A"; stop_pid "$D_B"; D_A=""; D_B=""
  rm -f "/var/run/wireguard/$WA.sock" "/var/run/wireguard/$WB.sock"
}

iperf() { # tag dst args...
  local tag=$1 dst=$2 srv i; shift 2
  timeout $((DUR + 20)) ip netns exec "$NS_B" iperf3 -s -1 > "$RAW/$tag.server.txt" 2>&1 & srv=$!; track "$srv"
  for i in $(seq 100); do in_b ss -Hltn 'sport = :5201' | grep -q . && break; sleep 0.02; done
  timeout $((DUR + 15)) ip netns exec "$NS_A" iperf3 -c "$dst" -t "$DUR" -J "$@" > "$RAW/$tag.json" 2>/dev/null || fail "iperf3 $tag"
  for i in $(seq 40); do kill -0 "$srv" 2>/dev/null || break; sleep 0.05; done
  stop_pid "$srv"
}

round() { # impl round
  local impl=$1 r=$2 dst=$OB len=1392 p t0 t1
  [ "$impl" = raw ] && { dst=$UB; len=1400; }
  if [ "$impl" != raw ]; then tunnel_up "$impl" "$r" || { tunnel_down; return 0; }; fi
  timeout 30 ip netns exec "$NS_A" ping -n -c 200 -i 0.01 "$dst" > "$RAW/r${r}_${impl}_idle.ping" 2>&1 || true
  ( sleep 1; exec timeout $((DUR + 5)) ip netns exec "$NS_A" ping -n -c $(( (DUR - 2) * 10 )) -i 0.1 "$dst" ) \
    > "$RAW/r${r}_${impl}_load.ping" 2>&1 & p=$!; track "$p"
  t0=$(( $(daemon_ticks "$D_A") + $(daemon_ticks "$D_B") ))
  iperf "r${r}_${impl}_tcp1" "$dst"
  t1=$(( $(daemon_ticks "$D_A") + $(daemon_ticks "$D_B") ))
  echo "$(( t1 - t0 )) $(getconf CLK_TCK) $DUR" > "$RAW/r${r}_${impl}_tcp1.cpu"
  wait "$p" 2>/dev/null || true; unset "LIVE[$p]"
  iperf "r${r}_${impl}_tcp4" "$dst" -P 4
  iperf "r${r}_${impl}_udp" "$dst" -u -b 0 -l "$len"
  [ "$impl" != raw ] && tunnel_down
  if grep -l panicked "$RAW/r${r}_${impl}"_*.log >/dev/null 2>&1; then
    fail "round $r: a $impl daemon panicked (see $RAW/r${r}_${impl}_*.log)"
  fi
  log "round $r $impl done"
}

for r in $(seq "$RUNS"); do
  for impl in $IMPLS; do round "$impl" "$r"; done
done

rc=0
python3 - "$RAW" "$RUNS" "$IMPLS" > "$OUT/summary.md" <<'EOF' || rc=$?
import json, re, statistics, sys, os
raw, runs, impls = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
def iperf(path):
    try:
        return json.load(open(path))["end"]["sum_received"]["bits_per_second"] / 1e9
    except Exception:
        return None
def udp_loss(path):
    try:
        return json.load(open(path))["end"]["sum"]["lost_percent"]
    except Exception:
        return None
def ping(path):
    try:
        rtts = [float(m) for m in re.findall(r"time=([\d.]+) ms", open(path).read())]
        return statistics.median(rtts) if rtts else None
    except Exception:
        return None
def cpu(path):
    try:
        ticks, tck, dur = open(path).read().split()
        return int(ticks) / int(tck) / float(dur)
    except Exception:
        return None
# (key, label, file suffix, parser, decimals)
METRICS = [("tcp1", "TCP 1 stream, Gbit/s", "tcp1.json", iperf, 3),
           ("tcp4", "TCP 4 streams, Gbit/s", "tcp4.json", iperf, 3),
           ("udp", "UDP max rate, received Gbit/s", "udp.json", iperf, 3),
           ("udploss", "UDP max rate, loss %", "udp.json", udp_loss, 1),
           ("idle", "ping RTT idle, p50 ms", "idle.ping", ping, 3),
           ("load", "ping RTT during TCP-1, p50 ms", "load.ping", ping, 3),
           ("cpu", "both daemons' CPU during TCP-1, cores", "tcp1.cpu", cpu, 2)]
vals, missing = {}, []
for impl in impls:
    for key, label, suffix, fn, _ in METRICS:
        if impl == "raw" and key == "cpu":
            continue
        xs = [fn(os.path.join(raw, f"r{r}_{impl}_{suffix}")) for r in range(1, runs + 1)]
        got = [x for x in xs if x is not None]
        if len(got) < len(xs):
            missing.append(f"{impl} {key}: {len(xs) - len(got)} of {len(xs)} rounds without a result")
        vals[(impl, key)] = got
def med(impl, key):
    xs = vals.get((impl, key)) or []
    return statistics.median(xs) if xs else None
def cell(impl, key, nd):
    xs = vals.get((impl, key)) or []
    if not xs:
        return "-"
    m = statistics.median(xs)
    return f"{m:.{nd}f} [{min(xs):.{nd}f}-{max(xs):.{nd}f}]" if len(xs) > 1 else f"{m:.{nd}f}"
def ratio(key, ref):
    z, r = med("ztmesh", key), med(ref, key)
    return f"{z / r:.2f}x" if z is not None and r else "-"
names = {"raw": "raw veth", "boringtun": "boringtun-cli", "gotatun": "gotatun-cli", "ztmesh": "ztmesh"}
refs = [r for r in ("boringtun", "gotatun") if r in impls and "ztmesh" in impls]
print(f"medians [min-max] over {runs} interleaved rounds; ratios are ztmesh / reference\n")
print("| metric | " + " | ".join(names[i] for i in impls) + "".join(f" | ztmesh / {names[r]}" for r in refs) + " |")
print("|---|" + "---|" * (len(impls) + len(refs)))
for key, label, _, _, nd in METRICS:
    print(f"| {label} | " + " | ".join(cell(i, key, nd) for i in impls)
          + "".join(f" | {ratio(key, r)}" for r in refs) + " |")
def added(impl, key):
    t, rw = med(impl, key), med("raw", key)
    return None if t is None or rw is None else t - rw
tunnels = [i for i in impls if i != "raw"]
if "raw" in impls and tunnels:
    print("\nRTT added over raw veth (tunnel p50 minus raw p50), ms:\n")
    print("| | " + " | ".join(names[i] for i in tunnels) + " |")
    print("|---|" + "---|" * len(tunnels))
    for key, label in (("idle", "idle"), ("load", "during TCP-1")):
        print(f"| {label} | " + " | ".join("-" if added(i, key) is None else f"{added(i, key):.3f}"
                                          for i in tunnels) + " |")
if "ztmesh" in impls:
    print("\nTargets (issue 4):\n")
    z1, b1 = med("ztmesh", "tcp1"), med("boringtun", "tcp1")
    if z1 is not None and b1:
        print(f"- TCP 1 stream >= 1.5x boringtun-cli: {z1 / b1:.2f}x: {'met' if z1 / b1 >= 1.5 else 'NOT met'}")
    a = added("ztmesh", "idle")
    if a is not None:
        print(f"- idle RTT added over raw veth < 0.2 ms (median): {a:.3f} ms: {'met' if a < 0.2 else 'NOT met'}")
    l = med("ztmesh", "load")
    if l is not None:
        print(f"- RTT under load < 2 ms (median): {l:.3f} ms: {'met' if l < 2 else 'NOT met'}")
if missing:
    print("\nMISSING RESULTS:\n")
    for m in missing:
        print(f"- {m}")
    sys.exit(3)
EOF
cat "$OUT/summary.md"
if [ -s "$FAILED" ] || [ "$rc" != 0 ]; then
  echo "benchmark FAILED:" >&2
  cat "$FAILED" >&2
  [ "$rc" != 0 ] && echo "some measurements produced no result (see MISSING RESULTS above)" >&2
  exit 1
fi
