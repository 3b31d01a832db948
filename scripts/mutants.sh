#!/usr/bin/env bash
# Mutation check: breaks the source on purpose, one named mutation at a time, in a scratch copy of
# the tree, rebuilds only the test binary that should notice, runs it, and reports whether the
# tests caught the break. A mutant the tests miss is a promise no test protects.
#
#   scripts/mutants.sh                 # every mutant
#   scripts/mutants.sh NAME...         # only these
#   scripts/mutants.sh --list          # names, files and tests
#
# Each mutant is (name, file, exact original snippet, replacement, test binary, gtest filter); the
# snippet must occur exactly once in the file, or the script stops before building anything (the
# code moved: update the mutant). Exit status: 0 if every mutant was caught, 1 if any was missed
# or did not compile, 2 on setup errors (stale snippet, the tests failing without any mutant).
#
# Environment: MUTANTS_DIR (scratch, default build-mutants/ in the repository, reused between
# runs), JOBS (build parallelism, default 2), MUTANT_TIMEOUT (seconds per test run, default 600).
# Run on demand, not in CI: each mutant recompiles one file and relinks one test binary.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
scratch="${MUTANTS_DIR:-$root/build-mutants}"
jobs="${JOBS:-2}"
timeout_s="${MUTANT_TIMEOUT:-600}"

names=() files=() originals=() replacements=() targets=() filters=()
# mutant NAME FILE TARGET FILTER ORIGINAL REPLACEMENT
mutant() {
  names+=("$1"); files+=("$2"); targets+=("$3"); filters+=("$4")
  originals+=("$5"); replacements+=("$6")
}

# --- The four breaks of issue 17 -------------------------------------------------------------
mutant stale-update-scale server/src/round_coordinator.cc server_tests '*' \
  '1.0 / (1.0 + static_cast<double>(update.staleness))});' \
  '1.0});'
mutant stale-step-lr-scale server/src/top_model.cc server_tests '*' \
  'if (scale != 1.0) parameter.sub_(before[i]).mul_(scale).add_(before[i]);' \
  '(void)scale;'
mutant client-ignores-gradient client/src/split_trainer.cc client_tests '*GradientStep*' \
  '    activations.backward(gradient);' \
  '    activations.backward(at::zeros_like(gradient));'
mutant private-file-no-fchmod core/src/file_io.cc core_tests '*' \
  '  if (::fchmod(fd, mode) != 0) AbandonTemp(fd, temp, path, "chmod");' \
  ''

# --- compress/ ---------------------------------------------------------------------------------
mutant codec-varint-index-bound compress/src/sparse_codec.cc codec_tests '*' \
  'CLEAVE_CHECK_INPUT(delta < out.dense_numel && index < out.dense_numel, "index ", index,' \
  'CLEAVE_CHECK_INPUT(delta <= out.dense_numel && index <= out.dense_numel, "index ", index,'
mutant codec-bitmap-bound compress/src/sparse_codec.cc codec_tests '*' \
  'CLEAVE_CHECK_INPUT(index < out.dense_numel, "bitmap sets bit ", index,' \
  'CLEAVE_CHECK_INPUT(index <= out.dense_numel, "bitmap sets bit ", index,'
mutant codec-count-bound compress/src/sparse_codec.cc codec_tests '*' \
  'CLEAVE_CHECK_INPUT(count <= out.dense_numel, "count ", count, " exceeds dense size ",' \
  'CLEAVE_CHECK_INPUT(count <= out.dense_numel + 1, "count ", count, " exceeds dense size ",'
mutant codec-skips-finiteness compress/src/sparse_codec.cc codec_tests '*' \
  'if (!allow_nonfinite && !std::isfinite(value)) {' \
  'if (false) {'
mutant fp16-round-half-up compress/src/sparse_codec.cc codec_tests '*' \
  'if (remainder > 0x1000u || (remainder == 0x1000u && (half & 1u))) ++half;' \
  'if (remainder >= 0x1000u) ++half;'
mutant error-feedback-drops-residual compress/src/compressor.cc compress_tests '*' \
  'residual = accumulated;  // a fresh tensor: zero the sent entries in place' \
  'residual = at::zeros_like(accumulated);'
