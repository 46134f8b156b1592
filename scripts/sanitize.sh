#!/usr/bin/env bash
# Builds the pure C++ core (no Python, no CUDA) with its unit tests (tests/cpp/core_tests.cc) and
# runs them. By default the build is ASan + UBSan in Debug (so MLSERVE_CHECK asserts are live) in
# build/asan; any sanitizer report, leak or test failure makes the script exit non-zero.
#
#   scripts/sanitize.sh                  # sanitizer build in build/asan (what CI runs)
#   scripts/sanitize.sh --no-sanitize    # plain optimized build in build/cpp, same tests
#   scripts/sanitize.sh [...] FILTER     # run only tests whose name contains FILTER
#
# cmake and ninja come from PATH, else from the project's .venv/bin. Takes under a minute on two
# cores from a clean build dir; rebuilds are incremental.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

sanitize=ON
filter=""
for arg in "$@"; do
  case "$arg" in
    --no-sanitize) sanitize=OFF ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "sanitize.sh: unknown option '$arg' (see --help)" >&2; exit 2 ;;
    *) filter="$arg" ;;
  esac
done

find_tool() {
  if command -v "$1" >/dev/null 2>&1; then
    command -v "$1"
  elif [[ -x "$root/.venv/bin/$1" ]]; then
    echo "$root/.venv/bin/$1"
  else
    echo "sanitize.sh: '$1' not found on PATH nor in .venv/bin; pip install $1" >&2
    exit 2
  fi
}
cmake_bin="$(find_tool cmake)"
ninja_bin="$(find_tool ninja)"

if [[ "$sanitize" == ON ]]; then
  build_dir=build/asan
  build_type=Debug
else
  build_dir=build/cpp
  build_type=Release
fi

start=$SECONDS
"$cmake_bin" -S . -B "$build_dir" -G Ninja -DCMAKE_MAKE_PROGRAM="$ninja_bin" \
  -DMLSERVE_BUILD_PYTHON=OFF -DMLSERVE_BUILD_TESTS=ON -DMLSERVE_SANITIZE="$sanitize" \
  -DMLSERVE_CUDA=OFF -DCMAKE_BUILD_TYPE="$build_type" >/dev/null
"$cmake_bin" --build "$build_dir" --target core_tests

log="$build_dir/core_tests.log"
echo "== running $build_dir/core_tests ${filter:+(filter '$filter') }=="
set +e
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  "$build_dir/core_tests" ${filter:+"$filter"} 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e

# halt_on_error / abort_on_error already make reports fatal; the grep also catches any report a
# sanitizer could print without changing the exit status.
if grep -qE 'runtime error:|ERROR: (Address|Leak)Sanitizer|SUMMARY: (Address|UndefinedBehavior|Leak)Sanitizer' "$log"; then
  echo "sanitize.sh: sanitizer report in $log" >&2
  [[ "$status" == 0 ]] && status=1
fi
echo "== core_tests exit status $status ($((SECONDS - start)) s, sanitize=$sanitize, $build_type)"
exit "$status"
