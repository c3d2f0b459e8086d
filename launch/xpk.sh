#!/usr/bin/env bash
# Train on a GKE TPU cluster with xpk. Usage:
#   CLUSTER=my-cluster PROJECT=my-project ZONE=us-east5-b TPU_TYPE=v5p-64 BUCKET=gs://my-bucket \
#   IMAGE=gcr.io/my-project/wm_jax:latest bash launch/xpk.sh [build|run|delete] [extra flags]
# The image: any Python 3.11 base with `pip install -e '.[tpu]'` of this repository at /app.
set -euo pipefail
: "${CLUSTER:?}" "${PROJECT:?}" "${ZONE:?}" "${BUCKET:?}" "${IMAGE:?}"
TPU_TYPE="${TPU_TYPE:-v5p-64}"
NUM_SLICES="${NUM_SLICES:-1}"
CONFIG="${CONFIG:-configs/maskgwm_long.py}"
WORKLOAD="${WORKLOAD:-wm-$(date +%m%d-%H%M)}"
action="${1:-run}"; [ $# -gt 0 ] && shift
case "$action" in
  build)
    echo "+ docker build -t $IMAGE ."
    printf 'FROM python:3.11-slim\nWORKDIR /app\nCOPY . /app\nRUN pip install -q -e ".[tpu]"\n' | docker build -t "$IMAGE" -f - .
    docker push "$IMAGE" ;;
  run)
    # multi-slice: set NUM_SLICES>1 and --config.mesh.dcn_data=$NUM_SLICES (data parallel over DCN)
    cmd="python -m wm_jax.main --config=$CONFIG --workdir=$BUCKET/$WORKLOAD --distributed --config.mesh.dcn_data=$NUM_SLICES $*"
    echo "+ xpk workload create $WORKLOAD: $cmd"
    xpk workload create --cluster="$CLUSTER" --project="$PROJECT" --zone="$ZONE" \
      --workload="$WORKLOAD" --tpu-type="$TPU_TYPE" --num-slices="$NUM_SLICES" \
      --docker-image="$IMAGE" --command="$cmd" ;;
  delete)
    xpk workload delete --cluster="$CLUSTER" --project="$PROJECT" --zone="$ZONE" --workload="$WORKLOAD" ;;
  *) echo "unknown action $action (build|run|delete)"; exit 2 ;;
esac