mutant error-feedback-keeps-sent compress/src/compressor.cc compress_tests '*' \
  'for (uint32_t index : selection.indices) data[index] = 0.0f;' \
  'for (uint32_t index : selection.indices) (void)index;'
mutant target-count-truncates compress/src/compressor.cc compress_tests '*' \
  'std::llround(config_.density * static_cast<double>(numel))' \
  'static_cast<int64_t>(config_.density * static_cast<double>(numel))'

# --- protocol/ ---------------------------------------------------------------------------------
mutant max-abs-ignored protocol/src/tensor_message.cc protocol_tests '*' \
  '  if (max_abs <= 0) return;' \
  '  return;'
mutant dense-skips-finiteness protocol/src/tensor_message.cc protocol_tests '*' \
  '        CheckFinite(out.dense.data_ptr<float>(), numel);' \
  ''
mutant batch-bound-off-by-one protocol/src/tensor_message.cc protocol_tests '*' \
  'shape[0] >= 1 && shape[0] <= spec.max_batch' \
  'shape[0] >= 1 && shape[0] <= spec.max_batch + 1'
mutant label-bound-off-by-one protocol/src/tensor_message.cc protocol_tests '*' \
  'data[i] >= 0 && data[i] < spec.int_upper_bound' \
  'data[i] >= 0 && data[i] <= spec.int_upper_bound'
mutant sparse-gradient-ignores-positions protocol/src/gradient_codec.cc protocol_tests '*' \
  'const uint32_t position = positions ? (*positions)[sparse.indices[i]] : sparse.indices[i];' \
  'const uint32_t position = sparse.indices[i];'

# --- server/ -----------------------------------------------------------------------------------
mutant samples-not-capped server/src/round_coordinator.cc server_tests '*' \
  'PendingUpdate{std::min(samples, counted), outcome.staleness, flat.contiguous().clone()});' \
  'PendingUpdate{samples, outcome.staleness, flat.contiguous().clone()});'
mutant duplicate-update-applied-twice server/src/round_coordinator.cc server_tests '*' \
  'last->second >= round' \
  'last->second > round'
mutant stale-step-not-refused server/src/round_coordinator.cc server_tests '*' \
  '  if (staleness > options_.max_staleness) {' \
  '  if (false) {'
mutant not-in-round-is-fatal server/src/status_mapping.cc server_tests '*' \
  '    case RefusalKind::kNotInRound:' \
  '    case RefusalKind::kNotInRound: return grpc::StatusCode::FAILED_PRECONDITION;'
mutant session-owner-not-checked server/src/session_table.cc server_tests '*' \
  '  if (it->second.identity != identity) {' \
  '  if (false) {'
mutant nonfinite-step-committed server/src/top_model.cc server_tests '*' \
  '  if (!finite) {' \
  '  if (false) {'
mutant nonfinite-loss-stepped server/src/top_model.cc server_tests '*' \
  '    if (!std::isfinite(step.loss)) {' \
  '    if (false) {'

# --- client/ -----------------------------------------------------------------------------------
mutant per-sample-offset-lost protocol/src/activation_codec.cc protocol_tests '*' \
  'for (uint32_t index : selection.indices) indices.push_back(offset + index);' \
  'for (uint32_t index : selection.indices) indices.push_back(index);'
mutant resync-keeps-stale-version client/src/round_participant.cc client_tests 'RoundParticipant*' \
  '        have_version = -1;' \
  ''
mutant reconnects-unbounded client/src/round_participant.cc client_tests 'RoundParticipant*' \
  '      if (++failures >= options_.max_reconnects) throw;' \
  '      if (++failures >= 1000 * options_.max_reconnects) throw;'
mutant fatal-mismatch-resyncs client/src/round_participant.cc client_tests 'RoundParticipant*' \
  'bool Resynchronises(const StatusError& error) { return error.code() == grpc::StatusCode::ABORTED; }' \
  'bool Resynchronises(const StatusError& error) { return error.code() == grpc::StatusCode::ABORTED || error.code() == grpc::StatusCode::FAILED_PRECONDITION; }'

# --- privacy/ ----------------------------------------------------------------------------------
mutant dcor-no-double-centring privacy/src/distance_correlation.cc privacy_tests '*' \
  '  return distances - distances.mean(0, true) - distances.mean(1, true) + distances.mean();' \
  '  return distances;'
