"""Spotlight-style embedding-based retrieval: two-tower training, Beam embedding
dataflows, versioned HNSW indexes and a hot-reloading retrieval service.

`requirements.lock` pins the whole environment (what `make` installs); the lists below
are the direct dependencies (what the code imports), pinned to the versions of that lock.
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
    # Every distribution the installed packages import (tests/test_setup_requires.py reads
    # the imports with ast and checks each is named here), plus what they load by name.
    install_requires=[
        "apache-airflow==3.3.2",
        "apache-airflow-task-sdk==1.3.2",  # airflow.sdk: the DAG and task decorators
        "apache-airflow-providers-apache-beam==6.3.1",
        # BeamRunPythonPipelineOperator refuses to be constructed without it (even on
        # DirectRunner), and the Dataflow runner needs it anyway.
        "apache-airflow-providers-google==22.8.0",
        "apache-airflow-providers-standard==1.21.0",
        "apache-beam[gcp]==2.77.0",
        "dask==2026.8.0",  # beam_jobs.dask_runner / dask_cluster: Beam on dask.distributed
        "distributed==2026.8.0",
        "fastapi==0.136.3",
        "google-api-core==2.44.0",
        "google-auth==2.62.2",
        "google-cloud-storage==3.17.1",
        "hnswlib==0.8.0",
        "httptools==0.9.0",  # uvicorn's httptools protocol, which serving.server subclasses
        "httpx==0.28.1",
        # `ebr report` draws the benchmark plots (benchmarks/plots.py, from the checkout).
        "matplotlib==3.11.2",
        "numpy==2.4.6",
        "orjson==3.13.0",
        "prometheus-client==0.26.0",
        "psutil==7.2.2",
        "pyarrow==25.0.1",
        "pydantic==2.14.3",
        "redis==8.1.0",
        "scipy==1.17.1",
        "starlette==1.10.0",
        "swagger-ui-py==25.7.1",  # Swagger UI for /docs, served by the service itself (offline)
        # The TensorBoard callback of models.training writes its summaries through it.
        "tensorboard==2.21.0",
        "tensorflow==2.21.0",
        "tensorflow-recommenders==0.7.7",
        "tf-keras==2.21.0",  # Keras 2, which TF_USE_LEGACY_KERAS=1 selects (TFRS needs it)
        "tqdm==4.70.1",
        "uvicorn==0.54.0",
        "uvloop==0.23.0",  # the service's event loop (uvicorn loop="uvloop")
    ],
    extras_require={
        "test": [
            "faiss-cpu==1.15.1",  # benchmarks/index_build.py: the other HNSW
            "gcp-storage-emulator==2026.7.19",
            "pytest==9.2.0",
            "pytest-timeout==2.4.0",
            "ruff==0.17.6",  # make lint: ruff check and ruff format --check
            "selenium==4.51.0",  # tests/test_browser.py
        ],
    },
    entry_points={"console_scripts": ["ebr = cli.main:main"]},
)
