#!/usr/bin/env bash
# One node's part of a multi-node trainwright run: builds this node's `accelerate launch` command from
# Slurm's variables and runs it (exec, so signals from srun reach the launcher). train_multinode.sbatch
# starts it once per node through srun; every node's processes form one world.
#
#   launch_node.sh RECIPE RUN_DIR [key.path=value ...]
#
# From Slurm: SLURM_NODEID (this node's machine rank), SLURM_NNODES, SLURM_JOB_NODELIST (the main
# address is its first host, from `scontrol show hostnames`), SLURM_JOB_ID (the default port).
# Environment:
#   TRAINWRIGHT_ACCELERATE_CONFIG  accelerate config (default accelerate_configs/cpu_2proc.yaml)
#   TRAINWRIGHT_PROCS_PER_NODE     processes on each node (default 1; e.g. the node's GPU count)
#   TRAINWRIGHT_MAIN_ADDR          main address (default: the first host of SLURM_JOB_NODELIST)
#   TRAINWRIGHT_MAIN_PORT          rendezvous port (default: 20000 + job id % 20000)
#   TRAINWRIGHT_DRY_RUN            if set: print the command instead of running it
set -euo pipefail

if (($# < 2)); then
    echo "usage: launch_node.sh RECIPE RUN_DIR [key.path=value ...] (normally started by train_multinode.sbatch)" >&2
    exit 2
fi
recipe=$1 run_dir=$2
shift 2
node=${SLURM_NODEID:?launch_node.sh: SLURM_NODEID is not set (run it through srun)}
nodes=${SLURM_NNODES:?launch_node.sh: SLURM_NNODES is not set (run it through srun)}
per_node=${TRAINWRIGHT_PROCS_PER_NODE:-1}
main=${TRAINWRIGHT_MAIN_ADDR:-}
if [[ -z $main ]]; then
    main=$(scontrol show hostnames "${SLURM_JOB_NODELIST:?launch_node.sh: SLURM_JOB_NODELIST is not set}" | head -n 1)
fi
port=${TRAINWRIGHT_MAIN_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))}

command=(accelerate launch --config_file "${TRAINWRIGHT_ACCELERATE_CONFIG:-accelerate_configs/cpu_2proc.yaml}"
    --num_machines "$nodes" --machine_rank "$node" --num_processes "$((nodes * per_node))"
    --main_process_ip "$main" --main_process_port "$port"
    -m trainwright train "$recipe" "$@" --run-dir "$run_dir")
if [[ -n ${TRAINWRIGHT_DRY_RUN:-} ]]; then
    printf '%q ' "${command[@]}"
    echo
    exit 0
fi
exec "${command[@]}"