mutant dcor-squared-distances privacy/src/distance_correlation.cc privacy_tests '*' \
  '  return squared.clamp_min(kSquaredDistanceFloor).sqrt();' \
  '  return squared.clamp_min(kSquaredDistanceFloor);'
mutant dcor-no-distance-floor privacy/src/distance_correlation.cc privacy_tests '*' \
  '  return squared.clamp_min(kSquaredDistanceFloor).sqrt();' \
  '  return squared.clamp_min(0).sqrt();'
mutant dcor-u-centring-normaliser privacy/src/distance_correlation.cc privacy_tests '*' \
  'const at::Tensor total = d.sum() / ((n - 1) * (n - 2));' \
  'const at::Tensor total = d.sum() / ((n - 1) * (n - 1));'

# --- core/ -------------------------------------------------------------------------------------
mutant checkpoint-saves-nonfinite core/src/checkpoint.cc core_tests '*' \
  'CLEAVE_CHECK_USER(IsFinite(item.value()), refuse, "parameter '"'"'", item.key(),' \
  'CLEAVE_CHECK_USER(true, refuse, "parameter '"'"'", item.key(),'

# ------------------------------------------------------------------------------------------------

if [ "${1:-}" = "--list" ]; then
  for i in "${!names[@]}"; do
    printf '%-32s %-40s %s --gtest_filter=%s\n' "${names[$i]}" "${files[$i]}" "${targets[$i]}" \
      "${filters[$i]}"
  done
  exit 0
fi

selected=()
if [ $# -gt 0 ]; then
  for want in "$@"; do
    found=""
    for i in "${!names[@]}"; do [ "${names[$i]}" = "$want" ] && { selected+=("$i"); found=1; }; done
    [ -n "$found" ] || { echo "mutants.sh: no mutant named '$want' (see --list)" >&2; exit 2; }
  done
else
  selected=("${!names[@]}")
fi

# Occurrences of a literal string in a file's text.
count_in() {
  local text="$1" needle="$2" n=0
  while [[ "$text" == *"$needle"* ]]; do
    text="${text#*"$needle"}"
    n=$((n + 1))
  done
  echo "$n"
}

# Every snippet must still be there, exactly once, before anything is built.
stale=0
for i in "${selected[@]}"; do
  f="$root/${files[$i]}"
  if [ ! -f "$f" ]; then
    echo "mutants.sh: ${names[$i]}: ${files[$i]} does not exist" >&2; stale=1; continue
  fi
  n="$(count_in "$(cat "$f"; printf x)" "${originals[$i]}")"
  if [ "$n" != 1 ]; then
    echo "mutants.sh: ${names[$i]}: the snippet occurs $n times in ${files[$i]} (expected once):" >&2
    echo "    ${originals[$i]}" >&2
    stale=1
  fi
done
[ "$stale" = 0 ] || { echo "mutants.sh: update the mutants above (the code moved)" >&2; exit 2; }

# The scratch tree: the repository's files as they are now (committed or not), refreshed on each
# run; its build directory is kept between runs, and ccache is shared with the main build. Only
# files whose content differs are copied, with a new time stamp: a file restored after a mutant
# keeps the time stamp that makes make rebuild it.
tree="$scratch/src"
stage="$scratch/stage"
rm -rf "$stage"
mkdir -p "$tree" "$stage"
(cd "$root" && git ls-files -z --cached --others --exclude-standard |
   tar --null -T - -cf - 2>/dev/null) | tar -xf - -C "$stage" || {
  echo "mutants.sh: cannot copy the tree into $stage" >&2; exit 2; }
while IFS= read -r -d '' file; do
  if ! cmp -s "$stage/$file" "$tree/$file"; then
    mkdir -p "$(dirname "$tree/$file")"
    cp "$stage/$file" "$tree/$file"
  fi
done < <(cd "$stage" && find . -type f -print0)
rm -rf "$stage"
# Files mutated by an earlier run (even one that was killed) are rebuilt from their restored text.
if [ -f "$scratch/mutated" ]; then
  while IFS= read -r file; do [ -f "$tree/$file" ] && touch "$tree/$file"; done <"$scratch/mutated"
  rm -f "$scratch/mutated"
fi
build="$tree/build"
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$(dirname "$root")}"
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S "$tree" -B "$build" -DCMAKE_BUILD_TYPE=Release -DCLEAVE_BUILD_BENCH=OFF \
  -DCLEAVE_ENABLE_CUDA=OFF "${launcher[@]}" >"$scratch/configure.log" 2>&1 || {
  echo "mutants.sh: configure failed, see $scratch/configure.log" >&2; exit 2; }

