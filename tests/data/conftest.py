"""Fixtures for the data tests: one tiny synthetic_worlds build per session, in a temp data_dir."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tfds_data_dir(tmp_path_factory):
    """A temporary TFDS data_dir (tests never write into the repo or ~/tensorflow_datasets)."""
    return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="session")
def tiny_builder(tfds_data_dir):
    """``synthetic_worlds/tiny`` prepared (array_record) in the session's temp data_dir."""
    import tensorflow_datasets as tfds

    import mirage_jax.data  # noqa: F401  (registers the builders)

    tfds.disable_progress_bar()
    builder = tfds.builder("synthetic_worlds/tiny", data_dir=str(tfds_data_dir))
    builder.download_and_prepare()
    return builder


@pytest.fixture(scope="session")
def tiny_source(tiny_builder):
    """The train split of ``synthetic_worlds/tiny`` as a TFDS random-access data source."""
    return tiny_builder.as_data_source(split="train")

