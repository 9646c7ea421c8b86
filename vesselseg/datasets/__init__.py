"""Dataset readers, found by name: drive, chase, hrf, stare, folder, synthetic."""
from . import chase, drive, folder, hrf, stare, synthetic  # noqa: F401  (registers the readers)
from .base import ReadResult, Sample, get_reader, read_dataset, reader_names, register_reader
from .synthetic import generate_fundus, write_synthetic_dataset

__all__ = ["ReadResult", "Sample", "generate_fundus", "get_reader", "read_dataset", "reader_names",
           "register_reader", "write_synthetic_dataset"]
