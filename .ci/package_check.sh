#!/usr/bin/env bash
# Packaging check (CI runs it after the tests; also `make package-check`):
# from a clean copy of the repository (the files git tracks or would track,
# no build outputs),
#   1. `pip install .` into a fresh venv, then the README's short example there;
#   2. the Makefile's `pip install --no-build-isolation -e .` into another;
#   3. `python -m build` (sdist, then the wheel built from that sdist) with
#      MINIRES_NATIVE=0, the portable wheel; install it into another fresh
#      venv (numpy and the rest from the package index) and run the example.
# Fails on any warning in the three builds' output, on -march=native or AVX in the
# portable build, and on an example output that differs from the README's
# (except the errors' digits and where they peak, which vary with the CPU
# and the build flags).
# Everything happens in a temporary folder, removed at the end.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/minires-package-check.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
# "byte-compiling is disabled" is a warning about this environment, not the package
unset PYTHONDONTWRITEBYTECODE
export PIP_DISABLE_PIP_VERSION_CHECK=1

copy_clean_tree() {  # $1: destination
    mkdir -p "$1"
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard -- . ':!studies' ':!tutorials' \
        | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
        | tar --null -T - -cf -) | tar -xf - -C "$1"
}

check_no_warnings() {  # $1: build log. pip's own "WARNING: ..." lines are about this machine's setup.
    if grep -nE '[Ww]arn|WARN|[Dd]eprecat|\bbeta\b|same name as your package' "$1" | grep -vE '^[0-9]+: *WARNING: '; then
        echo "package-check: the build above printed warnings (full log: $1)" >&2
        exit 1
    fi
}

run_example() {  # $1: the venv; runs the README's short example in an empty folder, compares with the README
    mkdir -p "$TMP/run" && cd "$TMP/run"
    "$1/bin/python" - "$ROOT/README.md" <<'PY'
import re, subprocess, sys
readme = open(sys.argv[1]).read().split("## A short example", 1)[1]
code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
expected = re.search(r"Output:\s*```\n(.*?)```", readme, re.S).group(1)
r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
print(r.stdout + r.stderr, end="")
import minires
assert "site-packages" in minires.__file__, minires.__file__
print(f"(minires imported from {minires.__file__})")
# the errors' digits and where they peak vary with the CPU and the build flags
mask = lambda s: re.sub(r"\d\.\d\de-\d\d(  \(.*\))?", "#", s)
if r.returncode != 0 or mask(r.stdout) != mask(expected):
    sys.exit("package-check: the README's short example printed something else than the README shows:\n" + expected)
PY
    "$1/bin/minires" --help > /dev/null
    cd "$ROOT"
}

echo "== pip install . (a clean copy, default flags)"
copy_clean_tree "$TMP/src-pip"
"$PYTHON" -m venv "$TMP/venv-pip"
"$TMP/venv-pip/bin/python" -m pip install -v "$TMP/src-pip" > "$TMP/pip-install.log" 2>&1 \
    || { tail -40 "$TMP/pip-install.log"; exit 1; }
grep -E '^ *minires: ' "$TMP/pip-install.log" | sort -u
check_no_warnings "$TMP/pip-install.log"
run_example "$TMP/venv-pip"

echo "== the Makefile's editable install (make build), MINIRES_NATIVE=0"
copy_clean_tree "$TMP/src-edit"
"$PYTHON" -m venv "$TMP/venv-edit"
"$TMP/venv-edit/bin/python" -m pip install -q "setuptools>=77" "Cython>=3" "numpy>=1.25" \
    > "$TMP/pip-edit-tools.log" 2>&1 || { cat "$TMP/pip-edit-tools.log"; exit 1; }
(cd "$TMP/src-edit" && MINIRES_NATIVE=0 "$TMP/venv-edit/bin/python" -m pip install -v --no-build-isolation \
    --no-deps -e . > "$TMP/pip-edit.log" 2>&1) || { tail -40 "$TMP/pip-edit.log"; exit 1; }
check_no_warnings "$TMP/pip-edit.log"
(cd "$TMP" && "$TMP/venv-edit/bin/python" -c "import minires._kernels as k; print('editable:', k.__file__)")

echo "== python -m build (sdist + wheel), MINIRES_NATIVE=0"
copy_clean_tree "$TMP/src-build"
"$PYTHON" -m venv "$TMP/venv-build"
"$TMP/venv-build/bin/python" -m pip install -q build > "$TMP/pip-build.log" 2>&1 || { cat "$TMP/pip-build.log"; exit 1; }
MINIRES_NATIVE=0 "$TMP/venv-build/bin/python" -m build --outdir "$TMP/dist" "$TMP/src-build" \
    > "$TMP/build.log" 2>&1 || { tail -40 "$TMP/build.log"; exit 1; }
grep -E '^minires: ' "$TMP/build.log" | sort -u
check_no_warnings "$TMP/build.log"
if grep -E '^(gcc|cc|clang|x86_64).* -c ' "$TMP/build.log" | grep -q -- '-march=native'; then
    echo "package-check: MINIRES_NATIVE=0 but the extension was compiled with -march=native" >&2
    exit 1
fi
# the baseline kernels hold no AVX (VEX/EVEX-encoded, v... mnemonics): they run on any x86-64 CPU;
# the x86-64-v3 and -v4 copies sit beside them, for minires.kernels to pick from
if [ "$(uname -m)" = x86_64 ]; then
    "$PYTHON" -m zipfile -e "$TMP"/dist/minires-*.whl "$TMP/wheel-files"
    ls "$TMP"/wheel-files/minires/_kernels_x86_64_v3*.so "$TMP"/wheel-files/minires/_kernels_x86_64_v4*.so \
        || { echo "package-check: the portable wheel lacks the x86-64-v3/v4 kernels" >&2; exit 1; }
    if command -v objdump > /dev/null; then
        n="$(objdump -d --no-show-raw-insn "$TMP"/wheel-files/minires/_kernels.cpython*.so \
            | grep -cP '^\s+[0-9a-f]+:\s+v[a-z0-9]+\s' || true)"
        [ "$n" = 0 ] || { echo "package-check: the portable wheel's baseline kernels hold $n AVX instructions" >&2; exit 1; }
        echo "the wheel's baseline kernels: x86-64 instructions only (no AVX)"
    fi
fi
tar -tzf "$TMP"/dist/minires-*.tar.gz > "$TMP/sdist-files.txt"
grep -q '/minires/_kernels.pyx$' "$TMP/sdist-files.txt" \
    || { echo "package-check: the sdist lacks minires/_kernels.pyx" >&2; exit 1; }
ls "$TMP/dist"

echo "== the wheel in a fresh venv"
"$PYTHON" -m venv "$TMP/venv-wheel"
"$TMP/venv-wheel/bin/python" -m pip install -q "$TMP"/dist/minires-*.whl > "$TMP/pip-wheel.log" 2>&1 \
    || { cat "$TMP/pip-wheel.log"; exit 1; }
run_example "$TMP/venv-wheel"
(cd "$TMP" && "$TMP/venv-wheel/bin/python" -c "
from minires import kernels
levels = [m for m, _ in kernels.CPU_LEVELS]
want = kernels.pick_module(kernels.cpu_flags(), levels) if '$(uname -m)' == 'x86_64' else 'minires._kernels'
print('the wheel loads', kernels.load_backend().__name__, 'on this CPU')
assert kernels.module == want, (kernels.module, want)")
echo "package-check: OK"
