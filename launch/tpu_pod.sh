#!/usr/bin/env bash
# Runs one rlhf_jax.main command on every worker of a Cloud TPU VM slice, and keeps it running
# through preemptions: creates the slice (spot by default), installs the package on all workers,
# starts the same command on all of them at once (one JAX process per host; they find each other
# through the TPU metadata, see rlhf_jax/distributed.py), and when the slice is preempted deletes
# it, creates it again and reruns the command, which resumes from the latest checkpoint in the
# workdir. A command that fails on a healthy slice (a bad config, a NaN) is not retried.
#
# Usage: launch/tpu_pod.sh -n NAME -z ZONE -t ACCELERATOR_TYPE -r REPO_URL [-b GIT_REF]
#                          [-v RUNTIME_VERSION] [-m MAX_RESTARTS] [-s SETUP] [-o] -- MAIN_ARGS...
#   -r: a git URL of this repository that the workers can clone; -b: branch, tag or commit.
#   -s: a shell command run on every worker of each new slice (e.g. mounting the workdir).
#   -o: on-demand instead of spot capacity.
#   e.g. launch/tpu_pod.sh -n rlhf -z us-east5-a -t v5p-128 -r https://github.com/ME/rlhf_jax -- \
#          --config=configs/sft.py:175b --workdir=/mnt/shared/run175b
# The workdir must be storage that every worker and every re-created slice sees (a Filestore or
# other NFS mount, or a gcsfuse mount of a bucket). Check the fit first:
#   python -m rlhf_jax.aot --config=configs/sft.py:175b
set -euo pipefail

name=""
zone=""
accelerator=""
runtime="v2-alpha-tpuv5"
repo=""
ref="main"
max_restarts=20
setup="true"
capacity="--spot"
while getopts "n:z:t:v:r:b:m:s:o" opt; do
  case "${opt}" in
    n) name="${OPTARG}" ;;
    z) zone="${OPTARG}" ;;
    t) accelerator="${OPTARG}" ;;
    v) runtime="${OPTARG}" ;;
    r) repo="${OPTARG}" ;;
    b) ref="${OPTARG}" ;;
    m) max_restarts="${OPTARG}" ;;
    s) setup="${OPTARG}" ;;
    o) capacity="" ;;
    *) sed -n '2,22p' "$0" >&2; exit 2 ;;
  esac
done
shift $(( OPTIND - 1 ))
[[ "${1:-}" == "--" ]] && shift
if [[ -z "${name}" || -z "${zone}" || -z "${accelerator}" || -z "${repo}" || $# -eq 0 ]]; then
  sed -n '2,22p' "$0" >&2
  exit 2
fi

tpu() { gcloud compute tpus tpu-vm "$@" --zone="${zone}"; }
on_all_workers() { tpu ssh "${name}" --worker=all --command="$1"; }
state() { tpu describe "${name}" --format='value(state)' 2>/dev/null || echo MISSING; }

create() {
  echo "tpu_pod: creating ${name} (${accelerator}) in ${zone}" >&2
  # ${capacity} is empty or one flag: unquoted on purpose so that empty adds no argument.
  # shellcheck disable=SC2086
  tpu create "${name}" --accelerator-type="${accelerator}" --version="${runtime}" ${capacity}
  on_all_workers "set -e; [ -d rlhf_jax ] || git clone $(printf '%q' "${repo}") rlhf_jax;
    cd rlhf_jax && git fetch --all --quiet && git checkout --quiet $(printf '%q' "${ref}");
    python3 -m pip install --quiet --upgrade pip && python3 -m pip install --quiet -e '.[tpu-aot]'"
  on_all_workers "${setup}"
}

# The same command line on every worker, each argument quoted for the remote shell.
command="cd rlhf_jax && python3 -m rlhf_jax.main$(printf ' %q' "$@")"

restarts=0
while true; do
  case "$(state)" in
    READY) ;;
    MISSING) create ;;
    *) tpu delete "${name}" --quiet; create ;;  # PREEMPTED, TERMINATED, ...
  esac
  code=0
  on_all_workers "${command}" || code=$?
  if (( code == 0 )); then
    echo "tpu_pod: finished; delete the slice with: gcloud compute tpus tpu-vm delete" \
      "${name} --zone=${zone}" >&2
    exit 0
  fi
  if [[ "$(state)" == READY ]]; then
    echo "tpu_pod: the command failed with status ${code} on a healthy slice; not retrying" >&2
    exit "${code}"
  fi
  restarts=$(( restarts + 1 ))
  if (( restarts > max_restarts )); then
    echo "tpu_pod: preempted ${restarts} times; giving up" >&2
    exit 1
  fi
  echo "tpu_pod: slice lost (status ${code}); restart ${restarts}/${max_restarts}" >&2
done
