#!/usr/bin/env bash
# Windows service round trip under Wine, called by .ci/run.
#
# Cross-compiles promoter.exe (x86_64-pc-windows-gnu, debug profile, the shared target dir), then,
# in a fresh Wine prefix, runs it as a real service under Wine's Service Control Manager against
# simulated Qlik sites (`promoter sim`, the Linux build):
#   install -> a broken configuration makes `service start` fail with exit code 2 and the reason
#   in the service's log -> start -> /health answers -> a change on the simulated site reaches the
#   service -> stop (the process exits, the port closes) -> uninstall.
# Installs what it needs when missing: mingw-w64 and wine (apt), the Rust target (rustup), and a
# stand-in bcryptprimitives.dll for Wine < 8.13 (see "Facts" at the end).
#
# Usage: .ci/windows.sh            (from any folder; exits non-zero on any failure, with the logs)
#   KEEP=1 .ci/windows.sh          keep the work folder and the Wine prefix for a look afterwards
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TERM_COLOR=never
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc

ms() { echo $(( $(date +%s%N) / 1000000 )); }
secs() { printf '%d.%ds' $(( $1 / 1000 )) $(( $1 % 1000 / 100 )); }
T_START=$(ms)
T_LAST=$T_START
declare -a TIMES=()
lap() {
  local now d; now=$(ms); d=$(( now - T_LAST ))
  TIMES+=("$(printf '  %-50s %8s' "$1" "$(secs $d)")")
  T_LAST=$now
  echo "--- $1: $(secs $d)"
}
print_times() {
  echo "=== windows.sh timings"
  for t in "${TIMES[@]}"; do echo "$t"; done
  printf '  %-50s %8s\n' total "$(secs $(( $(ms) - T_START )))"
}
trap print_times EXIT

# ---------------------------------------------------------------------------------------------
# Tools
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
missing=()
command -v x86_64-w64-mingw32-gcc >/dev/null || missing+=(gcc-mingw-w64-x86-64)
command -v wine >/dev/null || missing+=(wine64)
command -v curl >/dev/null || missing+=(curl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "--- installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
rustup target add x86_64-pc-windows-gnu >/dev/null 2>&1 || rustup target add x86_64-pc-windows-gnu
lap "tools (apt, rustup target)"

# ---------------------------------------------------------------------------------------------
# Builds: the Windows exe, and the Linux binary for the simulator (usually already built by the
# tests; then this is a no-op).
cargo build --locked --target x86_64-pc-windows-gnu --bin promoter
EXE=$ROOT/target/x86_64-pc-windows-gnu/debug/promoter.exe
lap "cross-build promoter.exe (debug)"
# --all-targets resolves features exactly as `cargo test --all-targets` does (dev-dependencies
# included), so after `.ci/test` this reuses its binary instead of rebuilding every dependency.
cargo build --locked --all-targets
LINUX=$ROOT/target/debug/promoter
lap "build Linux promoter (simulator)"

# ---------------------------------------------------------------------------------------------
# A fresh Wine prefix, headless.
export WINEPREFIX=$ROOT/target/wine-ci WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml=" DISPLAY=
WORK=$(mktemp -d /tmp/promoter-wine.XXXXXX)
NAME=promoter-ci
SIM_PID=""
cleanup() {
  local rc=$?
  set +e
  if [ $rc -ne 0 ]; then
    echo
    echo "=== FAILED (exit $rc). Logs:"
    for f in "$WORK"/sim/logs/* "$WORK"/sim.out; do
      [ -f "$f" ] && { echo "----- $f"; tail -n 80 "$f"; }
    done
    echo "----- wine sc query $NAME"; wine sc query "$NAME" 2>&1
  fi
  # Stop what this script started: the service (if still there), this prefix's Wine processes
  # (wineserver -k only touches $WINEPREFIX), the simulator (by its pid).
  wine sc stop "$NAME" >/dev/null 2>&1
  wine sc delete "$NAME" >/dev/null 2>&1
  wineserver -k >/dev/null 2>&1
  [ -n "$SIM_PID" ] && kill "$SIM_PID" 2>/dev/null && wait "$SIM_PID" 2>/dev/null
  if [ "${KEEP:-0}" = 1 ]; then
    echo "kept: $WORK and WINEPREFIX=$WINEPREFIX"
  else
    rm -rf "$WORK" "$WINEPREFIX"
  fi
  print_times
  exit $rc
}
trap cleanup EXIT  # replaces the timings-only trap
fail() { echo "FAIL: $*" >&2; exit 1; }

rm -rf "$WINEPREFIX"
wineboot -i >/dev/null 2>&1
wineserver -w
# Keep this prefix's wineserver (and with it services.exe) up until the end. Otherwise, when the
# last ordinary Wine process exits, wineserver ends and takes the service down without a Stop
# control, and the next `wine` command starts a new SCM that auto-starts the service again.
wineserver -p
WINE_VERSION=$(wine --version | sed -E 's/^wine-([0-9]+)\.([0-9]+).*/\1 \2/')
read -r WINE_MAJOR WINE_MINOR <<<"$WINE_VERSION"
if [ "$WINE_MAJOR" -lt 8 ] || { [ "$WINE_MAJOR" -eq 8 ] && [ "$WINE_MINOR" -lt 13 ]; }; then
  # Rust std >= 1.78 imports ProcessPrng from bcryptprimitives.dll, which Wine has only since
  # 8.13: without this stand-in every Rust exe fails to load (status c0000135).
  SHIM=$ROOT/target/wine-shim
  mkdir -p "$SHIM"
  cat >"$SHIM/bcryptprimitives.c" <<'EOF'
/* Minimal bcryptprimitives.dll for Wine < 8.13: Rust std (>= 1.78) imports ProcessPrng. */
#include <windows.h>
#include <ntsecapi.h>   /* RtlGenRandom == advapi32!SystemFunction036 */
BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len) {
    while (len) {
        ULONG n = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!RtlGenRandom(data, n)) return FALSE;
        data += n; len -= n;
    }
    return TRUE;
}
EOF
  printf 'LIBRARY bcryptprimitives.dll\nEXPORTS\nProcessPrng\n' >"$SHIM/bcryptprimitives.def"
  x86_64-w64-mingw32-gcc -O2 -shared -o "$SHIM/bcryptprimitives.dll" \
    "$SHIM/bcryptprimitives.c" "$SHIM/bcryptprimitives.def" -ladvapi32 -s
  cp "$SHIM/bcryptprimitives.dll" "$WINEPREFIX/drive_c/windows/system32/"
  echo "--- wine $WINE_MAJOR.$WINE_MINOR: installed the bcryptprimitives.dll stand-in"
