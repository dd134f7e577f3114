from setuptools import find_packages, setup

setup(
    name="condinst-percep",
    version="0.1.0",
    description="CondInst instance segmentation trained with the generic perceptual loss "
    "(Liu et al., CVPR 2021); AdelaiDet-compatible, pure PyTorch.",
    packages=find_packages(exclude=("tests", "tests.*", "benchmarks", "tools", "configs")),
    python_requires=">=3.10",
    install_requires=[
        "torch",
        "fvcore",
        "iopath",
        "pycocotools",
        "opencv-python-headless",
        "scikit-image",
        "shapely",
        "numpy",
        "pyyaml",
        "tabulate",
        "tqdm",
        "matplotlib",
        "tensorboard",
    ],
    extras_require={
        # ONNX export (torch.onnx's dynamo exporter) and running exported files.
        "export": ["onnx", "onnxruntime", "onnxscript"],
        # scipy: the p-values of tools/ablate_stats.py.
        "test": ["pytest", "scipy", "onnx", "onnxruntime", "onnxscript"],
    },
)
