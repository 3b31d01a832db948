#!/usr/bin/env bash
# cleave-psi end to end over loopback mutual TLS: two and three parties find exactly the ids they
# all hold (duplicates, spaces and file order do not matter), the server logs only sizes; and the
# errors a user can make give one line and the documented exit code.
set -uo pipefail
server="$1" psi="$2" provision="$3"
source "$(dirname "$0")/../../test_support/shell/test_lib.sh"

help="$("$psi" --help)" || fail "--help exited non-zero"
for topic in --ids --out --timeout --server --ca "P-256" "nothing about"; do
  grep -qF -- "$topic" <<<"$help" || fail "--help does not mention '$topic'"
done
"$server" --help >"$dir/server-help" || fail "cleave-server --help"
grep -qF -- "--psi-parties" "$dir/server-help" || fail "cleave-server --help lacks --psi-parties"

make_pki "$provision" lab radiology icu
party_flags() { echo --ca "$P/ca.crt" --cert "$P/clients/$1.crt" --key "$P/clients/$1.key"; }

# ids: lab holds 000..059, radiology 030..099, icu 000..044 and 090..099 (zero-padded so that the
# sorted output is the numeric order); the lab's file has a duplicate, spaces and a blank line.
seq -f "id-%03g" 0 59 | sort -r >"$dir/lab.ids"
printf '  id-007 \r\n\n' >>"$dir/lab.ids"
seq -f "id-%03g" 30 99 >"$dir/radiology.ids"
{ seq -f "id-%03g" 0 44; seq -f "id-%03g" 90 99; } >"$dir/icu.ids"

expect_error 2 "--ids" "$psi" --out "$dir/x" $(party_flags lab)
expect_error 2 "$dir/missing.ids" "$psi" --ids "$dir/missing.ids" --out "$dir/x" $(party_flags lab)
expect_error 2 "--cert" "$psi" --ids "$dir/lab.ids" --out "$dir/x" --ca "$P/ca.crt"
expect_error 2 "--psi-parties must be 0 (off) or at least 2" "$server" --listen 127.0.0.1:0 "${tls_server[@]}" \
  --psi-parties 1

# run_parties N NAME...: each party in the background against $port; waits for all; each must
# exit 0.
run_parties() {
  local ps=() name
  for name in "$@"; do
    "$psi" --server "localhost:$port" $(party_flags "$name") --ids "$dir/$name.ids" \
      --out "$dir/$name.shared" --timeout 60 >"$dir/$name.psi.out" 2>"$dir/$name.psi.log" &
    ps+=("$!")
    pids+=("$!")
  done
  for pid in "${ps[@]}"; do
    wait_exit "$pid" 60
    local code=$?
    [ "$code" = 0 ] || fail "a party exited $code"
  done
}

start_server two --psi-parties 2
run_parties lab radiology
seq -f "id-%03g" 30 59 >"$dir/expected2"
for name in lab radiology; do
  diff -q "$dir/expected2" "$dir/$name.shared" >/dev/null ||
    fail "$name: shared ids differ: $(diff "$dir/expected2" "$dir/$name.shared" | head)"
  grep -q "of 2, .* 30 shared" "$dir/$name.psi.out" || fail "$name: $(cat "$dir/$name.psi.out")"
done
grep -q "PSI: 2 parties, set sizes .*; intersection 30" "$dir/two.log" "$dir/two.out" ||
  fail "the server does not log the intersection size"
grep -q "id-0" "$dir/two.log" "$dir/two.out" && fail "the server log names an id"
# The relay is ready for the next intersection once both have their result.
run_parties radiology lab
diff -q "$dir/expected2" "$dir/lab.shared" >/dev/null || fail "second run: lab"

start_server three --psi-parties 3
run_parties lab radiology icu
seq -f "id-%03g" 30 44 >"$dir/expected3"
for name in lab radiology icu; do
  diff -q "$dir/expected3" "$dir/$name.shared" >/dev/null ||
    fail "3 parties, $name: $(diff "$dir/expected3" "$dir/$name.shared" | head)"
done

# A party alone gives up after --timeout with one line; a server without --psi-parties refuses.
expect_error 2 "no result within 1 s" "$psi" --server "localhost:$port" $(party_flags icu) \
  --ids "$dir/icu.ids" --out "$dir/x" --timeout 1
start_server plain
expect_error 3 "UNIMPLEMENTED" "$psi" --server "localhost:$port" $(party_flags lab) \
  --ids "$dir/lab.ids" --out "$dir/x" --timeout 10
echo "psi_cli_test: ok"