fi
wine "$EXE" --version || fail "promoter.exe does not run under Wine"
lap "fresh Wine prefix"

# ---------------------------------------------------------------------------------------------
# Simulated sites (Linux binary). `promoter sim` writes promoter.toml (relative paths, a free
# listener port, logging.folder = logs) and sim.json (admin URL) into its folder.
"$LINUX" sim --dir "$WORK/sim" --sites dev,test >"$WORK/sim.out" 2>&1 &
SIM_PID=$!
for _ in $(seq 150); do [ -s "$WORK/sim/sim.json" ] && break; sleep 0.2; done
[ -s "$WORK/sim/sim.json" ] || fail "the simulator did not start"
json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"; }
ADMIN=$(json "$WORK/sim/sim.json" 'd["adminUrl"]')
CONFIG=$WORK/sim/promoter.toml
PORT=$(sed -nE 's/^bind = "127\.0\.0\.1:([0-9]+)"/\1/p' "$CONFIG")
[ -n "$PORT" ] || fail "no listener port in $CONFIG"
CONFIG_W=$(winepath -w "$CONFIG")
LOGS=$WORK/sim/logs
echo "--- simulator: admin $ADMIN, service listener port $PORT, config $CONFIG_W"
"$LINUX" validate --config "$CONFIG"
lap "simulator"