declare -A needed=()
for i in "${selected[@]}"; do needed["${targets[$i]}"]=1; done
echo "mutants.sh: building ${!needed[*]} in $build" >&2
cmake --build "$build" -j "$jobs" --target "${!needed[@]}" >"$scratch/build.log" 2>&1 || {
  echo "mutants.sh: the unmutated tree does not build, see $scratch/build.log" >&2; exit 2; }

# run_tests TARGET FILTER LOG: the test binary's exit status (124: timed out).
run_tests() {
  (cd "$build" && timeout "$timeout_s" "bin/$1" --gtest_filter="$2" --gtest_brief=1) >"$3" 2>&1
}

# Without any mutant every selected test must pass, or a failure would prove nothing.
declare -A baseline=()
for i in "${selected[@]}"; do
  key="${targets[$i]} ${filters[$i]}"
  [ -n "${baseline[$key]:-}" ] && continue
  baseline[$key]=1
  log="$scratch/baseline.log"
  if ! run_tests "${targets[$i]}" "${filters[$i]}" "$log"; then
    echo "mutants.sh: ${targets[$i]} --gtest_filter='${filters[$i]}' fails without any mutant:" >&2
    grep -aE '^\[  FAILED  \]|Failure$' "$log" | head -20 >&2
    exit 2
  fi
  if grep -q "0 tests from 0 test suites" "$log"; then
    echo "mutants.sh: ${targets[$i]} --gtest_filter='${filters[$i]}' runs no test" >&2
    exit 2
  fi
done

restore() { [ -n "${backup:-}" ] && [ -f "$backup" ] && { cp "$backup" "$target_file"; touch "$target_file"; rm -f "$backup"; }; }
trap restore EXIT

rows=()
missed=0
for i in "${selected[@]}"; do
  name="${names[$i]}"
  target_file="$tree/${files[$i]}"
  backup="$scratch/original.$$"
  cp "$target_file" "$backup"
  echo "${files[$i]}" >>"$scratch/mutated"
  text="$(cat "$target_file"; printf x)"
  text="${text%x}"
  printf '%s' "${text/"${originals[$i]}"/"${replacements[$i]}"}" >"$target_file"
  started=$SECONDS
  log="$scratch/$name.log"
  if ! cmake --build "$build" -j "$jobs" --target "${targets[$i]}" >"$log" 2>&1; then
    result="does not compile"
    missed=$((missed + 1))
  else
    run_tests "${targets[$i]}" "${filters[$i]}" "$log"
    code=$?
    case "$code" in
      0) result="**missed**"; missed=$((missed + 1)) ;;
      124) result="caught (timeout)" ;;
      *) result="caught" ;;
    esac
    # The failing tests, without instantiation prefixes and parameter suffixes.
    failing=()
    mapfile -t failing < <(grep -E '^\[  FAILED  \] [A-Za-z]' "$log" | grep -v ' listed below' |
      sed -E 's/^\[  FAILED  \] ([^ ,]+).*/\1/; s#^[A-Za-z0-9_]+/##; s#/[A-Za-z0-9_]+$##' |
      sort -u)
    if [ "${#failing[@]}" -gt 0 ]; then
      result="$result by ${failing[0]}"
      [ "${#failing[@]}" -gt 1 ] && result="$result (+$((${#failing[@]} - 1)))"
    fi
  fi
  restore
  seconds=$((SECONDS - started))
  rows+=("| \`$name\` | ${files[$i]} | ${targets[$i]} \`${filters[$i]}\` | $result | $seconds |")
  echo "mutants.sh: $name: $result (${seconds} s)" >&2
done
trap - EXIT

{
  echo "| mutant | file | tests | result | s |"
  echo "|---|---|---|---|---|"
  printf '%s\n' "${rows[@]}"
} | tee "$scratch/results.md"
[ "$missed" = 0 ] && exit 0 || exit 1
