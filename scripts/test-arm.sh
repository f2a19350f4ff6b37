#!/usr/bin/env bash
# Check the Raspberry Pi device path under aarch64 emulation: correctness, never timing.
#
# Builds an aarch64 Debian bookworm sysroot with Python 3.11 (what 64-bit Raspberry Pi OS
# runs) holding the aarch64 wheels of edgeexit's declared runtime dependencies, exports
# bundles on the host (scripts/arm_host_side.py), then runs tests/arm in-process inside the
# sysroot under qemu-user with a Cortex-A72 CPU: once with the newest dependencies, once
# with the oldest that pyproject.toml allows. EDGEEXIT_EMULATED=qemu-aarch64 tells
# `edgeexit profile` that its timings mean nothing. The sysroot is cached in .sysroot-arm/,
# so a second run only rebuilds what changed.
#
# The host is left as it was: apt runs on a private state directory (no
# `dpkg --add-architecture`, nothing in /var/lib/apt), and qemu is the static binary
# unpacked from Debian's qemu-user-static package into the cache. No root needed.
#
# Usage: scripts/test-arm.sh [extra pytest arguments]
#   VENV=DIR        host environment with edgeexit[export,dev] (default .venv, set up by make)
#   ARM_CACHE=DIR   the cache (default .sysroot-arm)
#   ARM_MIRROR=URL  Debian mirror (default http://deb.debian.org/debian)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=$(mkdir -p "${ARM_CACHE:-$ROOT/.sysroot-arm}" && cd "${ARM_CACHE:-$ROOT/.sysroot-arm}" && pwd)
VENV=${VENV:-$ROOT/.venv}
MIRROR=${ARM_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm # 64-bit Raspberry Pi OS is bookworm: Python 3.11, glibc 2.36
SYSROOT=$CACHE/root
QEMU=$CACHE/qemu/usr/bin/qemu-aarch64-static
RUN=$CACHE/run # this run's host-side artifacts: bundles, inputs, host outputs

# Python 3.11 and the shared libraries it and the wheels load.
DEBS=(python3.11-minimal libpython3.11-minimal libpython3.11-stdlib
    libc6 libgcc-s1 libstdc++6 zlib1g libexpat1 libffi8 libssl3 libbz2-1.0 liblzma5
    libcrypt1 libuuid1 libsqlite3-0 libncursesw6 libtinfo6 libreadline8)
TEST_TOOLS=(pytest) # installed next to the runtime dependencies, but not declared by them
FLAVORS=(latest oldest) # dependency sets the tests run against: see requirements()

START=$SECONDS
say() { printf 'test-arm [%3d s]: %s\n' "$((SECONDS - START))" "$*"; }
die() { printf 'test-arm: error: %s\n' "$*" >&2; exit 1; }

# Run a chatty tool (apt, pip, setuptools); show what it said only when it fails.
quietly() {
    if ! "$@" >"$CACHE/step.log" 2>&1; then
        cat "$CACHE/step.log" >&2
        die "failed: $*"
    fi
}

cleanup() {
    local rc=$?
    rm -rf "$CACHE"/*.partial "$CACHE/step.log" "${BUILD_DIR:-}"
    ((rc == 0)) || say "FAILED (exit $rc)"
}
trap cleanup EXIT

# ---- the sysroot ---------------------------------------------------------------------------

# apt with its own lists, cache and (empty) dpkg status under the cache: it can download
# arm64 packages without the host's dpkg ever knowing about arm64.
private_apt() {
    local host_arch
    host_arch=$(dpkg --print-architecture)
    mkdir -p "$CACHE"/apt/{lists/partial,archives/partial,sources.list.d}
    touch "$CACHE/apt/status"
    cat >"$CACHE/apt/sources.list" <<EOF
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR $SUITE main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR $SUITE-updates main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${MIRROR%/debian}/debian-security $SUITE-security main
EOF
    cat >"$CACHE/apt/apt.conf" <<EOF
APT::Architecture "$host_arch";
APT::Architectures { "arm64"; "$host_arch"; };
APT::Sandbox::User "$(id -un)";
Dir::State::Lists "$CACHE/apt/lists";
Dir::State::status "$CACHE/apt/status";
Dir::Cache "$CACHE/apt";
Dir::Cache::archives "$CACHE/apt/archives";
Dir::Etc::SourceList "$CACHE/apt/sources.list";
Dir::Etc::SourceParts "$CACHE/apt/sources.list.d";
EOF
    export APT_CONFIG=$CACHE/apt/apt.conf
    [[ -f /usr/share/keyrings/debian-archive-keyring.gpg ]] ||
        die "/usr/share/keyrings/debian-archive-keyring.gpg is missing; install debian-archive-keyring"
    say "apt-get update (private lists, $SUITE arm64 + $host_arch)"
    quietly apt-get update
}

# Unpack Python and its libraries with dpkg -x (no maintainer scripts, nothing installed).
build_sysroot() {
    local want="${DEBS[*]} qemu-user-static $SUITE $MIRROR"
    [[ -f $SYSROOT/.debs && $(cat "$SYSROOT/.debs") == "$want" && -x $QEMU ]] && return
    private_apt
    rm -rf "$SYSROOT" "$CACHE/qemu" "$CACHE/debs"
    mkdir -p "$CACHE/debs.partial" "$CACHE/root.partial" "$CACHE/qemu.partial"
    say "downloading ${#DEBS[@]} arm64 packages and qemu-user-static"
    (cd "$CACHE/debs.partial" && quietly apt-get download "${DEBS[@]/%/:arm64}" qemu-user-static)
    for deb in "$CACHE"/debs.partial/*_arm64.deb; do dpkg -x "$deb" "$CACHE/root.partial"; done
    # Only the one static binary we need out of the package's dozens of emulators.
    dpkg-deb --fsys-tarfile "$CACHE"/debs.partial/qemu-user-static_*.deb |
        tar -x -C "$CACHE/qemu.partial" ./usr/bin/qemu-aarch64-static
    echo "$want" >"$CACHE/root.partial/.debs"
    mv "$CACHE/qemu.partial" "$CACHE/qemu"
    mv "$CACHE/debs.partial" "$CACHE/debs"
    mv "$CACHE/root.partial" "$SYSROOT"
}

# onnxruntime's cpuinfo library segfaults on the host's x86 /proc/cpuinfo; qemu-user looks up
# absolute paths in the sysroot first, so this file is what the emulated program reads.
# One entry per host CPU, so the CPU count agrees with /sys, which still comes from the host.
write_cpuinfo() {
    local n i
    n=$(getconf _NPROCESSORS_CONF)
    mkdir -p "$SYSROOT/proc"
    {
        for ((i = 0; i < n; i++)); do
            printf 'processor\t: %d\nBogoMIPS\t: 108.00\n' "$i"
            printf 'Features\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\n'
            printf 'CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\n'
            printf 'CPU revision\t: 3\n\n'
        done
        printf 'Revision\t: c03111\nModel\t\t: Raspberry Pi 4 Model B Rev 1.1\n'
    } >"$SYSROOT/proc/cpuinfo"
}

# ---- the wheels ----------------------------------------------------------------------------

# What pip on the Pi itself accepts: manylinux up to bookworm's glibc 2.36, CPython 3.11.
pip_aarch64_flags() {
    local v
    PIP_ARM=(--only-binary=:all: --python-version 3.11 --implementation cp --abi cp311
        --platform manylinux2014_aarch64)
    for v in $(seq 17 36); do PIP_ARM+=(--platform "manylinux_2_${v}_aarch64"); done
}

# The runtime dependencies exactly as pyproject.toml declares them: if the tests pass with
# only these installed, `pip install edgeexit` is enough on a Pi. Two sets: "latest", what
# pip installs today, and "oldest", each `name>=X` pinned to X.* (onnxruntime 1.17 is what
# the rpi4 profile's IR/opset limits are for, and what older Pi images still carry).
requirements() {
    "$HOST_PY" - "$ROOT/pyproject.toml" "$1" <<'EOF'
import re, sys, tomllib
with open(sys.argv[1], "rb") as f:
    declared = tomllib.load(f)["project"]["dependencies"]
for req in declared:
    floor = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)", req)
    print(f"{floor[1]}=={floor[2]}.*" if sys.argv[2] == "oldest" and floor else req)
EOF
    printf '%s\n' "${TEST_TOOLS[@]}"
}

install_dependencies() {
    local flavor=$1 reqs dest
    reqs=$(requirements "$flavor")
    dest=$SYSROOT/opt/deps-$flavor
    [[ -f $dest/.requirements && $(cat "$dest/.requirements") == "$reqs" ]] && return
    pip_aarch64_flags
    say "$flavor: downloading and installing aarch64 cp311 wheels: $(echo "$reqs" | tr '\n' ' ')"
    mapfile -t req_array <<<"$reqs"
    quietly "$HOST_PY" -m pip download -d "$CACHE/wheels" "${PIP_ARM[@]}" "${req_array[@]}"
    rm -rf "$dest" "$CACHE/deps.partial"
    quietly "$HOST_PY" -m pip install --no-index --find-links "$CACHE/wheels" \
        --target "$CACHE/deps.partial" "${PIP_ARM[@]}" "${req_array[@]}"
    echo "$reqs" >"$CACHE/deps.partial/.requirements"
    mkdir -p "$SYSROOT/opt"
    mv "$CACHE/deps.partial" "$dest"
}

# edgeexit itself, as a wheel built from a copy of the working tree (building in place
# would leave a build/ directory whose stale files could end up in the next wheel).
install_edgeexit() {
    say "building and installing the edgeexit wheel"
    BUILD_DIR=$(mktemp -d)
    (cd "$ROOT" && tar --exclude=__pycache__ -cf - pyproject.toml README.md edgeexit) |
        tar -xf - -C "$BUILD_DIR"
    quietly "$HOST_PY" -m pip wheel --no-deps --no-build-isolation -w "$BUILD_DIR/dist" "$BUILD_DIR"
    rm -rf "$SYSROOT/opt/edgeexit"
    quietly "$HOST_PY" -m pip install --no-deps --target "$SYSROOT/opt/edgeexit" "$BUILD_DIR"/dist/*.whl
}

# ---- host side and emulated side -----------------------------------------------------------

host_python() {
    if [[ $VENV == "$ROOT/.venv" ]]; then
        make -C "$ROOT" -s .venv/.installed # up to date after `make test`: a no-op
    fi
    HOST_PY=$VENV/bin/python
    [[ -x $HOST_PY ]] || die "no host Python at $HOST_PY; run make test, or set VENV"
}

export_on_host() {
    rm -rf "$RUN"
    say "host: exporting bundles and saving host outputs to $RUN"
    PYTHONPATH=$ROOT "$HOST_PY" "$ROOT/scripts/arm_host_side.py" "$RUN"
}

# env -i: nothing from the host (PIP_*, PYTHON*, HOME's user site) leaks in. -S: no site
# directories. -P: the working directory (the source tree) is not on sys.path, so the tests
# import the edgeexit that pip installed. No subprocesses: without binfmt they would not run.
run_emulated() {
    local flavor=$1
    shift
    say "$flavor: tests/arm under qemu-aarch64 -cpu cortex-a72"
    (cd "$ROOT" && env -i QEMU_CPU=cortex-a72 PATH=/usr/bin:/bin LC_ALL=C.UTF-8 \
        PYTHONPATH="/opt/edgeexit:/opt/deps-$flavor" PYTHONDONTWRITEBYTECODE=1 \
        EDGEEXIT_EMULATED=qemu-aarch64 \
        "$QEMU" -L "$SYSROOT" "$SYSROOT/usr/bin/python3.11" -S -P -m pytest \
        -c tests/arm/pytest.ini --host-artifacts "$RUN" tests/arm "$@")
}

main() {
    if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
        say "SKIP: apt-get and dpkg-deb are needed to build the aarch64 sysroot from Debian packages"
        exit 0
    fi
    # One run at a time per cache: a second one waits instead of unpacking over the first.
    exec 9>"$CACHE/.lock"
    flock 9
    host_python
    build_sysroot
    write_cpuinfo
    for flavor in "${FLAVORS[@]}"; do install_dependencies "$flavor"; done
    install_edgeexit
    export_on_host
    for flavor in "${FLAVORS[@]}"; do run_emulated "$flavor" "$@"; done
    say "passed in $((SECONDS - START)) s"
}

main "$@"