sc_state() { wine sc query "$NAME" 2>/dev/null | tr -d '\r' | sed -nE 's/^ *STATE *: *[0-9]+ *([A-Z_]+).*/\1/p'; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

# ---------------------------------------------------------------------------------------------
# Install (refused for a broken configuration, then done with the good one).
cp "$CONFIG" "$WORK/good.toml"
sed -E 's/^(certificates = ".*)"$/\1-missing"/' "$WORK/good.toml" >"$WORK/broken.toml"
cp "$WORK/broken.toml" "$CONFIG"
if wine "$EXE" service install --config "$CONFIG_W" --name "$NAME" >"$WORK/install-broken.out" 2>&1; then
  fail "service install accepted a broken configuration"
fi
grep -q "certificates" "$WORK/install-broken.out" || { cat "$WORK/install-broken.out"; fail "no clear reason from install"; }
cp "$WORK/good.toml" "$CONFIG"
wine "$EXE" service install --config "$CONFIG_W" --name "$NAME"
wine sc query "$NAME" | tr -d '\r' | grep -q "$NAME" || fail "sc query does not know $NAME"
lap "service install"

# ---------------------------------------------------------------------------------------------
# A start-up failure: the configuration breaks after install. `service start` must report it,
# the SCM must show exit code 2, and the service's log must hold the same reason as the console.
cp "$WORK/broken.toml" "$CONFIG"
if wine "$EXE" service start --name "$NAME" >"$WORK/start-broken.out" 2>&1; then
  cat "$WORK/start-broken.out"; fail "service start succeeded with a broken configuration"
fi
cat "$WORK/start-broken.out"
grep -q "exit code 2" "$WORK/start-broken.out" || fail "service start did not report exit code 2"
[ "$(sc_state)" = STOPPED ] || fail "the service is $(sc_state), not STOPPED, after a failed start"
CONSOLE=$("$LINUX" validate --config "$CONFIG" 2>&1 | sed -n 's/^error: //p' | head -n1 | sed -E 's/^.*: ([0-9]+ problem)/\1/' || true)
[ -n "$CONSOLE" ] || fail "promoter validate gave no reason for the broken configuration"
grep -rqF "$CONSOLE" "$LOGS" || fail "the service log does not hold the console's reason: $CONSOLE"
grep -rq "local.certificates" "$LOGS" || fail "the service log does not name local.certificates"
cp "$WORK/good.toml" "$CONFIG"
lap "failed start: exit code 2, reason in the log"

# ---------------------------------------------------------------------------------------------
# Start, health.
wine "$EXE" service start --name "$NAME"
[ "$(sc_state)" = RUNNING ] || fail "sc query says $(sc_state), not RUNNING"
for _ in $(seq 100); do curl -fsS "http://127.0.0.1:$PORT/health" >"$WORK/health.json" 2>/dev/null && break; sleep 0.2; done
curl -fsS "http://127.0.0.1:$PORT/health" >"$WORK/health.json" || fail "/health does not answer"
echo "--- /health: $(cat "$WORK/health.json")"
wine "$EXE" service status --name "$NAME" || fail "service status does not say running"
lap "service start, /health answers"

# ---------------------------------------------------------------------------------------------
# A change on the simulated DEV site reaches the service (QRS change notification -> inbox).
for _ in $(seq 150); do
  curl -fsS "$ADMIN/sites/dev/subscriptions" | grep -q "127.0.0.1:$PORT" && break
  sleep 0.2
done
curl -fsS "$ADMIN/sites/dev/subscriptions" | grep -q "127.0.0.1:$PORT" \
  || fail "the service did not subscribe on the simulated DEV site"
deliveries() {
  curl -fsS "http://127.0.0.1:$PORT/metrics" \
    | awk '/^promoter_deliveries_received_total/ { n += $NF } END { print n + 0 }'
}
BEFORE=$(deliveries)
APP=$(curl -fsS "$ADMIN/sites/dev/apps" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
curl -fsS -X PUT -H 'content-type: application/json' \
  -d '{"properties": {"PromoteToServer": ["test - Overwrite"]}}' \
  "$ADMIN/sites/dev/apps/$APP/customproperties" >/dev/null
for _ in $(seq 100); do [ "$(deliveries)" -gt "$BEFORE" ] && break; sleep 0.2; done
[ "$(deliveries)" -gt "$BEFORE" ] || fail "no change notification was acknowledged (promoter_deliveries_received_total)"
wine "$EXE" inbox --config "$CONFIG_W" --limit 5 | tr -d '\r' | tee "$WORK/inbox.out"
grep "$APP" "$WORK/inbox.out" | grep -vq '  sweep  ' \
  || fail "the change to app $APP is not in the service's inbox as a QRS delivery"
lap "simulated change reaches the service"

# ---------------------------------------------------------------------------------------------
# Stop: the SCM says STOPPED with exit code 0, the process is gone, the port is closed.
wine "$EXE" service stop --name "$NAME"
for _ in $(seq 120); do [ "$(sc_state)" = STOPPED ] && break; sleep 0.25; done
[ "$(sc_state)" = STOPPED ] || fail "the service is $(sc_state) after stop"
wine sc query "$NAME" | tr -d '\r' | grep -E 'WIN32_EXIT_CODE *: *0 ' >/dev/null \
  || { wine sc query "$NAME"; fail "the service did not stop with exit code 0"; }
for _ in $(seq 40); do port_open || break; sleep 0.25; done
port_open && fail "port $PORT is still open after stop"
for _ in $(seq 40); do pgrep -f 'promoter\.exe.*service run' >/dev/null || break; sleep 0.25; done
pgrep -af 'promoter\.exe.*service run' && fail "the service process is still running after stop"
grep -rq "Promoter service stopped" "$LOGS" || fail "the log does not record the clean stop"
lap "service stop: exit 0, process gone, port closed"

# ---------------------------------------------------------------------------------------------
wine "$EXE" service uninstall --name "$NAME"
if wine sc query "$NAME" 2>/dev/null | tr -d '\r' | grep -q "STATE"; then fail "$NAME is still registered"; fi
lap "service uninstall"
echo "=== Windows service round trip under Wine: OK"

# Facts (Debian 12, Wine 8.0): see the README section "Testing the Windows build under Wine".
