#!/usr/bin/env bash
# cleave-provision end to end: files and modes, refusal to overwrite, --add-client, bad input.
set -euo pipefail
bin="$1"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

"$bin" --out "$dir/pki" --client st-mary --server-name split.example.org >/dev/null
for f in ca.crt ca.key server.crt server.key clients/st-mary.crt clients/st-mary.key; do
  [ -f "$dir/pki/$f" ] || fail "missing $f"
done
for f in ca.key server.key clients/st-mary.key; do
  [ "$(stat -c %a "$dir/pki/$f")" = 600 ] || fail "$f is not 0600"
done
grep -q "BEGIN CERTIFICATE" "$dir/pki/server.crt" || fail "server.crt is not PEM"

before="$(md5sum "$dir/pki/ca.key")"
set +e
out="$("$bin" --out "$dir/pki" --client st-mary 2>&1)"; code=$?
set -e
[ "$code" = 2 ] || fail "overwrite without --force exited $code"
echo "$out" | grep -q "refusing to overwrite" || fail "no clear refusal: $out"
[ "$before" = "$(md5sum "$dir/pki/ca.key")" ] || fail "refusal changed ca.key"

"$bin" --out "$dir/pki" --add-client riverside >/dev/null
[ -f "$dir/pki/clients/riverside.crt" ] || fail "--add-client wrote nothing"
[ "$before" = "$(md5sum "$dir/pki/ca.key")" ] || fail "--add-client changed the CA"

set +e
out="$("$bin" --out "$dir/none" --add-client x 2>&1)"; code=$?
set -e
[ "$code" = 2 ] || fail "--add-client without a CA exited $code"
echo "$out" | grep -q "$dir/none/ca.crt" || fail "missing CA not named: $out"
[ "$(echo "$out" | wc -l)" = 1 ] || fail "error is not one line: $out"

set +e
"$bin" --out "$dir/bad" --client 'bad name!' >/dev/null 2>&1; code=$?
set -e
[ "$code" = 2 ] || fail "bad client name exited $code"
echo "provision_cli_test: ok"
