"""Data: sources that load and split, and the DataModule that batches them for training."""

from genlab.data.datamodule import SeededBatches, TensorDataModule
from genlab.data.sources import SOURCES, Dataset, DataSpec, Split, load_dataset, register_source

__all__ = ["SOURCES", "DataSpec", "Dataset", "Loaded", "SeededBatches", "Split", "TensorDataModule", "load_dataset",
           "register_source"]
