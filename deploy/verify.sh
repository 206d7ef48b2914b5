#!/usr/bin/env bash
# Build lnpt's images and run them for real with podman, as a user would (deploy/README.md, "Verify"):
#   1. a local Debian base image (mmdebstrap) unless LNPT_BASE_IMAGE names one; the cloud image and
#      the amd64 edge image built from this checkout; their sizes; inside the edge image, no cloud extras;
#   2. the cloud container with TLS and a bearer token: grpc.health.v1 from the host through the
#      published port and the container's own HEALTHCHECK; two edge containers at once running their
#      job (prune -> train -> export) on real Fashion-MNIST images; the server's Prometheus metrics
#      while both stream; the ONNX file checked on the host with ONNX Runtime; SIGTERM and its drain;
#      non-root in both images;
#   3. `podman kube play` of deploy/k8s/{configmap,deployment}.yaml and deploy/k8s/edge/pod.yaml with only
#      the image names and the edge pod's hostPath replaced; the edge pod must complete its job.
# Writes a summary to $LNPT_VERIFY_DIR/summary.md. Run as root (podman with runc, as in
# ../shared/notes/environment.md); installs podman, runc and mmdebstrap with apt when they are missing.
# Not part of `make test`: it builds images of several GB. `make deploy-verify` runs it.
#
# Settings (environment):
#   LNPT_VERIFY_DIR      work folder: podman storage, base image, certificates, data, logs (/var/tmp/lnpt-verify)
#   LNPT_VERIFY_REF      build from this git commit (a clean `git archive`) instead of the working tree
#   LNPT_BASE_IMAGE      base of both images, e.g. python:3.11.11-slim-bookworm where it can be pulled
#                        (default: localhost/lnpt-base:bookworm, made here with mmdebstrap once)
#   LNPT_TORCH_INDEX     wheel index for torch in both images (default https://pypi.org/simple: PyPI's
#                        build, which carries CUDA libraries; the Dockerfiles' own defaults are the
#                        CPU-only index download.pytorch.org/whl/cpu, unreachable from some machines)
#   LNPT_STORAGE_DRIVER  podman storage driver (overlay; vfs also works but copies every layer in full)
#   LNPT_PYTHON          host Python with lnpt installed, for the teacher, the data and the checks (.venv)
#   LNPT_VERIFY_IMAGES   unlabeled images per edge client (1600); LNPT_VERIFY_JOB_ARGS their `lnpt edge run` flags
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=${LNPT_VERIFY_DIR:-/var/tmp/lnpt-verify}
py=${LNPT_PYTHON:-$repo/.venv/bin/python}
lnpt=$(dirname "$py")/lnpt
base_image=${LNPT_BASE_IMAGE:-localhost/lnpt-base:bookworm}
torch_index=${LNPT_TORCH_INDEX:-https://pypi.org/simple}
storage_driver=${LNPT_STORAGE_DRIVER:-overlay}
images_per_client=${LNPT_VERIFY_IMAGES:-1600}
job_args=${LNPT_VERIFY_JOB_ARGS:---set train.epochs=6 --set train.batch_size=32 --set train.threads=1 --format json}
cloud=localhost/lnpt-cloud:verify
edge=localhost/lnpt-edge:verify
guidance=localhost/lnpt-guidance:verify
summary=$work/summary.md

say() { printf '\n== %s\n' "$*"; }
note() { printf '%s\n' "$*" | tee -a "$summary"; }
fail() { echo "verify.sh: FAILED: $*" >&2; exit 1; }
mib() { awk -v b="$1" 'BEGIN { printf "%.0f MiB", b / 1048576 }'; }
free_port() { "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# --- tools -------------------------------------------------------------------------------------------
missing=()
for tool in podman runc mmdebstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || fail "install ${missing[*]} (Debian: apt-get install -y podman runc mmdebstrap) and run as root"
  say "installing ${missing[*]} with apt"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc mmdebstrap
fi
[ "$(id -u)" = 0 ] || fail "run as root (podman with runc and cgroupfs, see deploy/README.md)"
[ -x "$py" ] || fail "no Python with lnpt at $py (make install, or set LNPT_PYTHON)"

mkdir -p "$work"/{logs,kube}
# Without these two settings crun/runc fail on setrlimit or cgroups inside this kind of VM.
printf '[containers]\ndefault_ulimits = []\n[engine]\ncgroup_manager = "cgroupfs"\n' > "$work/containers.conf"
export CONTAINERS_CONF=$work/containers.conf
# Own storage below $work: the builds' layer cache stays for the next run, and nothing here touches
# other podman users' images.
engine() { podman --root "$work/storage" --runroot "$work/run" --storage-driver "$storage_driver" --runtime runc "$@"; }

commit=$(git -C "$repo" rev-parse --short HEAD)
context=$repo
if [ -n "${LNPT_VERIFY_REF:-}" ]; then
  commit=$(git -C "$repo" rev-parse --short "$LNPT_VERIFY_REF")
  context=$work/src
  rm -rf "$context" && mkdir -p "$context"
  git -C "$repo" archive "$commit" | tar -x -C "$context"
  # One fixed time stamp: podman's layer cache compares file times, and git archive stamps every file
  # with the commit's time, which would make each commit rebuild every layer (torch included).
  find "$context" -exec touch -h -d '2000-01-01 00:00:00 UTC' {} +
  tree="commit $commit (git archive)"
else
  tree="working tree at $commit$(git -C "$repo" diff --quiet HEAD -- . 2>/dev/null || echo ' plus uncommitted changes')"
fi
: > "$summary"
note "# deploy/verify.sh, $(date -u '+%Y-%m-%d %H:%M UTC')"
note "- source: $tree; podman $(podman --version | awk '{print $3}'), runc, storage driver $storage_driver"
note "- host: $(uname -m), $(nproc) cores; free disk before building: $(df -h --output=avail "$work" | tail -1 | tr -d ' ')"

remove_containers() {  # one by one: `podman rm` of several names removes none when one is missing
  for name in lnpt-verify-cloud lnpt-verify-edge-a lnpt-verify-edge-b; do engine rm -f -t 0 "$name" > /dev/null 2>&1 || true; done
}
cleanup() {
  remove_containers
  [ -n "${metrics_poller:-}" ] && kill "$metrics_poller" 2>/dev/null || true
  for file in "$work"/kube/*.yaml; do [ -f "$file" ] && engine kube down "$file" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

# --- 1. images ---------------------------------------------------------------------------------------
if ! engine image exists "$base_image"; then
  if [ "$base_image" = localhost/lnpt-base:bookworm ]; then
    say "making the local Debian base image with mmdebstrap"
    nice -n 10 mmdebstrap --variant=minbase --include=python3,python3-venv,python-is-python3,passwd,ca-certificates \
      bookworm "$work/base.tar" http://deb.debian.org/debian "deb http://deb.debian.org/debian-security bookworm-security main"
    engine import --change 'ENV LANG=C.UTF-8' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["python3"]' "$work/base.tar" "$base_image"
  else
    engine pull "$base_image"
  fi
fi

# The host's pip settings go into the build stage; a local wheel mirror (file:// index, find-links
# folder) is mounted read-only, and the host's CA bundle where pip trusts one (TLS-inspecting proxies).
build_args=(--build-arg "PYTHON_IMAGE=$base_image" --build-arg "TORCH_INDEX=$torch_index")
pip_setting() { "$py" -m pip config get "$1" 2>/dev/null | tail -1 || true; }
extra_index=$(pip_setting global.extra-index-url)
find_links=${PIP_FIND_LINKS:-$(pip_setting global.find-links)}
ca_bundle=${PIP_CERT:-$(pip_setting global.cert)}
mounts=()
for url in $extra_index; do
  case "$url" in file://*) mounts+=(-v "$(dirname "${url#file://}"):$(dirname "${url#file://}"):ro") ;; esac
done
[ -n "$extra_index" ] && build_args+=(--build-arg "PIP_EXTRA_INDEX_URL=$extra_index")
if [ -n "$find_links" ] && [ -d "$find_links" ]; then
  build_args+=(--build-arg "PIP_FIND_LINKS=$find_links"); mounts+=(-v "$find_links:$find_links:ro")
fi
if [ -n "$ca_bundle" ] && [ -f "$ca_bundle" ]; then
  build_args+=(--build-arg PIP_CERT=/etc/lnpt-build-ca.pem); mounts+=(-v "$ca_bundle:/etc/lnpt-build-ca.pem:ro")
fi

build() {  # NAME TAG [extra args]: deploy/docker/NAME.Dockerfile with its own ignore file
  local name=$1 tag=$2 start; shift 2
  say "building $tag (log: $work/logs/build-$name.log)"
  start=$(date +%s)
  # docker format: OCI images cannot carry HEALTHCHECK.
  nice -n 10 podman --root "$work/storage" --runroot "$work/run" --storage-driver "$storage_driver" --runtime runc \
    build --format docker -f "$context/deploy/docker/$name.Dockerfile" \
    --ignorefile "$context/deploy/docker/$name.Dockerfile.dockerignore" \
    "${build_args[@]}" "${mounts[@]}" "$@" -t "$tag" "$context" > "$work/logs/build-$name.log" 2>&1 \
    || { tail -30 "$work/logs/build-$name.log"; fail "building $tag"; }
  echo "built $tag in $(( $(date +%s) - start )) s"
}
build cloud "$cloud" --build-arg VARIANT=cuda
build edge "$edge"

size_cloud=$(engine image inspect --format '{{.Size}}' "$cloud")
size_edge=$(engine image inspect --format '{{.Size}}' "$edge")
size_base=$(engine image inspect --format '{{.Size}}' "$base_image")
note "- images: cloud $(mib "$size_cloud"), edge (amd64) $(mib "$size_edge"), base $(mib "$size_base") ($base_image); torch from $torch_index"

# The edge image must not hold the server's extras: ask its own Python.
extras=$("$py" -c 'import re, tomllib; deps = tomllib.load(open("'"$repo"'/pyproject.toml", "rb"))["project"]["optional-dependencies"]["cloud"]; print(" ".join(re.split("[<>=!~; \\[]", d)[0] for d in deps))')
present=$(engine run --rm --entrypoint python "$edge" -c '
import importlib.metadata as metadata, sys
present = []
for name in sys.argv[1:]:
    try:
        metadata.version(name)
        present.append(name)
    except metadata.PackageNotFoundError:
        pass
print(" ".join(present))' $extras)
[ -z "$present" ] || fail "the edge image contains cloud extras: $present"
note "- edge image: none of the cloud extras ($extras) is installed (checked with importlib.metadata inside the image)"

for image in "$cloud" "$edge"; do
  uid=$(engine run --rm --entrypoint id "$image" -u)
  [ "$uid" != 0 ] || fail "$image runs as root"
  note "- $image runs as uid $uid (image USER $(engine image inspect --format '{{.Config.User}}' "$image"))"
done

if [ "$(uname -m)" = aarch64 ] || [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  build edge localhost/lnpt-edge:verify-arm64 --platform linux/arm64
  note "- arm64 edge image: built, $(mib "$(engine image inspect --format '{{.Size}}' localhost/lnpt-edge:verify-arm64)")"
else
  note "- arm64 edge image: not built (this $(uname -m) host has no aarch64 binfmt/qemu handler); documented, untested"
fi

# --- 2. run them: teacher, certificates, token, data ---------------------------------------------------
say "preparing the teacher, certificates, token and data (host Python: $py)"
mkdir -p "$work"/{models,secrets,data}
[ -f "$work/models/teacher.pt" ] || OMP_NUM_THREADS=2 nice -n 10 "$lnpt" teacher train --model lenet5 --epochs 2 \
  --device cpu --out "$work/models/teacher.pt" > "$work/logs/teacher.log" 2>&1
bash "$repo/deploy/gen-certs.sh" "$work/certs" DNS:cloud DNS:lnpt-guidance.lnpt.svc.cluster.local > /dev/null
[ -f "$work/secrets/edge.token" ] || openssl rand -hex 32 > "$work/secrets/edge.token"
cp "$work/secrets/edge.token" "$work/secrets/tokens"
for client in edge-a edge-b; do
  split=train; [ "$client" = edge-b ] && split=test
  [ -d "$work/data/$client" ] || "$lnpt" data write-folder --split "$split" --limit "$images_per_client" \
    --out "$work/data/$client" > "$work/logs/data-$client.log" 2>&1
  rm -rf "$work/jobs/$client" && mkdir -p "$work/jobs/$client"
done
# The containers run as uid 10001: the mounted keys, token and work folders must be theirs.
chown -R 10001:10001 "$work/certs" "$work/secrets" "$work/jobs"
cp "$repo/deploy/config/edge.toml" "$work/edge.toml"

remove_containers  # left over from an interrupted run
engine network exists lnpt-verify || engine network create lnpt-verify > /dev/null
grpc_port=$(free_port); metrics_port=$(free_port)
say "starting the cloud container (TLS, token) on localhost:$grpc_port, metrics on :$metrics_port"
engine run -d --name lnpt-verify-cloud --network lnpt-verify --network-alias cloud \
  -p "127.0.0.1:$grpc_port:50051" -p "127.0.0.1:$metrics_port:9464" \
  -v "$work/certs:/etc/lnpt/tls:ro" -v "$work/secrets/tokens:/etc/lnpt/tokens/tokens:ro" \
  -v "$work/models:/models:ro" "$cloud" > /dev/null
healthy=""
for _ in $(seq 120); do
  if engine healthcheck run lnpt-verify-cloud > /dev/null 2>&1; then healthy=yes; break; fi
  sleep 1
done
[ -n "$healthy" ] || { engine logs lnpt-verify-cloud | tail -20; fail "the cloud container never became healthy"; }
from_host=$("$py" "$repo/deploy/docker/healthcheck.py" --address "localhost:$grpc_port" --ca-cert "$work/certs/ca.pem")
status=$(engine inspect --format '{{.State.Health.Status}}' lnpt-verify-cloud)
note "- health: from the host through the published port: \`$from_host\` (TLS, verified with the test CA); container HEALTHCHECK: $status"
no_token=$("$py" - "$grpc_port" "$work/certs/ca.pem" <<'EOF'
import sys, grpc
from lnpt.shared.protocol import guidance_pb2, guidance_pb2_grpc
port, ca = sys.argv[1], open(sys.argv[2], "rb").read()
with grpc.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials(ca)) as channel:
    try:
        guidance_pb2_grpc.GuidanceStub(channel).GetTeacherInfo(guidance_pb2.GetTeacherInfoRequest(), timeout=10)
        print("ANSWERED")
    except grpc.RpcError as error:
        print(error.code().name)
EOF
)
[ "$no_token" = UNAUTHENTICATED ] || fail "a call without the token got $no_token"
note "- token: GetTeacherInfo without a token over TLS: $no_token"

edge_container() {  # NAME: the edge image's job against the cloud container, as in compose.yaml
  engine run -d --name "lnpt-verify-$1" --network lnpt-verify \
    -e LNPT_CONFIG=/etc/lnpt/edge.toml -e LNPT_TEACHER=cloud:50051 -e LNPT_DATA=/data -e LNPT_WORK=/work \
    -e "LNPT_JOB_ARGS=$job_args" -e OMP_NUM_THREADS=1 \
    -v "$work/edge.toml:/etc/lnpt/edge.toml:ro" -v "$work/certs/ca.pem:/etc/lnpt/tls/ca.pem:ro" \
    -v "$work/secrets/edge.token:/etc/lnpt/edge.token:ro" -v "$work/data/$1:/data:ro" -v "$work/jobs/$1:/work" \
    "$edge" > /dev/null
}
metric() { curl -sf "http://127.0.0.1:$metrics_port/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }

say "two edge containers at once: lnpt edge run $job_args"
(while :; do metric lnpt_open_streams; sleep 0.5; done > "$work/logs/open_streams.txt" 2>/dev/null) &
metrics_poller=$!
start=$(date +%s)
edge_container edge-a
edge_container edge-b
for client in edge-a edge-b; do
  code=$(engine wait "lnpt-verify-$client")
  engine logs "lnpt-verify-$client" > "$work/logs/$client.log" 2>&1
  [ "$code" = 0 ] || { tail -30 "$work/logs/$client.log"; fail "$client exited with $code"; }
done
elapsed=$(( $(date +%s) - start ))
kill "$metrics_poller"; metrics_poller=""
peak=$(sort -g "$work/logs/open_streams.txt" | tail -1)
served=$(metric lnpt_samples_served_total)
trained=0
for client in edge-a edge-b; do
  [ -f "$work/jobs/$client/student.onnx" ] || fail "$client wrote no student.onnx"
  # The job's JSON result (--format json) is the log line with its "stages".
  job=$("$py" - "$work/logs/$client.log" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    try:
        result = json.loads(line)
    except ValueError:
        continue
    if isinstance(result, dict) and "stages" in result:
        train = result["train"] or {}
        print(train.get("samples") or 0, ", ".join(f"{k} {v}" for k, v in result["stages"].items()),
              f"- {train.get('steps')} steps, {train.get('samples')} samples, sparsity {result['sparsity']:.2f}")
EOF
)
  [ -n "$job" ] || fail "$client printed no job result"
  trained=$((trained + ${job%% *})); job=${job#* }
  note "- $client: exit 0 on $images_per_client Fashion-MNIST $( [ "$client" = edge-a ] && echo train || echo test ) images: $job; student.onnx $(stat -c %s "$work/jobs/$client/student.onnx") bytes"
done
[ "${peak%.*}" -ge 2 ] || fail "the server never had both clients' streams open (peak lnpt_open_streams $peak)"
# The metrics have no per-client label: both streams open at once, and every sample both clients
# trained on (plus pruning's) answered by this server.
[ "${served%.*}" -ge "$trained" ] || fail "lnpt_samples_served_total ${served%.*} < $trained samples the clients trained on"
note "- both clients in ${elapsed} s; server metrics while they ran: lnpt_open_streams peaked at ${peak%.*}; lnpt_samples_served_total ${served%.*} at the end >= $trained samples the two clients trained on (the rest: pruning's scoring samples)"

say "checking the ONNX file on the host with ONNX Runtime"
onnx_check=$("$py" "$repo/deploy/verify_onnx.py" "$work/jobs/edge-a") || fail "ONNX check: $onnx_check"
note "- ONNX on the host: $onnx_check"

say "SIGTERM to the cloud container"
start=$(date +%s.%N)
engine stop -t 30 lnpt-verify-cloud > /dev/null
drain=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
code=$(engine inspect --format '{{.State.ExitCode}}' lnpt-verify-cloud)
engine logs lnpt-verify-cloud > "$work/logs/cloud.log" 2>&1
# The server's own account (JSON log lines): signal -> draining -> stopped, with their times.
drained=$("$py" - "$work/logs/cloud.log" <<'EOF'
import json, sys
from datetime import datetime
lines = {}
for line in open(sys.argv[1]):
    try:
        entry = json.loads(line)
    except ValueError:
        continue
    if isinstance(entry, dict) and entry.get("logger") == "lnpt.cloud.server":
        for key in ("signal received", "draining", "stopped"):
            if entry["message"].startswith(key):
                lines[key] = entry
if len(lines) == 3:
    seconds = (datetime.fromisoformat(lines["stopped"]["time"].rstrip("Z"))
               - datetime.fromisoformat(lines["signal received"]["time"].rstrip("Z"))).total_seconds()
    print(f"server: signal to stopped {seconds:.2f} s; log: " + " / ".join(e["message"] for e in lines.values()))
EOF
)
[ "$code" = 0 ] && [ -n "$drained" ] || { tail -20 "$work/logs/cloud.log"; fail "no clean drain (exit $code)"; }
note "- SIGTERM (podman stop): container gone after $drain s, exit code $code; $drained"
engine rm lnpt-verify-cloud > /dev/null

# --- 3. the Kubernetes manifests under podman kube play ----------------------------------------------
say "podman kube play of deploy/k8s (image names and the edge pod's hostPath replaced)"
# The teacher baked into the cloud image (teacher.Dockerfile; its context is the teacher's folder).
nice -n 10 podman --root "$work/storage" --runroot "$work/run" --storage-driver "$storage_driver" --runtime runc \
  build --format docker -f "$context/deploy/docker/teacher.Dockerfile" --build-arg "BASE=$cloud" -t "$guidance" \
  "$work/models" > "$work/logs/build-teacher.log" 2>&1 || fail "building $guidance"
# kube play reads Secret volumes from podman secrets that hold a Secret object. podman 4.3 writes the
# values of `data` without base64-decoding them and ignores `stringData`, so the files go in as text.
secret() {  # NAME KEY FILE [KEY FILE ...]
  local name=$1; shift
  { printf 'apiVersion: v1\nkind: Secret\nmetadata:\n  name: %s\ndata:\n' "$name"
    while [ $# -gt 0 ]; do printf '  %s: |\n' "$1"; sed 's/^/    /' "$2"; shift 2; done; } > "$work/kube/secret-$name.yml"
  engine secret rm "$name" > /dev/null 2>&1 || true
  engine secret create "$name" "$work/kube/secret-$name.yml" > /dev/null
}
secret lnpt-guidance-tls server.pem "$work/certs/server.pem" server.key "$work/certs/server.key" ca.pem "$work/certs/ca.pem"
secret lnpt-guidance-tokens tokens "$work/secrets/tokens"
secret lnpt-edge-token edge.token "$work/secrets/edge.token"
sed "s|^\(  *image:\) lnpt-guidance\$|\1 $guidance|" "$context/deploy/k8s/deployment.yaml" > "$work/kube/deployment.yml"
{ cat "$context/deploy/k8s/configmap.yaml"; echo "---"; cat "$work/kube/deployment.yml"; } > "$work/kube/guidance.yaml"
sed -e "s|^\(  *image:\) lnpt-edge\$|\1 $edge|" -e "s|^\(  *path:\) /srv/lnpt/images\$|\1 $work/data/edge-a|" \
  "$context/deploy/k8s/edge/pod.yaml" > "$work/kube/edge.yaml"
changed=$( { diff "$context/deploy/k8s/deployment.yaml" "$work/kube/deployment.yml" | grep -c '^>' || true; } )
changed_edge=$( { diff "$context/deploy/k8s/edge/pod.yaml" "$work/kube/edge.yaml" | grep -c '^>' || true; } )
engine network exists lnpt-kube || engine network create lnpt-kube > /dev/null
for file in "$work"/kube/guidance.yaml "$work"/kube/edge.yaml; do engine kube down "$file" > /dev/null 2>&1 || true; done
# Volumes from ConfigMaps and Secrets are re-made from this run's files, emptyDirs start empty
# (podman 4.3 names emptyDir volumes after the volume: `work` would keep the last run's files.)
engine volume rm -f lnpt-guidance-config lnpt-guidance-tls lnpt-guidance-tokens lnpt-edge-config lnpt-edge-token work tmp > /dev/null 2>&1 || true
# kube play has no Services: the alias gives the server pods the headless Service's DNS name.
# It exits non-zero when a replica fails to start (see below); the pods that did start are checked.
engine kube play --network "lnpt-kube:alias=lnpt-guidance.lnpt.svc.cluster.local" "$work/kube/guidance.yaml" \
  > "$work/logs/kube-guidance.log" 2>&1 || true
replicas=$("$py" -c 'import sys, yaml; print(next(d for d in yaml.safe_load_all(open(sys.argv[1])) if d["kind"] == "Deployment")["spec"]["replicas"])' "$work/kube/guidance.yaml")
servers=$(engine ps -a --format '{{.Names}}' | grep -- '^lnpt-guidance-pod-.*-lnpt-serve$' | sort)
[ -n "$servers" ] || { cat "$work/logs/kube-guidance.log"; fail "kube play created no lnpt-serve container"; }
serving=0; refused=""
sleep 5
for server in $servers; do
  ok=""
  for _ in $(seq 120); do
    [ "$(engine inspect --format '{{.State.Status}}' "$server")" = running ] || break
    if engine exec "$server" python /opt/lnpt/healthcheck.py > /dev/null 2>&1; then ok=yes; break; fi
    sleep 1
  done
  if [ -n "$ok" ]; then serving=$((serving + 1)); else refused="$refused $server"; fi
done
[ "$serving" -ge 1 ] || { tail -20 "$work/logs/kube-guidance.log"; fail "no kube-played server became SERVING"; }
first=$(echo "$servers" | head -1)
kube_uid=$(engine exec "$first" id -u)
[ "$kube_uid" != 0 ] || fail "the kube-played server runs as root"
probe=$(engine inspect --format '{{json .Config.Healthcheck.Test}}' "$first")
why=""
[ -z "$refused" ] || why=" (not started:$refused: $(grep -o 'cannot listen on the TCP port: [^]]*' "$work/logs/kube-guidance.log" | head -1))"
engine kube play --network lnpt-kube "$work/kube/edge.yaml" > "$work/logs/kube-edge.log" 2>&1 \
  || { cat "$work/logs/kube-edge.log"; fail "kube play of the edge pod"; }
start=$(date +%s)
code=$(engine wait lnpt-edge-lnpt-edge-job)
engine logs lnpt-edge-lnpt-edge-job > "$work/logs/kube-edge-job.log" 2>&1
[ "$code" = 0 ] || { tail -30 "$work/logs/kube-edge-job.log"; fail "the kube-played edge pod exited with $code"; }
stages=$(grep -o 'edge job: [^;]*' "$work/logs/kube-edge-job.log" | tail -1)
echo "$stages" | grep -q "export done" || fail "the kube-played edge job did not export: $stages"
note "- kube play (podman $(podman --version | awk '{print $3}')): deployment.yaml ($replicas replicas) + configmap.yaml: $serving server pod(s) SERVING by the image's exec probe command$why, uid $kube_uid, container healthcheck from the livenessProbe: $probe; edge/pod.yaml: exit 0 after $(( $(date +%s) - start )) s, $stages; lines changed: $changed in deployment.yaml (image), $changed_edge in edge/pod.yaml (image, hostPath)"
engine kube down "$work/kube/edge.yaml" > /dev/null 2>&1 || true
engine kube down "$work/kube/guidance.yaml" > /dev/null 2>&1 || true

say "summary ($summary)"
cat "$summary"
