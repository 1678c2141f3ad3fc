from setuptools import find_packages, setup

setup(
    name="began-dist",
    version="0.1.0",
    description="Boundary Equilibrium GANs, from a laptop CPU to a Ray cluster",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["began_dist", "began_dist.*"]),
    # `began-dist arithmetic`'s default triples; the KID feature net (docs/evaluation.md)
    package_data={"began_dist.eval": ["triples_default.txt", "glyphnet.pt", "glyphnet.pt.json"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",  # wide on purpose: users bring their own CUDA build
        "ray[default,train,tune]>=2.60,<2.61",
        "h5py>=3.8",
        "pyarrow>=14",
        "pillow>=10",
        "tensorboard>=2.14",
        "tqdm>=4.60",
        "omegaconf>=2.3",
        "matplotlib>=3.7",
        "numpy>=1.24",
        "noto-cjk-sans-otc>=0.0.1",  # OFL CJK font for the built-in glyph data
        "fonttools>=4.40",  # glyph sources: font character maps (--charset common)
    ],
    extras_require={
        "test": ["pytest>=7.4", "pytest-timeout>=2.2", "ruff>=0.4"],
        # cluster/testbed's S3 store; 5.2.1 answers multipart uploads in a form Arrow rejects
        "testbed": ["moto[server]>=5.2.2,<5.3"],
    },
    entry_points={"console_scripts": ["began-dist=began_dist.cli:main"]},
)
