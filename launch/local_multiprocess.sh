#!/usr/bin/env bash
# Runs one rlhf_jax.main command as N local CPU processes that form one multi-process JAX run
# (gloo CPU collectives), each with D fake devices: what a TPU pod or GPU cluster does, on a laptop.
#
# Usage: launch/local_multiprocess.sh [-n PROCESSES] [-d DEVICES_PER_PROCESS] [-p PORT]
#                                     [-l LOG_DIR] -- MAIN_ARGS...
#   e.g. launch/local_multiprocess.sh -n 2 -d 2 -- --config=configs/sft.py --workdir=runs/mp
#
# Process 0 writes to this terminal; process i > 0 to LOG_DIR/process_<i>.log (default: a new
# temporary folder). If any process fails the others are stopped, and the script exits with the
# first failure's status.
set -euo pipefail

processes=2
devices=2
port=$(( 20000 + RANDOM % 20000 ))
log_dir=""
while getopts "n:d:p:l:" opt; do
  case "${opt}" in
    n) processes="${OPTARG}" ;;
    d) devices="${OPTARG}" ;;
    p) port="${OPTARG}" ;;
    l) log_dir="${OPTARG}" ;;
    *) sed -n '2,12p' "$0" >&2; exit 2 ;;
  esac
done
shift $(( OPTIND - 1 ))
[[ "${1:-}" == "--" ]] && shift
log_dir="${log_dir:-$(mktemp -d)}"
mkdir -p "${log_dir}"

pids=()
stop_all() {
  for pid in "${pids[@]}"; do
    kill "${pid}" 2>/dev/null || true
  done
}
trap stop_all INT TERM

# Each process must see only its own D CPU devices; XLA_FLAGS is read at JAX start-up.
run_one() {
  env JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=${devices}" \
      python -m rlhf_jax.main "${main_args[@]}" "--coordinator_address=localhost:${port}" \
      "--num_processes=${processes}" "--process_id=$1"
}

main_args=("$@")
for (( i = 0; i < processes; i++ )); do
  if (( i == 0 )); then
    run_one "${i}" &
  else
    run_one "${i}" > "${log_dir}/process_${i}.log" 2>&1 &
  fi
  pids+=("$!")
done

status=0
for pid in "${pids[@]}"; do
  code=0
  wait "${pid}" || code=$?
  if (( code != 0 && status == 0 )); then
    status=${code}
    echo "local_multiprocess: a process exited with status ${code}; logs in ${log_dir}" >&2
    stop_all
  fi
done
exit "${status}"
