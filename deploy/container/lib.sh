# Shared by smoke.sh and podspec.py's driver: podman with the runtime and limits this VM
# needs, a local Debian base image, and the runtime stage of the shipped Dockerfile built
# around the host's binary. Source it from the repository root.

podman=(podman --runtime runc)
# crun and podman's default ulimits fail on this VM's cgroups; these work.
limits=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

# Installs podman, runc and mmdebstrap when missing (Debian packages).
need_podman() {
    local missing=()
    command -v podman >/dev/null || missing+=(podman)
    command -v runc >/dev/null || missing+=(runc)
    command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
    command -v curl >/dev/null || missing+=(curl)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "== installing ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 ||
            { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
    fi
}

# Prints the name of a minimal Debian 12 image (glibc, CA certificates: what distroless/cc
# has, plus a shell we never use), made once with mmdebstrap and kept in podman's store.
debian_base() {
    local name=localhost/debian-minbase:bookworm
    if ! "${podman[@]}" image exists "$name"; then
        local tar
        tar=$(mktemp --suffix=.tar)
        echo "== making $name with mmdebstrap (once)" >&2
        mmdebstrap --quiet --variant=minbase --include=ca-certificates --mode=root bookworm "$tar" \
            http://deb.debian.org/debian >&2
        "${podman[@]}" import --quiet "$tar" "$name" >/dev/null
        rm -f "$tar"
    fi
    echo "$name"
}

# Builds the Dockerfile's runtime stage on base $1 around target/release/mllp-proxy (built
# here with cargo); prints the image's name.
build_image() {
    local name=localhost/mllp-proxy:ci ctx
    cargo build --release --quiet --bin mllp-proxy >&2
    ctx=$(mktemp -d)
    cp target/release/mllp-proxy "$ctx/"
    "${podman[@]}" build --quiet -f deploy/container/Dockerfile --build-arg BINARY=prebuilt \
        --build-arg "RUNTIME=$1" --target runtime -t "$name" "$ctx" >/dev/null
    rm -rf "$ctx"
    echo "$name"
}
