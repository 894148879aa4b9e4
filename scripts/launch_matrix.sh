#!/bin/bash
# Every launcher and the job-ending failures, as a user types them, on this machine:
#
#   bash scripts/launch_matrix.sh            # from the repository root; about 2 minutes on 2 cores
#
# Prints a markdown table: exit code, `covid-ddp-train: error:` lines, warnings, tracebacks
# printed by the training processes (torchrun's own ChildFailedError summary not counted),
# the rank torchrun's summary names as the root cause, and seconds to the end. The full-disk
# row mounts a 16 MB tmpfs and needs root (skipped otherwise). The offline row tries the real
# MCFAM URL once, as the README's recipe does.
set -u
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export OMP_NUM_THREADS=1 XDG_CACHE_HOME="$work/cache" PYTHONPATH="$PWD"

python - "$work" <<'PY'
import sys, pathlib, numpy as np
from covid_ddp.data.synthetic import make_synthetic
for name, bad in (("small", False), ("bad", True)):
    folder = pathlib.Path(sys.argv[1]) / name
    folder.mkdir()
    images, labels = make_synthetic(400 if not bad else 100, seed=3)
    if bad:
        labels[7] = 0  # a label row that is not one-hot
    np.savez(folder / "train_images64.npz", train_images=images)
    np.savez(folder / "train_labels.npz", train_labels=labels)
PY
echo "not a folder" > "$work/file"
small="--data-dir $work/small --epochs 2 --batch-size 40 --eval-batch-size 60 --log-images-every 0"

row() {  # name, command...
    local name=$1; shift
    rm -rf "$work/run"
    local started=$(date +%s.%N)
    "$@" > "$work/out" 2> "$work/err"
    local code=$? ended=$(date +%s.%N)
    local tracebacks=$(( $(grep -c "Traceback (most recent call last)" "$work/err") - $(grep -c "errors.ChildFailedError:" "$work/err") ))
    local root=$(awk '/Root Cause/{found=1} found && /rank      :/{print "rank " $3; exit}' "$work/err")
    printf "| %s | %s | %s | %s | %s | %s | %.1f |\n" "$name" "$code" "$(grep -c 'covid-ddp-train: error:' "$work/err")" \
        "$(grep -c 'covid-ddp-train: warning:' "$work/err")" "$tracebacks" "${root:--}" "$(echo "$ended - $started" | bc)"
}
port() { python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
torchrun2() { python -m torch.distributed.run --nproc_per_node 2 --master_addr 127.0.0.1 --master_port "$(port)" "$@"; }

echo "| scenario (no --cpu anywhere) | exit | error lines | warnings | worker tracebacks | launcher's root cause | seconds |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
row "python launch/train.py" python launch/train.py $small --output-dir "$work/run"
row "torchrun --nproc_per_node 2" torchrun2 launch/train.py $small --output-dir "$work/run"
row "accelerate launch --config_file accelerate_config.yaml" \
    accelerate launch --config_file accelerate_config.yaml launch/train.py $small --output-dir "$work/run"
row "accelerate launch --multi_gpu --num_processes 2" accelerate launch --multi_gpu --num_processes 2 \
    --num_machines 1 --mixed_precision no --dynamo_backend no launch/train.py $small --output-dir "$work/run"
row "the README's recipe, offline (real URL)" \
    accelerate launch --config_file accelerate_config.yaml launch/train.py --output-dir "$work/run"
row "torchrun, download refused" torchrun2 launch/train.py --mcfam-url http://127.0.0.1:9/ --output-dir "$work/run"
row "torchrun, labels not one-hot" torchrun2 launch/train.py --data-dir "$work/bad" --output-dir "$work/run"
row "torchrun, --output-dir is a file" torchrun2 launch/train.py $small --output-dir "$work/file"
if [ "$(id -u)" = 0 ] && mkdir -p "$work/disk" && mount -t tmpfs -o size=16m tmpfs "$work/disk" 2>/dev/null; then
    row "torchrun, 16 MB disk full at epoch 2's checkpoint" torchrun2 launch/train.py $small --output-dir "$work/disk/run"
    umount "$work/disk"
fi
row "torchrun, a TensorBoard figure raises" \
    torchrun2 tests/helpers/faulty_train.py figure:1 $small --log-images-every 1 --output-dir "$work/run"
row "WORLD_SIZE=2 python launch/train.py" env WORLD_SIZE=2 RANK=0 python launch/train.py $small --output-dir "$work/run"
