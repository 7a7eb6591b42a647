#!/bin/bash
# Run one scenario as a Slurm job array, one shard per task, then merge.
#
#   sbatch simulations/deploy/slurm-array.sh                      # submits the array and the merge
#
# Task I of N runs the seeds with index % N == I (N = the array size, taken from Slurm so the two cannot
# disagree). The merge job runs only if every task succeeded (afterok); its summary is byte-identical (wall
# time aside) to a single-machine run. Run from the repository root, with `safebet` on PATH (for example
# target/release/safebet after `cargo build --release`).
#
#SBATCH --job-name=safebet-sim
#SBATCH --array=0-7
#SBATCH --cpus-per-task=2
#SBATCH --mem=2G
#SBATCH --time=04:00:00
#SBATCH --output=out/slurm/%x-%A_%a.log
set -euo pipefail

SCENARIO=${SCENARIO:-simulations/scenarios/kazerouni2017.toml}
SEEDS=${SEEDS:-400}
RESULTS=${RESULTS:-out/$(basename "$SCENARIO" .toml)}

if [[ -z "${SLURM_ARRAY_TASK_ID:-}" ]]; then
  echo "submit with sbatch: this script runs as one task of a job array" >&2
  exit 2
fi

safebet simulate "$SCENARIO" \
  --seeds "$SEEDS" \
  --threads "$SLURM_CPUS_PER_TASK" \
  --shard "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT" \
  --out "$RESULTS/shard-$SLURM_ARRAY_TASK_ID"

# The first task submits the merge, to run once the whole array has succeeded.
if [[ "$SLURM_ARRAY_TASK_ID" == "$SLURM_ARRAY_TASK_MIN" ]]; then
  sbatch --dependency="afterok:$SLURM_ARRAY_JOB_ID" --job-name=safebet-sim-merge \
    --output="out/slurm/%x-%j.log" --cpus-per-task=1 --mem=2G --time=00:30:00 \
    --wrap "safebet simulate merge $RESULTS/shard-* --out $RESULTS/merged"
fi
