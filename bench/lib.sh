# shellcheck shell=bash
# Helpers shared by bench/run.sh and bench/lowrank.sh (sourced, not run).
#
# Environment:
#   FX_BIN          absolute path of the built tools (make bench sets it)
#   FX_BENCH_CACHE  where generated inputs are kept between runs
#                   (default build/bench-cache); temporaries go to a work
#                   folder inside it that is removed at exit
#   FX_BENCH_ROWS   the summary table's rows (TSV); run.sh sets it so that
#                   lowrank.sh adds its rows to the one table
#
# Peak memory: with GNU time installed (/usr/bin/time, Debian package `time`)
# "peak RSS" is its maximum resident set size; without it, the highest VmHWM
# seen while polling /proc/PID/status every 0.1 s. Nothing is installed
# silently; to get the exact numbers run, once:
#     apt-get install -y time
# In both cases the peak of RssAnon (anonymous memory: heap, not the pages of
# mmapped input files, which the kernel can drop at any time) is sampled too.

[[ -n ${FX_BENCH_LIB_LOADED:-} ]] && return 0
FX_BENCH_LIB_LOADED=1

if [[ -z ${FX_BIN:-} ]]; then
	echo "bench: FX_BIN is not set (use 'make bench', or FX_BIN=\$PWD/build/bin bash bench/run.sh)" >&2
	exit 2
fi
[[ -d $FX_BIN ]] || { echo "bench: FX_BIN '$FX_BIN' is not a directory (build the tools first: make tools)" >&2; exit 2; }

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${FX_BENCH_CACHE:-build/bench-cache}
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd -P)
NPROC=$(nproc 2>/dev/null || echo 1)
export FX_HASH_CACHE=$CACHE/.fx-hash-cache
TIME_BIN=
[[ -x /usr/bin/time ]] && /usr/bin/time -v true >/dev/null 2>&1 && TIME_BIN=/usr/bin/time

# The work folder: outputs and I/O-floor copies, removed at exit.
if [[ -z ${BENCH_WORK:-} ]]; then
	BENCH_WORK=$(mktemp -d "$CACHE/work.XXXXXX")
	BENCH_WORK_OWNER=$$
	trap 'bench_cleanup' EXIT
	trap 'exit 130' INT TERM
fi
bench_cleanup() {
	if [[ ${BENCH_WORK_OWNER:-} == "$$" && -d ${BENCH_WORK:-} ]]; then
		rm -rf -- "$BENCH_WORK"
		forget_hashes "$BENCH_WORK/"
	fi
}

# forget_hashes PREFIX: drop the hash-cache entries of files under PREFIX.
forget_hashes() {
	[[ -f $FX_HASH_CACHE ]] || return 0
	grep -vF " $1" "$FX_HASH_CACHE" >"$FX_HASH_CACHE.tmp" || true
	mv -f -- "$FX_HASH_CACHE.tmp" "$FX_HASH_CACHE"
}

die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }
note() { printf '  %s\n' "$*"; }
section() { printf '\n== %s\n' "$*"; }

# calc EXPR [FORMAT]: floating point arithmetic.
calc() { awk -v f="${2:-%.3f}" "BEGIN { printf f, $1 }"; }

# Human sizes from KiB / bytes.
kib_h() { [[ $1 =~ ^[0-9]+$ ]] || { printf 'n/a'; return; }; calc "$1/1048576" '%.2f GiB'; }
bytes_h() { calc "$1/1e9" '%.2f GB'; }
secs_h() {
	awk -v s="$1" 'BEGIN { if (s >= 3600) printf "%.1f h", s/3600;
		else if (s >= 120) printf "%.1f min", s/60; else printf "%.2f s", s }'
}

# file_bytes FILE...: total size.
file_bytes() { local t=0 f; for f in "$@"; do t=$((t + $(stat -c %s "$f"))); done; echo "$t"; }

# cpu_of NAME: user + system seconds of the last measure NAME (GNU time), else its wall time.
cpu_of() {
	local tf=$BENCH_WORK/$1.time
	if [[ -s $tf ]] && grep -q 'User time' "$tf"; then
		awk -F': ' '/User time|System time/ { s += $2 } END { printf "%.3f", s }' "$tf"
	else
		echo "$M_SEC"
	fi
}

