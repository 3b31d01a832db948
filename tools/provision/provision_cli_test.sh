#!/usr/bin/env bash
# cleave-provision end to end: files and modes, refusal to overwrite, --add-client, bad input.
set -euo pipefail
bin="$1"
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
mode() { stat -c %a "$1"; }

# Runs the binary expecting exit code 2 and one line "cleave-provision: error: ..." on stderr;
# leaves that line in $err.
expect_user_error() {
  local code=0
  err="$("$bin" "$@" 2>&1 >/dev/null)" || code=$?
  [ "$code" = 2 ] || fail "'$*' exited $code, not 2: $err"
  [ "$(printf '%s\n' "$err" | wc -l)" = 1 ] || fail "'$*' error is not one line: $err"
  case "$err" in "cleave-provision: error: "*) ;; *) fail "'$*' bad error prefix: $err" ;; esac
}

help="$("$bin" --help)" || fail "--help exited non-zero"
for topic in "One CA per deployment" "localhost, 127.0.0.1" "CN is the hospital's name" \
             "Keep ca.key offline" "--add-client" "--force"; do
  grep -qF -- "$topic" <<<"$help" || fail "--help does not mention '$topic'"
done

out="$("$bin" --out "$dir/pki" --client st-mary --server-name split.example.org)"
for f in ca.crt ca.key server.crt server.key clients/st-mary.crt clients/st-mary.key; do
  [ -f "$dir/pki/$f" ] || fail "missing $f"
  grep -qF "wrote $dir/pki/$f" <<<"$out" || fail "did not report $f: $out"
done
for f in ca.key server.key clients/st-mary.key; do
  [ "$(mode "$dir/pki/$f")" = 600 ] || fail "$f is not 0600"
  grep -q "BEGIN PRIVATE KEY" "$dir/pki/$f" || fail "$f is not a PEM key"
done
for f in ca.crt server.crt clients/st-mary.crt; do
  [ "$(mode "$dir/pki/$f")" = 644 ] || fail "$f is not 0644"
  grep -q "BEGIN CERTIFICATE" "$dir/pki/$f" || fail "$f is not a PEM certificate"
done
[ "$(mode "$dir/pki")" = 700 ] || fail "the output directory is not 0700"
[ "$(mode "$dir/pki/clients")" = 700 ] || fail "clients/ is not 0700"

# Refusal: nothing is written, not even the files that did not exist yet.
before="$(md5sum "$dir/pki/ca.key")"
expect_user_error --out "$dir/pki" --client st-mary --client riverside
grep -q "refusing to overwrite" <<<"$err" || fail "no clear refusal: $err"
[ "$before" = "$(md5sum "$dir/pki/ca.key")" ] || fail "refusal changed ca.key"
[ ! -e "$dir/pki/clients/riverside.crt" ] || fail "refusal still wrote riverside.crt"

"$bin" --out "$dir/pki" --add-client riverside >/dev/null
[ -f "$dir/pki/clients/riverside.crt" ] || fail "--add-client wrote nothing"
[ "$(mode "$dir/pki/clients/riverside.key")" = 600 ] || fail "riverside.key is not 0600"
[ "$before" = "$(md5sum "$dir/pki/ca.key")" ] || fail "--add-client changed the CA"
if command -v openssl >/dev/null; then  # independent check of the chain, where available
  openssl verify -CAfile "$dir/pki/ca.crt" "$dir/pki/clients/riverside.crt" >/dev/null ||
    fail "riverside.crt does not verify against ca.crt"
fi
expect_user_error --out "$dir/pki" --add-client riverside
grep -q "clients/riverside.crt' exists" <<<"$err" || fail "no clear refusal: $err"

# --add-client needs a usable CA, and says which file is wrong.
expect_user_error --out "$dir/none" --add-client x
grep -qF "$dir/none/ca.crt" <<<"$err" || fail "missing CA not named: $err"
"$bin" --out "$dir/other" >/dev/null
cp "$dir/other/ca.key" "$dir/pki/ca.key"
expect_user_error --out "$dir/pki" --add-client y
grep -qF "$dir/pki/ca.key" <<<"$err" || fail "mismatched ca.key not named: $err"

expect_user_error --out "$dir/bad" --client 'bad name!'
expect_user_error --out "$dir/bad" --client a --client a
expect_user_error --out "$dir/bad" --days 0
expect_user_error --out "$dir/bad" --add-client a --client b
expect_user_error --client a
expect_user_error --out "$dir/bad" --bogus
[ ! -e "$dir/bad" ] || fail "a refused run created $dir/bad"
echo "provision_cli_test: ok"
