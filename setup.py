"""Packaging for treescale: a container registry storing blobs on a tree of relays."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="treescale",
    version="0.1.0",
    description="An OCI distribution registry storing chunks on a tree of relays",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=[*find_packages(include=["treescale", "treescale.*"]), "twisted.plugins"],
    package_data={"treescale": ["py.typed"]},
    include_package_data=True,
    install_requires=[
        "Twisted[tls]>=23.10,<28",
        "treq>=23.11,<28",
        "klein>=23.12,<27",
        "service-identity>=23.1,<26",
        "pyOpenSSL>=23.2,<28",
        "bcrypt>=4.0,<6",
        "PyJWT[crypto]>=2.8,<3",
        "prometheus_client>=0.20,<1",
        "blake3>=0.4,<2",
    ],
    entry_points={"console_scripts": ["treescale = treescale.cli:main"]},
    extras_require={
        "test": [
            "pytest>=8,<10",
            "pytest-twisted>=1.14,<2",
            "hypothesis>=6.100,<7",
            "oras>=0.2.20,<0.3",
            "pillow>=10,<13",
        ],
        "lint": ["ruff>=0.6", "mypy>=1.10", "mypy-zope>=1.0", "tox>=4"],
    },
)
