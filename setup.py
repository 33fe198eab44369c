"""Spotlight-style embedding-based retrieval: two-tower training, Beam embedding
dataflows, versioned HNSW indexes and a hot-reloading retrieval service.

`requirements.lock` pins the whole environment (what `make` installs); the ranges
below are the direct dependencies, pinned to the versions that lock was made with.
"""

from setuptools import find_packages, setup

PACKAGES = [
    "artifacts",
    "beam_jobs",
    "cli",
    "config",
    "index_builder",
    "models",
    "orchestration",
    "serving",
    "warehouse",
]

setup(
    name="spotlight-ebr",
    version="0.1.0",
    description="Embedding-based retrieval with two-tower models, after Snap Spotlight",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=[p for name in PACKAGES for p in (name, f"{name}.*")]),
    package_data={"config": ["*.toml"]},
    install_requires=[
        "apache-airflow==3.3.2",
        "apache-airflow-providers-apache-beam==6.3.1",
        # BeamRunPythonPipelineOperator refuses to be constructed without it (even on
        # DirectRunner), and the Dataflow runner needs it anyway.
        "apache-airflow-providers-google==22.8.0",
        "apache-airflow-providers-standard==1.21.0",
        "apache-beam[gcp]==2.77.0",
        "google-cloud-storage==3.17.1",
        "hnswlib==0.8.0",
        "matplotlib==3.11.2",
        "numpy==2.4.6",
        "pandas==3.1.1",
        "prometheus-client==0.26.0",
        "pyarrow==25.0.1",
        "pydantic==2.14.3",
        "tensorboard==2.21.0",
        "tensorflow==2.21.0",
        "tensorflow-recommenders==0.7.7",
        "tf-keras==2.21.0",
        "swagger-ui-py==25.7.1",  # Swagger UI for /docs, served by the service itself (offline)
        "tqdm==4.70.1",
    ],
    extras_require={
        "test": [
            "faiss-cpu==1.15.1",
            "gcp-storage-emulator==2026.7.19",
            "pytest==9.2.0",
            "pytest-timeout==2.4.0",
            "ruff==0.17.6",  # make lint: ruff check and ruff format --check
        ],
    },
    entry_points={"console_scripts": ["ebr = cli.main:main"]},
)
