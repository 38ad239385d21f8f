"""A tiny built study run: datasets of constructed disc images and the three trained study models.

Shared by the threat tests through the session fixture ``toy_run`` in ``conftest.py`` (built once).
"""

from __future__ import annotations

import json

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from xrlib.core.atomic import save_npz_atomic, sha256_file, write_text_atomic
from xrlib.core.profiles import PROFILES_DIR, validate_profile
from xrlib.data.shards import MANIFEST_COLUMNS
from xrlib.studies.rotation import study

S = 32
ALPHAS = np.arange(-20.0, 21.0, 10.0)  # one angle or two per α group: seconds, not minutes


def _profile():
    cfg = yaml.safe_load((PROFILES_DIR / "smoke.yml").read_text(encoding="utf-8"))
    cfg.update(name="toyrot", image_size=S)
    cfg["synthetic"] = {"alphas": [float(a) for a in ALPHAS], "cen_alphas": [0.0]}
    cfg["render"]["detector"] = S
    cfg["train"].update(epochs=1, batch_size=8, depth=3, base_channels=4)
    return validate_profile(cfg, "toyrot.yml")


def _images(rng, alphas):
    """A disc whose centre moves with α (the clavicle moving under rotation)."""
    yy, xx = np.mgrid[:S, :S]
    imgs, masks = [], []
    for a in alphas:
        cy, cx, r = 16 + rng.uniform(-2, 2), 16 + 0.4 * a, 5 + rng.uniform(-1, 1)
        m = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)
        img = np.clip(rng.normal(0.3, 0.08, (S, S)) + 0.45 * m, 0, 1)
        imgs.append(np.round(img * 255).astype(np.uint8))
        masks.append(m)
    return np.stack(imgs), np.stack(masks)


def build_toy_run(base: Path, syn_test: int = 2):
    """A run folder under ``base`` with a datasets build (``syn_test`` Syn_test subjects at 5 α) and the three
    trained study models. Building it again in the same folder rewrites identical shards and reuses the models."""
    run = Path(base) / "toyrot"
    root = run / "datasets"
    rng = np.random.default_rng(0)
    plan = [("surrogate", "train"), ("surrogate", "val"), ("surrogate", "test"), ("syn_train", "train"),
            ("syn_train", "val"), *[("syn_test", "test")] * int(syn_test)]
    rows = []
    for k, (pool, split) in enumerate(plan):
        sid = f"toy-v{k:03d}"
        alphas = rng.uniform(-2, 2, 4) if pool == "surrogate" else ALPHAS
        img, mask = _images(rng, alphas)
        rel = f"shards/{pool}/{sid}.npz"
        save_npz_atomic(root / rel, {"image": img, "mask": mask, "mask_left": mask, "mask_right": mask * 0})
        for j, a in enumerate(alphas):
            rows.append({"subject": sid, "source": "toy", "pool": pool, "split": split, "alpha": float(a), "tilt": 0.0,
                         "shift_x": 0.0, "shift_y": 0.0, "shift_z": 0.0, "physics": "naive", "dose_mas": 2.0,
                         "shard": rel, "index": j, "checksum": sha256_file(root / rel)})
    write_text_atomic(root / "manifest.csv", pd.DataFrame(rows, columns=MANIFEST_COLUMNS).to_csv(index=False))
    write_text_atomic(root / "build.json", json.dumps({"hash": "toyrot", "complete": True}))
    profile = _profile()
    results = study.train_study(profile, run, progress=False)
    return profile, run, results
