# What the shell tests share (sourced after `set -uo pipefail`): a scratch folder $dir removed on
# exit (kept with KEEP=1), every process in $pids and every background job stopped on exit,
# failures that show the logs, waits for a log line or an exit, the one-line error check, a PKI.

dir="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null; done
  # shellcheck disable=SC2046  # the job ids are words
  kill $(jobs -p) 2>/dev/null
  wait 2>/dev/null
  if [ -n "${KEEP:-}" ]; then echo "kept $dir" >&2; else rm -rf "$dir"; fi
}
trap cleanup EXIT

# need_torch_python TEST: sets $python to a python3 that imports torch ($CLEAVE_PYTHON, python3
# or /usr/bin/python3), or skips TEST (exit 77) with the reason.
need_torch_python() {
  python=""
  for candidate in "${CLEAVE_PYTHON:-}" python3 /usr/bin/python3; do
    [ -n "$candidate" ] && "$candidate" -c 'import torch' 2>/dev/null && { python="$candidate"; return; }
  done
  echo "$1: skipped: no python3 with PyTorch (apt-get install python3-torch)"
  exit 77
}

# fail MESSAGE: says why, shows the tail of every log in $dir, exits 1.
fail() {
  echo "FAIL: $*" >&2
  for log in "$dir"/*.log; do [ -f "$log" ] && { echo "--- $log" >&2; tail -20 "$log" >&2; }; done
  exit 1
}

# wait_for FILE PATTERN SECONDS PID: until FILE has a line matching PATTERN; fails if PID exits.
wait_for() {
  local file="$1" pattern="$2" deadline=$((SECONDS + $3)) pid="$4"
  until grep -qE -- "$pattern" "$file" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || fail "process $pid exited before '$pattern' appeared in $file"
    [ "$SECONDS" -lt "$deadline" ] || fail "no '$pattern' in $file after $3 s"
    sleep 0.05
  done
}

# wait_exit PID SECONDS: the process's exit code, or fails if it is still running by then.
wait_exit() {
  local pid="$1" deadline=$((SECONDS + $2))
  while kill -0 "$pid" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || fail "process $pid still running after $2 s"
    sleep 0.05
  done
  wait "$pid"
}

# expect_error CODE TEXT CMD...: runs CMD, wants exit CODE and one stderr line containing TEXT.
expect_error() {
  local code="$1" text="$2"; shift 2
  "$@" >"$dir/out" 2>"$dir/err"
  local got=$?
  [ "$got" = "$code" ] || fail "$* exited $got, expected $code: $(cat "$dir/err")"
  grep -qF -- "$text" "$dir/err" || fail "$*: stderr does not mention '$text': $(cat "$dir/err")"
  [ "$(grep -vc '^\s*$' "$dir/err")" = 1 ] || fail "$*: error is not one line: $(cat "$dir/err")"
}

# make_pki PROVISION CLIENT...: a CA, the server's and the clients' certificates in $dir/pki;
# sets P, and tls_server / tls_client (the first client's) as flag arrays.
make_pki() {
  local provision="$1" first="$2"; shift
  local clients=()
  for name in "$@"; do clients+=(--client "$name"); done
  "$provision" --out "$dir/pki" "${clients[@]}" >/dev/null || fail "provision"
  P="$dir/pki"
  tls_server=(--ca "$P/ca.crt" --cert "$P/server.crt" --key "$P/server.key")
  tls_client=(--ca "$P/ca.crt" --cert "$P/clients/$first.crt" --key "$P/clients/$first.key")
}

# wait_listening OUT PID SECONDS: until cleave-server's stdout OUT says it listens (fails if PID
# exits first or SECONDS pass); sets $port.
wait_listening() {
  wait_for "$1" "listening on port [0-9]+" "$3" "$2"
  port="$(sed -nE 's/.*listening on port ([0-9]+).*/\1/p' "$1")"
}

# start_server LOG ARGS...: the test's cleave-server ($server) on a port the system picks, with the
# PKI's server flags and ARGS, logging to $dir/LOG.out and .log; waits START_SECONDS (20) for it
# to listen; sets $server_pid and $port.
start_server() {
  local log="$1"; shift
  "$server" --listen 127.0.0.1:0 "${tls_server[@]}" "$@" >"$dir/$log.out" 2>"$dir/$log.log" &
  server_pid=$!
  pids+=("$server_pid")
  wait_listening "$dir/$log.out" "$server_pid" "${START_SECONDS:-20}"
}

# write_linear_csv FILE: 400 rows of features a,b,c,d and a label from a fixed linear rule
# (a + b > 0), by awk's generator with a fixed seed.
write_linear_csv() {
  awk 'BEGIN { srand(7); print "a,b,c,d,label";
    for (i = 0; i < 400; i++) { a = rand() - 0.5; b = rand() - 0.5; c = rand(); d = rand();
      printf "%.4f,%.4f,%.4f,%.4f,%d\n", a, b, c, d, (a + b > 0) } }' >"$1"
}
