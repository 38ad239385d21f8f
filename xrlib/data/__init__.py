"""The study's datasets: pools and splits of virtual subjects, rendered into shards with a manifest.

Modules (import names from them, e.g. ``from xrlib.data.build import build_datasets``):

* :mod:`xrlib.data.preprocess` — ``resize_bilinear`` (the package's one bilinear resize), ``preprocess``.
* :mod:`xrlib.data.pools` — ``POOLS``, ``SPLITS``, ``DATASET_NAMES``, ``assign_pools`` (splits by patient),
  ``split_mode``, ``rank_sources``, ``source_folds``, ``leakage_note``, ``real_splits``, ``surrogate_poses``,
  ``select`` (named sets), ``table1``.
* :mod:`xrlib.data.subjects` — ``SubjectSource``, ``subjects_from_volumes``, ``cohort_subjects``.
* :mod:`xrlib.data.real` — ``RealItem``, ``load_real_folder``, ``real_fingerprint``.
* :mod:`xrlib.data.recipes` — ``PoolRecipe``, ``AnglesRecipe``, ``JitteredRecipe``, ``study_recipes``,
  ``render_subject``, ``preprocessing_example``.
* :mod:`xrlib.data.shards` — ``MANIFEST_COLUMNS``, ``read_manifest``, ``ShardDataset``, ``pool_samples``.
* :mod:`xrlib.data.build` — ``build_datasets``, ``build_folds``, ``fold_dir``, ``dataset_hash``,
  ``build_fingerprint``, ``DATASETS_VERSION``, the shard tasks.
"""
