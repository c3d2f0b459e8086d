#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice. Usage:
#   TPU_NAME=wm-v5e ZONE=us-west4-a ACCELERATOR=v5litepod-16 BUCKET=gs://my-bucket \
#   bash launch/tpu_vm.sh [create|setup|train|delete] [extra wm_jax.main flags]
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${BUCKET:?set BUCKET (gs://...)}"
ACCELERATOR="${ACCELERATOR:-v5litepod-16}"
VERSION="${VERSION:-v2-alpha-tpuv5-lite}"
CONFIG="${CONFIG:-configs/maskgwm_long.py}"
RUN="${RUN:-maskgwm_long}"
REPO="${REPO:-https://github.com/YOUR_ORG/wm_jax.git}"
action="${1:-train}"; [ $# -gt 0 ] && shift
ssh_all() { echo "+ [all workers] $*"; gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="$*"; }
case "$action" in
  create)
    echo "+ gcloud compute tpus tpu-vm create $TPU_NAME ($ACCELERATOR, spot)"
    gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" \
      --version="$VERSION" --spot ;;
  setup)
    ssh_all "git clone $REPO wm_jax 2>/dev/null || (cd wm_jax && git pull); cd wm_jax && python3 -m venv .venv && .venv/bin/pip install -q -e '.[tpu]'" ;;
  train)
    # same command on every worker; SIGTERM on preemption -> checkpoint + exit 0; rerun resumes
    ssh_all "cd wm_jax && .venv/bin/python -m wm_jax.main --config=$CONFIG --workdir=$BUCKET/$RUN --distributed $*" ;;
  delete)
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" --quiet ;;
  *) echo "unknown action $action (create|setup|train|delete)"; exit 2 ;;
esac
