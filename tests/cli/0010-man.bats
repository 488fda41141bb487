#!/usr/bin/env bats
# Man pages in man/: in sync with each tool's --help (every long option is
# documented, the SYNOPSIS is the usage line), lint-clean under mandoc, and
# every tool answers --version.

load helper

# every tool the tree builds (tools/fx-*.c)
TOOLS=($(cd "$BATS_TEST_DIRNAME/../../tools" && ls fx-*.c | sed 's/\.c$//'))
SECTIONS=("NAME" "SYNOPSIS" "DESCRIPTION" "OPTIONS" "FILES" "EXIT STATUS" "ENVIRONMENT"
	  "EXAMPLES" "SEE ALSO")

setup() {
	MAN=$BATS_TEST_DIRNAME/../../man
}

need_mandoc() {
	command -v mandoc >/dev/null 2>&1 || skip "mandoc not installed"
}

# The page's lines with roff's escaped minus \- turned into a plain '-'.
plain() {
	sed 's/\\-/-/g' "$1"
}

@test "every page exists: one per tool, fx(7) and fx-formats(5)" {
	for t in "${TOOLS[@]}"; do
		[ -s "$MAN/$t.1" ] || { echo "missing $MAN/$t.1"; return 1; }
	done
	[ -s "$MAN/fx.7" ]
	[ -s "$MAN/fx-formats.5" ]
}

@test "every tool page has the conventional sections and a matching .TH" {
	for t in "${TOOLS[@]}"; do
		p=$MAN/$t.1
		up=$(printf '%s' "$t" | tr a-z A-Z)
		grep -q "^\.TH $up 1 " "$p" || { echo "$p: no '.TH $up 1'"; return 1; }
		for s in "${SECTIONS[@]}"; do
			grep -qx "\.SH \"\{0,1\}$s\"\{0,1\}" "$p" || { echo "$p: no section $s"; return 1; }
		done
	done
	grep -q '^\.TH FX 7 ' "$MAN/fx.7"
	grep -q '^\.TH FX-FORMATS 5 ' "$MAN/fx-formats.5"
}

@test "every long option of every tool's --help is in its man page" {
	for t in "${TOOLS[@]}"; do
		run -0 "$t" --help
		opts=$(printf '%s\n' "$output" | grep -o -- '--[a-z][a-z-]*' | sort -u)
		[ -n "$opts" ]
		for o in $opts; do
			# as \-\-name or --name (an inner \- counts as -), not as a prefix of a longer name
			plain "$MAN/$t.1" | grep -qE -- "${o}([^a-z-]|\$)" ||
				{ echo "$t: $o is not in man/$t.1"; return 1; }
		done
	done
}

@test "every long option has its own entry in OPTIONS" {
	for t in "${TOOLS[@]}"; do
		run -0 "$t" --help
		opts=$(printf '%s\n' "$output" | grep -o -- '--[a-z][a-z-]*' | sort -u)
		# the tag lines of the OPTIONS section (the line after each .TP)
		tags=$(plain "$MAN/$t.1" | awk '/^\.SH /{on = ($0 ~ /^\.SH OPTIONS/)} on && tp {print} {tp = ($0 == ".TP")}')
		for o in $opts; do
			printf '%s\n' "$tags" | grep -qE -- "${o}([^a-z-]|\$)" ||
				{ echo "$t: no OPTIONS entry for $o in man/$t.1"; return 1; }
		done
	done
}

@test "the SYNOPSIS of each page names the tool" {
	for t in "${TOOLS[@]}"; do
		syn=$(plain "$MAN/$t.1" | awk '/^\.SH /{on = ($0 == ".SH SYNOPSIS"); next} on')
		printf '%s\n' "$syn" | grep -q -- "$t" || { echo "man/$t.1: SYNOPSIS does not name $t"; return 1; }
	done
}

@test "the rendered SYNOPSIS is the first line of --help" {
	need_mandoc
	for t in "${TOOLS[@]}"; do
		want=$("$t" --help | head -n 1 | sed 's/^usage: //' | tr -s ' ')
		# render without line wrapping, drop overstrike, keep the SYNOPSIS body
		got=$(mandoc -T ascii -O width=400 "$MAN/$t.1" | sed 's/.\x08//g' |
			awk '/^[A-Z]/{on = ($0 == "SYNOPSIS"); next} on' | tr -s ' \n' '  ' |
			sed 's/^ //; s/ $//')
		[ "$got" = "$want" ] || { printf '%s:\n  man:  %s\n  help: %s\n' "$t" "$got" "$want"; return 1; }
	done
}

@test "mandoc -Tlint -W warning reports nothing for any page" {
	need_mandoc
	for p in "$MAN"/*.1 "$MAN"/*.5 "$MAN"/*.7; do
		run mandoc -Tlint -W warning "$p"
		[ "$status" -eq 0 ] && [ -z "$output" ] || { echo "$p:"; echo "$output"; return 1; }
	done
}

@test "every tool's --version exits 0 and prints its name" {
	for t in "${TOOLS[@]}"; do
		run -0 --separate-stderr "$t" --version
		[[ "$output" == "$t "* ]] || { echo "$t --version printed '$output'"; return 1; }
		[ -z "$stderr" ]
	done
}

@test "every page's SEE ALSO refers to fx(7) or is fx(7) itself" {
	for p in "$MAN"/*.1 "$MAN"/*.5; do
		plain "$p" | awk '/^\.SH /{on = ($0 == ".SH \"SEE ALSO\"" || $0 == ".SH SEE ALSO"); next} on' |
			grep -q '^\.BR fx (7)' || { echo "$p: SEE ALSO lacks fx(7)"; return 1; }
	done
}
