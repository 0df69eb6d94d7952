#!/usr/bin/env bash
# Container image test: Herald's runtime layout, built as an OCI image and run.
#
# The Dockerfile's final stage is distroless `cc`: the binary, the shared
# libraries it links, CA certificates and a passwd entry for UID 65532. This
# machine can neither pull that base image nor run containers, so the test
# builds an image with the same layout FROM scratch with buildah, takes the
# paths, user, entrypoint and command from the Dockerfile, exports the
# image's root filesystem, and runs the entrypoint there in a chroot as UID
# 65532. It then checks that:
#
#   - the process runs as 65532:65532 and answers /readyz with 200;
#   - `herald token` (found on the image's PATH, as `kubectl exec` would)
#     mints a token, and one publish reaches an open SSE stream with its id;
#   - process metrics and the memory limit gauge work (/proc is mounted, as
#     every runtime does);
#   - the CA bundle at /etc/ssl/certs/ca-certificates.crt is what the JWKS
#     client trusts: a JWKS served over https by a test CA that the bundle
#     holds is fetched; one served by a CA it does not hold is refused.
#
# What it does not prove: that the Dockerfile's builder stage builds, that
# the distroless base has these files, registry pulls, or Kubernetes.
#
# Usage: tests/image/test_image.sh   (as root: chroot, mount and buildah)
# Env:   HERALD_BIN=path  reuse a release binary instead of building one.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
WAIT_SECS=30 # bound on every wait: start-up, stream, delivery

log() { printf 'test_image: %s\n' "$*" >&2; }
die() {
  printf 'test_image: FAIL: %s\n' "$*" >&2
  exit 1
}
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found; $2"; }

need buildah "install it: apt-get install -y buildah (Debian/Ubuntu), dnf install buildah (Fedora); scripts/test.sh does this"
need chroot "install coreutils"
need mount "install mount (util-linux)"
need ldd "install libc-bin"
need curl "install it: apt-get install -y curl"
need openssl "install it: apt-get install -y openssl"
need python3 "install it: apt-get install -y python3"
[[ $(id -u) -eq 0 ]] || die "run as root (chroot, mount and buildah's storage need it), e.g. sudo $0"
[[ -f /etc/ssl/certs/ca-certificates.crt ]] ||
  die "/etc/ssl/certs/ca-certificates.crt missing; install it: apt-get install -y ca-certificates"

# --- cleanup on every exit path ---------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/herald-image-test.XXXXXX")
IMAGE="localhost/herald-image-test:$$"
PIDS=()
CONTAINERS=()
PROC_MOUNT=""
# Private storage under $WORK: nothing touches the machine's own images.
# vfs needs no kernel overlay support, and the image is small.
bah() { buildah --root "$WORK/storage" --runroot "$WORK/run" --storage-driver vfs "$@"; }