# measure NAME CMD...: runs CMD (stdout+stderr to $BENCH_WORK/NAME.log) and sets
#   M_SEC     wall time in seconds
#   M_RSS_KB  peak RSS (GNU time's maximum, or the polled VmHWM)
#   M_ANON_KB peak RssAnon seen while polling
#   M_RC      exit status (0 unless BENCH_ALLOW_FAIL=1; otherwise a failure
#             prints the log's tail and exits)
measure() {
	local name=$1; shift
	local log=$BENCH_WORK/$name.log tf=$BENCH_WORK/$name.time
	local pid tgt kids s state line k v t0 t1 anon=0 hwm=0 sum todo
	M_RC=0
	t0=$(date +%s%N)
	if [[ -n $TIME_BIN ]]; then
		"$TIME_BIN" -v -o "$tf" "$@" >"$log" 2>&1 &
	else
		"$@" >"$log" 2>&1 &
	fi
	pid=$!
	# Poll with shell built-ins only (no process per sample) every 0.1 s.
	while :; do
		s=
		{ read -r s <"/proc/$pid/stat"; } 2>/dev/null || true
		s=${s##*) }
		state=${s%% *}
		[[ -z $state || $state == Z || $state == X ]] && break
		# the tool and whatever it runs under (GNU time, timeout): RssAnon
		# summed over the process tree, the highest VmHWM in it
		sum=0
		todo=$pid
		while [[ -n $todo ]]; do
			tgt=${todo%% *}
			todo=${todo#"$tgt"}
			todo=${todo# }
			kids=
			{ read -r kids <"/proc/$tgt/task/$tgt/children"; } 2>/dev/null || true
			[[ -n ${kids// /} ]] && todo="$todo${todo:+ }${kids% }"
			{ while read -r k v _; do
				case $k in
				RssAnon:) sum=$((sum + v)) ;;
				VmHWM:) ((v > hwm)) && hwm=$v ;;
				esac
			done <"/proc/$tgt/status"; } 2>/dev/null || true
		done
		((sum > anon)) && anon=$sum
		sleep 0.1
	done
	wait "$pid" || M_RC=$?
	t1=$(date +%s%N)
	M_SEC=$(calc "($t1 - $t0) / 1e9")
	M_ANON_KB=$anon
	M_RSS_KB=$hwm
	if [[ -n $TIME_BIN && -s $tf ]]; then
		line=$(grep 'Maximum resident set size' "$tf" || true)
		[[ -n $line ]] && M_RSS_KB=${line##*: }
	fi
	((M_RSS_KB > 0)) || M_RSS_KB=n/a
	if ((M_RC != 0)) && [[ ${BENCH_ALLOW_FAIL:-0} != 1 ]]; then
		printf 'bench: error: %s failed (exit %s): %s\n' "$name" "$M_RC" "$*" >&2
		tail -n 20 "$log" >&2
		exit 1
	fi
	return 0
}

# detail NAME [EXTRA]: one line for the last measure.
detail() {
	printf '  %-28s %10s  peak RSS %-10s (anon %s)%s\n' "$1" "$(secs_h "$M_SEC")" \
		"$(kib_h "$M_RSS_KB")" "$(kib_h "$M_ANON_KB")" "${2:+  $2}"
}

# cached_model KEY FX-SYNTH-ARGS...: a fx-synth model folder in the cache,
# generated once; regenerated when the arguments or fx-synth's version change.
# Prints the folder. With --cond FILE in the arguments, FILE is relative to the
# folder (it is written inside it).
cached_model() {
	local key=$1; shift
	local dir=$CACHE/$key stamp want
	want="$("$FX_BIN/fx-synth" --version 2>&1 | head -n 1) | $*"
	stamp=$dir/.bench-stamp
	if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
		echo "$dir"
		return 0
	fi
	rm -rf -- "$dir"
	forget_hashes "$dir/"
	mkdir -p "$dir"
	printf '  generating %s (once; cached in %s) ...\n' "$key" "$CACHE" >&2
	(cd "$dir" && "$FX_BIN/fx-synth" -q -o model "$@") >&2 ||
		die "fx-synth $* failed"
	printf '%s\n' "$want" >"$stamp"
	echo "$dir"
}

# need_space GB: fail early when the cache's file system is short of space.
need_space() {
	local avail
	avail=$(df -Pk "$CACHE" | awk 'NR == 2 { print $4 }')
	((avail > $1 * 1048576)) ||
		die "need about $1 GB free under $CACHE (have $(calc "$avail/1048576" '%.1f') GB)"
}

# warm FILE...: read files once so that timed runs read from the page cache
# (this machine's kernel reclaims cold file pages on its own), and say how
# much of them is cached now when fincore (util-linux) is there.
warm() {
	local res total
	cat -- "$@" >/dev/null
	if command -v fincore >/dev/null 2>&1; then
		res=$(fincore --bytes --noheadings -o RES -- "$@" 2>/dev/null | awk '{ s += $1 } END { print s + 0 }')
		total=$(file_bytes "$@")
		note "inputs warmed: $(calc "100 * $res / $total" '%.0f') % in the page cache"
	fi
}

# Other processes compete for the 2 cores (other sessions' builds and tests
# run on the same machine): cpu_mark before a benchmark, cpu_report after it
# tells how many cores others used meanwhile (all CPU time of the machine less
# this shell's own and its waited-for children's) and warns when the numbers
# are contaminated.
HZ=$(getconf CLK_TCK 2>/dev/null || echo 100)
cpu_busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8; exit }' /proc/stat; }
# cpu_own_sec: CPU seconds of this shell and its waited-for children, into
# CPU_OWN (`times` must run in this shell, not in a $(...) subshell).
cpu_own_sec() {
	times >"$BENCH_WORK/times.$$"
	CPU_OWN=$(awk '{ for (i = 1; i <= NF; i++) { split($i, a, /[ms]/); s += a[1] * 60 + a[2] } } END { printf "%.2f", s }' "$BENCH_WORK/times.$$")
}
cpu_mark() {
	CPU_MARK_T=$(date +%s%N)
	CPU_MARK_BUSY=$(cpu_busy_ticks)
	cpu_own_sec
	CPU_MARK_OWN=$CPU_OWN
}
CPU_WORST=0
cpu_report() {
	local wall others
	wall=$(calc "($(date +%s%N) - $CPU_MARK_T) / 1e9")
	cpu_own_sec
	others=$(calc "(($(cpu_busy_ticks) - $CPU_MARK_BUSY) / $HZ - ($CPU_OWN - $CPU_MARK_OWN)) / $wall" '%.2f')
	awk -v o="$others" 'BEGIN { exit !(o < 0) }' && others=0.00
	awk -v o="$others" -v w="$CPU_WORST" 'BEGIN { exit !(o > w) }' && CPU_WORST=$others
	if awk -v o="$others" 'BEGIN { exit !(o > 0.15) }'; then
		note "WARNING: other processes kept $others of the $NPROC cores busy during $1: these timings are contaminated, run again on a quiet machine"
	else
		note "machine quiet during $1 (other processes: $others cores)"
	fi
}

# prime_hash MODEL_DIR: make the tools' content-hash cache of the model valid
# (as after the pipeline's first stage), so a timed run does not include
# hashing the whole model once. The bench keeps its own hash cache in the
# cache folder (the tools default to one beside their outputs, and the
# outputs here go to the work folder, removed at exit).
prime_hash() {
	local m=$1 f missing=0
	for f in "$m"/*.safetensors; do
		grep -qsF " $(readlink -f "$f")" "$FX_HASH_CACHE" || missing=1
	done
	if ((missing)); then
		"$FX_BIN/fx-quant" -q --model "$m" --precision fp4 --blocks 0-0 \
			-o "$BENCH_WORK/prime.safetensors" --force >/dev/null 2>&1 || true
		rm -f "$BENCH_WORK/prime.safetensors"
	fi
}

# row STAGE WORK TIME THROUGHPUT RATIO BASELINE RSS TARGET: one table row.
BENCH_ROWS_OWNER=
if [[ -z ${FX_BENCH_ROWS:-} ]]; then
	FX_BENCH_ROWS=$BENCH_WORK/rows.tsv
	: >"$FX_BENCH_ROWS"
	BENCH_ROWS_OWNER=$$
	export FX_BENCH_ROWS
fi
row() {
	local IFS=$'\t'
	printf '%s\n' "$*" >>"$FX_BENCH_ROWS"
}

print_table() {
	printf '\n'
	awk -F '\t' '
	BEGIN { n = 0; split("stage|work size|time|throughput|ratio|ratio is to|peak RSS|target", h, "|")
		for (i = 1; i <= 8; i++) { c[0, i] = h[i]; w[i] = length(h[i]) } }
	{ n++; for (i = 1; i <= 8; i++) { c[n, i] = $i; if (length($i) > w[i]) w[i] = length($i) } }
	END {
		for (r = 0; r <= n; r++) {
			line = ""
			for (i = 1; i <= 8; i++) line = line sprintf("%-" w[i] "s", c[r, i]) (i < 8 ? " | " : "")
			print line
			if (r == 0) { line = ""; for (i = 1; i <= 8; i++) { s = sprintf("%" w[i] "s", ""); gsub(/ /, "-", s); line = line s (i < 8 ? "-+-" : "") } print line }
		}
	}' "$FX_BENCH_ROWS"
}
