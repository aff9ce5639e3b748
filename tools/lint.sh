#!/usr/bin/env bash
# Static checks (docs/design.md, "Static checks"): ruff on the whole tree, mypy on the
# package as it is installed (cvmigrate.common, cvmigrate.agent, ...) plus bench/, tests/ and tools/.
# The rule sets live in pyproject.toml ([tool.ruff], [tool.mypy]).
#
#   tools/lint.sh              # exit 1 on any finding
#   tools/lint.sh --summary    # findings per rule and per top-level folder; exit 0
#
# Needs the lint extra: pip install -e '.[lint]' (the test extra includes it).
# PYTHON selects the interpreter (default: python).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
py=${PYTHON:-python}
summary=0
[ "${1:-}" = "--summary" ] && summary=1

# mypy cannot read setuptools' package-dir mapping (cvmigrate.common -> common/, ...), so it
# checks a shadow tree of symlinks laid out as the installed package; its paths are mapped back.
cache="$root/.mypy_cache"
shadow="$cache/shadow"
rm -rf "$shadow"
mkdir -p "$shadow/cvmigrate"
ln -s "$root"/cvmigrate/*.py "$shadow/cvmigrate/"
for pkg in common agent receiver controller; do
    ln -s "$root/$pkg" "$shadow/cvmigrate/$pkg"
done
ln -s "$root/proto/cvmigrate/proto" "$shadow/cvmigrate/proto"
ln -s "$root/bench" "$shadow/bench"
ln -s "$root/tests" "$shadow/tests"
tool_modules=()
for f in "$root"/tools/*.py; do          # scripts: checked as top-level modules
    ln -s "$f" "$shadow/"
    name=$(basename "$f" .py)
    tool_modules+=(-m "$name")
done

run_ruff() {
    "$py" -m ruff check --output-format concise --no-fix "$root"
}
run_mypy() {
    (cd "$shadow" && "$py" -m mypy --config-file "$root/pyproject.toml" --cache-dir "$cache" \
        --no-error-summary -p cvmigrate -p bench -p tests "${tool_modules[@]}") |
        sed -E -e 's#^cvmigrate/proto/#proto/cvmigrate/proto/#' \
               -e 's#^cvmigrate/(common|agent|receiver|controller)/#\1/#' \
               -e 's#^([a-z_]+\.py:)#tools/\1#'
}

ruff_out=$(run_ruff 2>&1)
ruff_rc=$?
mypy_out=$(run_mypy 2>&1)
mypy_rc=${PIPESTATUS[0]}

if [ "$summary" = 1 ]; then
    # ruff: "path:line:col: CODE message"; mypy: "path:line: error: message  [code]"
    ruff_lines=$(printf '%s\n' "$ruff_out" | grep -E '^[^ ]+:[0-9]+:[0-9]+: [A-Z]+[0-9]+ ' || true)
    mypy_lines=$(printf '%s\n' "$mypy_out" | grep -E '^[^ ]+:[0-9]+: error: ' || true)
    echo "== ruff: $(printf '%s' "$ruff_lines" | grep -c . ) finding(s)"
    echo "-- per rule"
    printf '%s\n' "$ruff_lines" | awk 'NF {print $2}' | sort | uniq -c | sort -rn
    echo "-- per top-level folder"
    printf '%s\n' "$ruff_lines" | awk -F/ 'NF {print ($1 == "tests" ? $1 "/" $2 : $1)}' | sed 's/:.*//' |
        sort | uniq -c | sort -rn
    echo "== mypy: $(printf '%s' "$mypy_lines" | grep -c . ) finding(s)"
    echo "-- per code"
    printf '%s\n' "$mypy_lines" | sed -nE 's/.*\[([a-z-]+)\]$/\1/p' | sort | uniq -c | sort -rn
    echo "-- per top-level folder"
    printf '%s\n' "$mypy_lines" | awk -F/ 'NF {print ($1 == "tests" ? $1 "/" $2 : $1)}' | sed 's/:.*//' |
        sort | uniq -c | sort -rn
    echo "-- per module"
    printf '%s\n' "$mypy_lines" | awk -F: 'NF {print $1}' | sort | uniq -c | sort -rn
    exit 0
fi

[ -n "$ruff_out" ] && printf '%s\n' "$ruff_out"
[ -n "$mypy_out" ] && printf '%s\n' "$mypy_out"
if [ "$ruff_rc" -ne 0 ] || [ "$mypy_rc" -ne 0 ]; then
    echo "lint: findings above (ruff exit $ruff_rc, mypy exit $mypy_rc); see docs/design.md, 'Static checks'" >&2
    exit 1
fi
echo "lint: ruff and mypy found nothing"
