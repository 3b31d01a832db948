#!/usr/bin/env bash
# Fails when a function in production code is longer than MAX_LINES (80) lines, one line per
# offender: "<lines> <file>:<first line> <function>". Production code is src/ and include/ of the
# libraries and tools; tests, benchmarks and fuzzers are not checked. Function extents come from
# universal-ctags (the `end:` field; CUDA sources are read as C++); a lambda is reported on its
# own and also counts towards the function that holds it.
set -euo pipefail
cd "$(dirname "$0")/.."
MAX_LINES="${MAX_LINES:-80}"

command -v ctags >/dev/null && ctags --version 2>/dev/null | grep -q "Universal Ctags" || {
  echo "check_function_length: needs universal-ctags (scripts/setup.sh installs it)" >&2
  exit 2
}

dirs=()
for d in core psi kernels compress privacy protocol client server tools; do
  [ -d "$d" ] && dirs+=("$d")
done

offenders=$(
  ctags --fields=+ne --kinds-C++=f -f - -R --languages=C++ --langmap=C++:+.cu --exclude='*/tests/*' \
    --exclude='*/bench/*' --exclude='*/fuzz/*' "${dirs[@]}" |
    awk -F'\t' -v max="$MAX_LINES" '
      $2 ~ /(^|\/)(tests|bench|fuzz)\// { next }
      {
        ln = ""; en = ""
        for (i = 4; i <= NF; i++) {
          if ($i ~ /^line:/) ln = substr($i, 6)
          if ($i ~ /^end:/) en = substr($i, 5)
        }
        if (ln != "" && en != "" && en - ln + 1 > max) print en - ln + 1, $2 ":" ln, $1
      }' |
    sort -k2
)
if [ -n "$offenders" ]; then
  echo "$offenders"
  echo "check_function_length: $(echo "$offenders" | wc -l) function(s) over $MAX_LINES lines" \
    "(split them by concern)" >&2
  exit 1
fi
echo "check_function_length: no function over $MAX_LINES lines"
