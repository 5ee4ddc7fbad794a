# shellcheck shell=sh
# python_check INTERPRETER VERSION MACHINE GLIBC: the hosts' Python is the
# one the wheels were chosen for: its version exactly (a marker such as python_full_version <
# "3.11.3" picks packages by it), its machine, and a C library no older
# than the wheels' platform needs (manylinux_2_28: glibc 2.28). What the
# interpreter prints is checked against its shape before it is shown.
python_check() {
    interpreter=$1 version=$2 machine=$3 glibc=$4
    fail() { echo "$*" >&2; exit 1; }
    [ -x "$interpreter" ] || fail "python/interpreter $interpreter: no such program on this host"
    said=$("$interpreter" -c 'import platform, sys; print("%d.%d.%d" % sys.version_info[:3], platform.machine(), platform.libc_ver()[1] or "none")' 2> /dev/null |
        head -c 200)
    set -f
    # shellcheck disable=SC2086 # its three words, split (set -f: no globbing)
    set -- $said
    got=${1:-} arch=${2:-} libc=${3:-}
    case $got in *[!0-9.]* | "") fail "python/interpreter $interpreter did not say its version" ;; esac
    case $arch in *[!a-z0-9_]* | "") arch="(unknown)" ;; esac
    case $libc in *[!0-9.]* | "") libc=none ;; esac
    [ "$got" = "$version" ] ||
        fail "this host's $interpreter is Python $got, not $version (python/version): the wheels were chosen for" \
             "$version; set python/version to the hosts' version"
    [ "$arch" = "$machine" ] ||
        fail "this host's $interpreter runs on $arch, not $machine (python/platform)"
    if [ "$libc" = none ] || ! awk -v have="$libc" -v need="$glibc" 'BEGIN {
            split(have, h, "."); split(need, n, ".")
            exit !(h[1] + 0 > n[1] + 0 || (h[1] + 0 == n[1] + 0 && h[2] + 0 >= n[2] + 0)) }'; then
        fail "this host's C library is glibc $libc, older than the $glibc that python/platform's wheels need"
    fi
    echo "Python $got on $arch, glibc $libc"
}
