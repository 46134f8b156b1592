"""Batch inference: score tables with a registered model, locally or on Ray Data.

- :class:`BatchScorer`: the per-chunk function (a pyarrow Table, pandas DataFrame or dict of
  numpy arrays in; the same rows with prediction columns out). Ray Data:
  ``ds.map_batches(BatchScorer, fn_constructor_kwargs={"model": "fraud/3"}, concurrency=4)``.
- :func:`run_batch` / ``mlserve batch``: Parquet/CSV files scored in chunks by worker
  processes into a Parquet dataset, checkpointed per chunk (a killed job resumes).

docs/batch.md has the details.
"""

from .job import CHUNK_ROWS, BatchResult, ChunkFailed, describe_job, input_files, run_batch
from .scorer import BATCH_ROWS, BatchScorer, PointInTimeJoin, output_columns, required_columns

__all__ = ["BATCH_ROWS", "CHUNK_ROWS", "BatchResult", "BatchScorer", "ChunkFailed",
           "PointInTimeJoin", "describe_job", "input_files", "output_columns",
           "required_columns", "run_batch"]
