"""TRANSITIONAL re-exports of the names of the former ``xrlib.data.datasets`` (remove once callers import the modules below).

The datasets code now lives in one module per concern; see :mod:`xrlib.data`.
"""

from xrlib.data.build import BUILD_FILE, DATASETS_VERSION, build_datasets, dataset_hash  # noqa: F401
from xrlib.data.pools import DATASET_NAMES, POOLS, SPLITS, assign_pools, select, surrogate_poses, table1  # noqa: F401
from xrlib.data.preprocess import preprocess  # noqa: F401
from xrlib.data.real import RealItem, load_real_folder  # noqa: F401
from xrlib.data.recipes import preprocessing_example  # noqa: F401
from xrlib.data.shards import MANIFEST_COLUMNS, MANIFEST_FILE, ShardDataset, pool_samples, read_manifest  # noqa: F401
from xrlib.data.subjects import SubjectSource, cohort_subjects, subjects_from_volumes  # noqa: F401