cleanup() {
  local status=$?
  set +e
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  done
  [[ -n $PROC_MOUNT ]] && umount "$PROC_MOUNT"
  for ctr in "${CONTAINERS[@]}"; do
    bah umount "$ctr" >/dev/null 2>&1
    bah rm "$ctr" >/dev/null 2>&1
  done
  bah rmi -f "$IMAGE" >/dev/null 2>&1
  rm -rf "$WORK"
  if ((status != 0)); then log "failed (exit $status)"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until "$@" succeeds; fails after WAIT_SECS with $what.
wait_for() {
  local what=$1
  shift
  local deadline=$((SECONDS + WAIT_SECS))
  until "$@"; do
    ((SECONDS < deadline)) || die "timed out after ${WAIT_SECS}s: $what"
    sleep 0.2
  done
}

# --- the layout, read from the Dockerfile's final stage ----------------------
DOCKERFILE="$ROOT/Dockerfile"
[[ -f $DOCKERFILE ]] || die "no Dockerfile at the repository root"
final_stage() { awk '/^FROM /{stage=""} {stage = stage $0 "\n"} END{printf "%s", stage}' "$DOCKERFILE"; }
STAGE=$(final_stage)
json_line() { # the JSON array of an exec-form instruction, one item a line
  printf '%s\n' "$STAGE" | sed -n "s/^$1 //p" | python3 -c 'import json, sys; [print(a) for a in json.loads(sys.stdin.read())]'
}
mapfile -t ENTRYPOINT < <(json_line ENTRYPOINT)
mapfile -t CMD < <(json_line CMD)
USER_SPEC=$(printf '%s\n' "$STAGE" | sed -n 's/^USER //p')
BIN_PATH=$(printf '%s\n' "$STAGE" | sed -n 's|^COPY --from=build [^ ]* \(/[^ ]*\)$|\1|p')
read -r CONFIG_SRC CONFIG_PATH < <(printf '%s\n' "$STAGE" | sed -n 's|^COPY \(config/[^ ]*\) \(/[^ ]*\)$|\1 \2|p')
BASE=$(printf '%s\n' "$STAGE" | sed -n 's/^FROM \([^ ]*\).*/\1/p')
((${#ENTRYPOINT[@]} == 1)) || die "Dockerfile: expected ENTRYPOINT [\"<binary>\"], got ${ENTRYPOINT[*]:-nothing}"
[[ ${ENTRYPOINT[0]} == "$BIN_PATH" ]] || die "Dockerfile: ENTRYPOINT ${ENTRYPOINT[0]} is not the copied binary $BIN_PATH"
[[ $USER_SPEC == 65532:65532 ]] || die "Dockerfile: USER is '$USER_SPEC', expected 65532:65532"
[[ -n $CONFIG_PATH && -f $ROOT/$CONFIG_SRC ]] || die "Dockerfile: no COPY config/... <path> in the final stage"
[[ " ${CMD[*]} " == *" $CONFIG_PATH "* ]] || die "Dockerfile: CMD (${CMD[*]}) does not name $CONFIG_PATH"
[[ $BASE == gcr.io/distroless/cc-* ]] || die "Dockerfile: final stage is $BASE; this test mirrors distroless cc"
log "layout from the Dockerfile: $BIN_PATH, $CONFIG_SRC -> $CONFIG_PATH, user $USER_SPEC, ${ENTRYPOINT[*]} ${CMD[*]}"

# --- the release binary --------------------------------------------------------
if [[ -n ${HERALD_BIN:-} ]]; then
  BIN=$HERALD_BIN
else
  need cargo "install Rust (rustup)"
  log "cargo build --release --locked -p herald --bin herald (the Dockerfile's build command)"
  (cd "$ROOT" && cargo build --release --locked --quiet -p herald --bin herald)
  BIN=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/release/herald
fi
[[ -x $BIN ]] || die "no executable herald binary at $BIN"

# --- test CAs: one the image trusts, one it does not ---------------------------
make_ca() { # dir: a CA and a server certificate for 127.0.0.1 signed by it
  local dir=$1
  mkdir -p "$dir"
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=herald image test CA" \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$dir/ext.cnf"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -CAcreateserial -days 1 -extfile "$dir/ext.cnf" -out "$dir/server.pem" 2>/dev/null
}
make_ca "$WORK/trusted"
make_ca "$WORK/untrusted"

# --- build the image FROM scratch ------------------------------------------------
log "building $IMAGE FROM scratch with buildah (vfs storage under $WORK)"
ctr=$(bah from scratch)
CONTAINERS+=("$ctr")
mnt=$(bah mount "$ctr")

install -D -m 0755 "$BIN" "$mnt$BIN_PATH"
libs=$(ldd "$BIN") || die "ldd $BIN failed: is it a dynamic glibc binary?"
if grep -q 'not found' <<<"$libs"; then die "ldd: unresolved libraries:\n$libs"; fi
# "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and the loader
# "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no file.
while read -r path; do
  mkdir -p "$mnt$(dirname "$path")"
  cp -L "$path" "$mnt$path"
  log "  linked library $path"
done < <(awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' <<<"$libs" | sort -u)

mkdir -p "$mnt/etc/ssl/certs"
cat /etc/ssl/certs/ca-certificates.crt "$WORK/trusted/ca.pem" >"$mnt/etc/ssl/certs/ca-certificates.crt"
# distroless's own entries for root, nobody and nonroot.
cat >"$mnt/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
cat >"$mnt/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
tty:x:5:
staff:x:50:
nonroot:x:65532:
EOF
install -d -m 1777 "$mnt/tmp"
install -d -m 0700 -o 65532 -g 65532 "$mnt/home/nonroot"
install -d -m 0555 "$mnt/proc"
install -D -m 0644 "$ROOT/$CONFIG_SRC" "$mnt$CONFIG_PATH"
bah umount "$ctr" >/dev/null

cmd_json=$(python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "${CMD[@]}")
entry_json=$(python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "${ENTRYPOINT[@]}")
bah config --entrypoint "$entry_json" --cmd "$cmd_json" --user "$USER_SPEC" \
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --port 8000 --port 9090 --workingdir / "$ctr"
bah commit --quiet "$ctr" "$IMAGE" >/dev/null
bah rm "$ctr" >/dev/null
CONTAINERS=()

# --- export the image's root filesystem -------------------------------------------
# A fresh container of the committed image: what runs is what the image holds.
ctr=$(bah from --quiet "$IMAGE")
CONTAINERS+=("$ctr")
ROOTFS=$(bah mount "$ctr")
bah inspect --type image "$IMAGE" >"$WORK/image.json"
image_config() { # key: the image config's value, arrays one item a line
  python3 - "$WORK/image.json" "$1" <<'EOF'
import json, sys
value = json.load(open(sys.argv[1]))["OCIv1"]["config"].get(sys.argv[2]) or []
for item in value if isinstance(value, list) else [value]:
    print(item)
EOF
}
mapfile -t IMG_ENTRY < <(image_config Entrypoint)
mapfile -t IMG_CMD < <(image_config Cmd)
IMG_USER=$(image_config User)
IMG_PATH=$(image_config Env | sed -n 's/^PATH=//p')
((${#IMG_ENTRY[@]} > 0)) || die "the image has no entrypoint"
[[ $IMG_USER == "$USER_SPEC" ]] || die "image user is '$IMG_USER'"
[[ -x $ROOTFS$BIN_PATH ]] || die "the image has no $BIN_PATH"
grep -q '^nonroot:x:65532:65532:' "$ROOTFS/etc/passwd" || die "no nonroot (65532) in the image's /etc/passwd"
# The runtime mounts /proc; process metrics and memory limits read it.
mount -t proc proc "$ROOTFS/proc"
PROC_MOUNT="$ROOTFS/proc"

# Sets PREFIX: the command prefix that runs a program in the image as its
# user, with only the image's env plus the assignments given.
in_image_prefix() {
  PREFIX=(env -i PATH="$IMG_PATH" HOME=/home/nonroot "$@" chroot --userspec="$IMG_USER" "$ROOTFS")
}

# Starts the image's entrypoint and command with the given env assignments;
# sets SERVER_PID (herald itself: env and chroot exec) and SERVER_LOG.
start_server() {
  local name=$1
  shift
  SERVER_LOG="$WORK/$name.log"
  in_image_prefix "$@"
  "${PREFIX[@]}" "${IMG_ENTRY[@]}" "${IMG_CMD[@]}" >"$SERVER_LOG" 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
}

ready() {
  kill -0 "$SERVER_PID" 2>/dev/null || die "herald exited:\n$(cat "$SERVER_LOG")"
  [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/readyz") == 200 ]]
}

# --- 1. serve, mint, publish and subscribe ----------------------------------------
PORT=$(free_port)
SECRET=$(openssl rand -hex 32)
start_server serve HERALD_LISTEN="127.0.0.1:$PORT" HERALD_JWT_SECRET="$SECRET"
wait_for "/readyz answering 200 on 127.0.0.1:$PORT" ready "$PORT"
log "/readyz is 200 (${IMG_ENTRY[*]} ${IMG_CMD[*]}, chroot as $IMG_USER)"

uids=$(awk '/^Uid:/{print $2, $3} /^Gid:/{print $2, $3}' "/proc/$SERVER_PID/status" | tr '\n' ' ')
[[ $uids == "65532 65532 65532 65532 " ]] || die "herald runs with uid/gid $uids, not 65532"

CHANNEL="image-test/round-trip"
in_image_prefix HERALD_JWT_SECRET="$SECRET"
TOKEN=$("${PREFIX[@]}" herald token --config "$CONFIG_PATH" \
  --sub image-test --subscribe 'image-test/*' --publish 'image-test/*' --ttl 5m) ||
  die "herald token failed in the image"
[[ $TOKEN == *.*.* ]] || die "herald token printed '$TOKEN', not a JWT"

STREAM="$WORK/stream.txt"
: >"$STREAM"
curl -sN --max-time "$WAIT_SECS" -H "Authorization: Bearer $TOKEN" \
  "http://127.0.0.1:$PORT/events?channel=$CHANNEL" >"$STREAM" &
PIDS+=("$!")
wait_for "the SSE stream to open (retry: line)" grep -q '^retry:' "$STREAM"

reply=$(curl -sS --fail-with-body --max-time 10 -X POST -H "Authorization: Bearer $TOKEN" \
  -H 'Content-Type: application/json' -d '{"data":{"from":"image-test"}}' \
  "http://127.0.0.1:$PORT/channels/$CHANNEL/events") || die "publish failed: $reply"
ID=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["id"])' "$reply") ||
  die "publish reply has no id: $reply"
delivered() { grep -qx "id: $ID" "$STREAM" && grep -qx 'data: {"from":"image-test"}' "$STREAM"; }
wait_for "event $ID on the stream" delivered
log "publish -> subscribe round trip: event $ID delivered"

metrics=$(curl -sf "http://127.0.0.1:$PORT/metrics") || die "/metrics failed"
grep -q '^process_resident_memory_bytes ' <<<"$metrics" || die "no process_resident_memory_bytes in /metrics"
# The memory alert and panel divide by it; it is read from /proc and cgroups.
grep -q '^herald_memory_limit_bytes{source="[a-z]*"} [1-9]' <<<"$metrics" ||
  die "no herald_memory_limit_bytes in /metrics"
stop_server

# --- 2. the CA bundle: JWKS over https ---------------------------------------------
jwks_server() { # dir port: serves the fixture JWKS over https with dir's cert
  python3 - "$1" "$2" "$ROOT/tests/fixtures/jwks/initial.json" <<'EOF' &
import http.server, ssl, sys
cert_dir, port, jwks = sys.argv[1], int(sys.argv[2]), open(sys.argv[3], "rb").read()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(jwks)))
        self.end_headers()
        self.wfile.write(jwks)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", port), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(f"{cert_dir}/server.pem", f"{cert_dir}/server.key")
server.socket = ctx.wrap_socket(server.socket, server_side=True)
server.serve_forever()
EOF
  PIDS+=("$!")
}

# The count of JWKS fetches with this result, from /metrics.
refreshes() {
  curl -sf "http://127.0.0.1:$1/metrics" |
    sed -n "s/^herald_jwks_refreshes_total{result=\"$2\"} \([0-9.]*\)$/\1/p"
}
fetched() { [[ $(refreshes "$1" "$2") =~ ^[1-9] ]]; }

for case in trusted untrusted; do
  JWKS_PORT=$(free_port)
  jwks_server "$WORK/$case" "$JWKS_PORT"
  wait_for "the $case JWKS server" curl -s -o /dev/null --cacert "$WORK/$case/ca.pem" "https://127.0.0.1:$JWKS_PORT/"
  PORT=$(free_port)
  start_server "jwks-$case" HERALD_LISTEN="127.0.0.1:$PORT" HERALD_AUTH__ALGORITHMS=RS256 \
    HERALD_AUTH__JWKS_URL="https://127.0.0.1:$JWKS_PORT/jwks.json"
  wait_for "/readyz with the $case JWKS" ready "$PORT"
  if [[ $case == trusted ]]; then
    wait_for "a JWKS fetch verified by the image's CA bundle" fetched "$PORT" ok
    [[ -z $(refreshes "$PORT" error) || $(refreshes "$PORT" error) == 0 ]] ||
      die "a JWKS fetch failed with the trusted CA:\n$(cat "$SERVER_LOG")"
    log "JWKS over https: fetched, the certificate verified by the image's bundle"
  else
    wait_for "the JWKS fetch refused (untrusted CA)" fetched "$PORT" error
    [[ -z $(refreshes "$PORT" ok) || $(refreshes "$PORT" ok) == 0 ]] ||
      die "a JWKS fetch signed by a CA outside the bundle was accepted"
    log "JWKS over https: a CA outside the bundle is refused"
  fi
  stop_server
done

log "ok: the runtime layout serves as UID 65532"
