#!/usr/bin/env bash
# Runs the unit tests (cmocka, TAP), the fuzz corpus replays and the CLI tests
# (bats, TAP); prints one closing line "N passed, N failed". A skipped test
# (TAP "# skip") counts in neither: the skips are listed before that line.
# Usage: tests/run.sh [unit|cli|all]   (FX_BIN, FX_TESTS set by the Makefile)
set -u
what=${1:-all}
here=$(cd "$(dirname "$0")" && pwd)
pass=0 fail=0
log=$(mktemp) skips=$(mktemp)
trap 'rm -f "$log" "$skips"' EXIT

count() {  # reads TAP on stdin, echoes it, updates counters
	local line
	while IFS= read -r line; do
		printf '%s\n' "$line"
		case "$line" in
		"not ok "*) fail=$((fail + 1)) ;;
		"ok "*" # skip"* | "ok "*" # SKIP"*) printf '%s\n' "$line" >>"$skips" ;;
		"ok "*) pass=$((pass + 1)) ;;
		esac
	done
}

run_tap() {  # name, command...: a crash without "not ok" still counts as a failure
	local name=$1 rc; shift
	"$@" >"$log" 2>&1; rc=$?
	local before=$fail
	count <"$log"
	if [ $rc -ne 0 ] && [ $fail -eq $before ]; then
		echo "not ok - $name exited $rc"
		fail=$((fail + 1))
	fi
}

export FX_GOLDEN="$here/golden" FX_TESTS_SRC="$here"

# The fixtures' scripts need numpy (.ci/deps installs python3-numpy for the
# system interpreter). A python3 earlier on PATH without it (pyenv, a venv)
# would fail them: put the first python3 that has numpy in front.
if ! python3 -c 'import numpy' 2>/dev/null; then
	for py in /usr/bin/python3 /usr/local/bin/python3; do
		if [ -x "$py" ] && "$py" -c 'import numpy' 2>/dev/null; then
			pydir=$(mktemp -d)
			ln -s "$py" "$pydir/python3"
			trap 'rm -f "$log" "$skips"; rm -rf "$pydir"' EXIT
			export PATH="$pydir:$PATH"
			echo "# python3 without numpy on PATH; the tests use $py"
			break
		fi
	done
fi
if [ "$what" = all ] || [ "$what" = unit ]; then
	for t in "$FX_TESTS"/test-*; do
		[ -x "$t" ] || continue
		echo "# unit: $(basename "$t")"
		CMOCKA_MESSAGE_OUTPUT=TAP run_tap "$(basename "$t")" "$t"
	done
	for t in "$FX_TESTS"/fuzz-*-replay; do
		[ -x "$t" ] || continue
		name=$(basename "$t" -replay)
		echo "# replay: $name"
		run_tap "$name" "$t" "$here/fuzz/corpus/${name#fuzz-}"
	done
fi
if [ "$what" = all ] || [ "$what" = cli ]; then
	if ls "$here"/cli/*.bats >/dev/null 2>&1; then
		echo "# cli: bats"
		PATH="$FX_BIN:$PATH" run_tap bats bats --tap "$here"/cli
	fi
fi
if [ -s "$skips" ]; then
	echo "# $(wc -l <"$skips") skipped (not counted as passed):"
	sed 's/^/#   /' "$skips"
fi
echo "$pass passed, $fail failed"
[ $fail -eq 0 ] && [ $pass -gt 0 ]
