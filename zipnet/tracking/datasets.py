"""The train and test splits as MLflow dataset inputs, so that the runs table's Dataset
column says what each run trained and was tested on.

Each split is one dataset: its name says the source, the split, its size and the sampling
seed (`embedded train 7291 seed 0`); its digest is the data fingerprint (sha256 over both
splits' tensors, as the `zipnet.data_fingerprint` tag holds it whole); its context is
`train` or `test`. Only the description is logged, never the digits.
"""

from __future__ import annotations

import json

DIGEST_CHARS = 12  # the fingerprint as zipnet-train prints it; MLflow keeps at most 36
SOURCE_KEYS = ("source", "path", "root", "resize")  # where the digits came from, as configured


def name(data, split: str, size: int) -> str:
    return f"{data.get('source')} {split} {size} seed {data.get('seed')}"


def inputs(data, digits) -> list:
    """`mlflow.entities.DatasetInput`s for the train and test splits of `digits`, drawn as the
    data config `data` says."""
    import numpy as np
    from mlflow.data.schema import TensorDatasetSchema
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.types import Schema, TensorSpec
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    schema = TensorDatasetSchema(
        features=Schema([TensorSpec(np.dtype(np.float32), (-1, 1, 16, 16), "digit")]),
        targets=Schema([TensorSpec(np.dtype(np.int64), (-1,), "label")]),
    )
    source = {key: str(data.get(key)) for key in SOURCE_KEYS if data.get(key) is not None}
    out = []
    for split, labels in (("train", digits.train_y), ("test", digits.test_y)):
        counts = np.bincount(labels.cpu().numpy(), minlength=10).tolist()
        profile = {"num_rows": len(labels), "fingerprint": digits.fingerprint, "class_counts": counts}
        dataset = Dataset(
            name=name(data, split, len(labels)),
            digest=digits.fingerprint[:DIGEST_CHARS],
            source_type="zipnet",
            source=json.dumps(source),
            schema=json.dumps(schema.to_dict()),
            profile=json.dumps(profile),
        )
        out.append(DatasetInput(dataset, tags=[InputTag(MLFLOW_DATASET_CONTEXT, split)]))
    return out
