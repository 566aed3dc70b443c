"""Fixtures shared by every suite."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from services.ml.tracking import local_tracking_uri


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """A local MLflow store with its tables created, made once a session: creating one costs seconds
    of schema migrations, and every answer of the ml service now names a registered version."""
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("mlflow-template")
    (folder / "mlflow").mkdir()
    uri = local_tracking_uri(folder)
    MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models()
    return folder / "mlflow" / "mlflow.db"


@pytest.fixture
def data_dir(tmp_path, mlflow_template) -> Path:
    """A fresh DATA_DIR whose MLflow store already has its tables (and nothing else)."""
    (tmp_path / "mlflow").mkdir()
    shutil.copyfile(mlflow_template, tmp_path / "mlflow" / "mlflow.db")
    return tmp_path
