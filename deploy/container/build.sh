#!/usr/bin/env bash
# Builds the confide image from deploy/container/Containerfile with podman (docs/deploy.md
# "The image"), from the root of the checkout this script is in.
#
#   deploy/container/build.sh                # FROM python:3.11-slim-bookworm (needs Docker Hub)
#   deploy/container/build.sh --local-base   # FROM a Debian bookworm base made here from Debian's
#                                            # packages (mmdebstrap): no container registry needed
#
# Environment:
#   IMAGE             the tag to build (default: confide:VERSION, VERSION from pyproject.toml)
#   PYTHON_IMAGE      the base image (default: the Containerfile's; --local-base sets it)
#   LOCAL_BASE        the tag of the local base (default: localhost/confide-base:bookworm-python3);
#                     made once, then reused (--rebuild-base makes it again)
#   CONFIDE_BUILD_CA  a CA bundle that the build's HTTPS (pip reaching PyPI) must trust, e.g. a
#                     TLS-intercepting proxy's (default: $PIP_CERT, the bundle this machine's pip
#                     trusts). It is bind-mounted over the base's /etc/ssl/certs/ca-certificates.crt
#                     for the RUN steps only: it is in no layer of the image. Debian's pip reads
#                     that file; the official image's pip has its own (certifi) and ignores it.
#
# The containers of the build run with this shell's hard limits of open files and processes
# (--ulimit): podman 4.3 asks for more than a root without CAP_SYS_RESOURCE may set.
set -euo pipefail

cd "$(dirname "$0")/../.."
local_base=false
rebuild_base=false
for arg in "$@"; do
    case "$arg" in
        --local-base) local_base=true ;;
        --rebuild-base) local_base=true rebuild_base=true ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "build.sh: unknown argument: $arg (see --help)" >&2; exit 2 ;;
    esac
done

command -v podman >/dev/null || { echo "build.sh: podman is not installed (apt-get install podman)" >&2; exit 1; }

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -n 1)
IMAGE=${IMAGE:-confide:$version}
LOCAL_BASE=${LOCAL_BASE:-localhost/confide-base:bookworm-python3}
ca=${CONFIDE_BUILD_CA:-${PIP_CERT:-}}
if [ -n "$ca" ] && [ ! -f "$ca" ]; then echo "build.sh: no CA bundle at $ca" >&2; exit 1; fi

# The hard limits of this shell, given to the containers as both soft and hard limit. A process
# limit above kernel.pid_max is refused here too, so it is capped there.
nofile=$(ulimit -Hn)
[ "$nofile" = unlimited ] && nofile=1048576
nproc=$(ulimit -Hu)
pid_max=$(cat /proc/sys/kernel/pid_max)
if [ "$nproc" = unlimited ] || [ "$nproc" -gt "$pid_max" ]; then nproc=$pid_max; fi
ulimits=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")

if $local_base; then
    if $rebuild_base || ! podman image exists "$LOCAL_BASE"; then
        command -v mmdebstrap >/dev/null || {
            echo "build.sh: --local-base needs mmdebstrap (apt-get install mmdebstrap)" >&2
            exit 1
        }
        tmp=$(mktemp -d)
        trap 'rm -rf "$tmp"' EXIT
        # Debian bookworm's minimal system (what python:3.11-slim-bookworm is also made of) with
        # its Python 3.11, the venv module and the CA certificates; no documentation.
        mmdebstrap --variant=minbase --aptopt='APT::Install-Recommends "false"' \
            --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
            --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
            --include=python3,python3-venv,ca-certificates \
            bookworm "$tmp/rootfs.tar"
        podman import \
            --change 'ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV=LANG=C.UTF-8' --change 'CMD ["python3"]' \
            "$tmp/rootfs.tar" "$LOCAL_BASE" >/dev/null
        echo "build.sh: made the base $LOCAL_BASE" >&2
    fi
    PYTHON_IMAGE=$LOCAL_BASE
fi

build=(podman build "${ulimits[@]}" -f deploy/container/Containerfile -t "$IMAGE")
[ -n "${PYTHON_IMAGE:-}" ] && build+=(--build-arg "PYTHON_IMAGE=$PYTHON_IMAGE")
[ -n "$ca" ] && build+=(--volume "$ca:/etc/ssl/certs/ca-certificates.crt:ro")
"${build[@]}" .
echo "build.sh: built $IMAGE" >&2
