"""CycleGAN rows of chapter 08: translate a simulated domain towards the Real surrogate, then train on the translation.

:func:`train_cyclegan` trains G: sim → Real and F: Real → sim (:mod:`xrlib.nets.cyclegan`; ResNet
generators with :func:`~xrlib.nets.cyclegan.generator_blocks` blocks, 70×70 PatchGANs, LSGAN, cycle weight 10)
on the *train* splits of both domains only (unpaired: the two batches are drawn independently), with the
``sim.cyclegan`` sizes, seeded, on the device. The generator is cached under
``<run>/sim/cyclegan/<domain>-<hash>/generator.pt``, the hash covering the sizes, the torch thread count it
trains with (``sim.threads``, else :func:`xrlib.core.runs.default_threads`; it changes the numbers), both dataset
builds and :data:`CYCLEGAN_VERSION`. :class:`CycleGANTask` trains one as an :mod:`xrlib.exec` task. :func:`translate_domain` translates every image of the simulated domain (its
masks unchanged) into ``<run>/sim/translated/<domain>``, a dataset folder with the same manifest rows
(new checksums) and its own build hash, which the segmentation training reads like any other.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from xrlib.core.atomic import save_npz_atomic, save_torch_atomic, sha256_file, write_text_atomic
from xrlib.core.errors import InputError
from xrlib.core.profiles import Profile
from xrlib.core.runs import resolve_device
from xrlib.data.shards import MANIFEST_COLUMNS, MANIFEST_FILE, extra_columns, read_manifest, shard_rows
from xrlib.nets.cyclegan import CYCLE_WEIGHT, PatchDiscriminator, ResnetGenerator, cycle_loss, generator_blocks, lsgan_loss
from xrlib.studies.sim.sources import domain_dir
from xrlib.training.config import build_hash
from xrlib.training.data import load_tensors

__all__ = ["CYCLEGAN_VERSION", "CycleGANTask", "cyclegan_settings", "train_cyclegan", "translate_domain", "translated_dir"]

CYCLEGAN_VERSION = 1


def translated_dir(run: Path, domain: str) -> Path:
    return Path(run) / "sim" / "translated" / domain


def cyclegan_settings(profile: Profile) -> dict:
    """The ``sim.cyclegan`` block: ``steps``, ``batch_size``, ``lr``, ``width`` (checked)."""
    block = profile.section("sim").get("cyclegan")
    where = profile.path or profile.name
    if not isinstance(block, dict):
        raise InputError(where, "sim: missing block 'cyclegan' (steps, batch_size, lr, width)")
    try:
        s = {"steps": int(block["steps"]), "batch_size": int(block["batch_size"]), "lr": float(block["lr"]),
             "width": int(block["width"])}
    except KeyError as exc:
        raise InputError(where, f"sim.cyclegan: missing key {exc.args[0]!r}") from None
    if min(s["steps"], s["batch_size"], s["width"]) < 1 or not s["lr"] > 0:
        raise InputError(where, "sim.cyclegan: steps, batch_size, width must be ≥ 1 and lr > 0")
    return s


def _train_images(ddir: Path) -> torch.Tensor:
    man = read_manifest(ddir)
    rows = man[(man["pool"] == "surrogate") & (man["split"] == "train")]
    if rows.empty:
        raise InputError(ddir, "CycleGAN: no train images")
    return load_tensors(rows, ddir)[0].float()


def _threads(profile: Profile) -> int:
    from xrlib.core.runs import default_threads
    from xrlib.studies.sim.settings import sim_settings

    threads = sim_settings(profile).threads
    return default_threads() if threads is None else int(threads)


def train_cyclegan(profile: Profile, run: Path, domain: str, device=None, progress: bool = False) -> Path:
    """Train (or load from cache) the CycleGAN ``domain`` → Real surrogate; the folder holding ``generator.pt``.

    It trains with the chapter's torch thread count (module docstring) and restores the process's count after."""
    run = Path(run)
    s = cyclegan_settings(profile)
    src, tgt = domain_dir(run, domain), domain_dir(run, "real")
    blocks = generator_blocks(profile.image_size)
    threads = _threads(profile)
    key = json.dumps({**s, "blocks": blocks, "cycle": CYCLE_WEIGHT, "seed": profile.seed, "src": build_hash(src),
                      "tgt": build_hash(tgt), "threads": threads, "v": CYCLEGAN_VERSION}, sort_keys=True)
    folder = run / "sim" / "cyclegan" / f"{domain}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if (folder / "generator.pt").is_file():
        return folder
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _fit(profile, s, blocks, src, tgt, key, folder, domain, device, progress)
    finally:
        torch.set_num_threads(previous)
    return folder


def _fit(profile: Profile, s: dict, blocks: int, src: Path, tgt: Path, key: str, folder: Path, domain: str, device,
         progress: bool) -> None:
    from tqdm.auto import tqdm

    dev = resolve_device(device)
    xs, xt = _train_images(src).to(dev), _train_images(tgt).to(dev)
    torch.manual_seed(int(profile.seed))
    g = torch.Generator().manual_seed(int(profile.seed))
    G, Fb = ResnetGenerator(blocks, s["width"]).to(dev), ResnetGenerator(blocks, s["width"]).to(dev)
    DY, DX = PatchDiscriminator(s["width"]).to(dev), PatchDiscriminator(s["width"]).to(dev)
    opt_g = torch.optim.Adam(list(G.parameters()) + list(Fb.parameters()), lr=s["lr"], betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(list(DY.parameters()) + list(DX.parameters()), lr=s["lr"], betas=(0.5, 0.999))
    t0, history = time.perf_counter(), []
    for step in tqdm(range(s["steps"]), desc=f"CycleGAN {domain}", disable=not progress):
        x = xs[torch.randint(0, len(xs), (s["batch_size"],), generator=g)]
        y = xt[torch.randint(0, len(xt), (s["batch_size"],), generator=g)]
        fy, fx = G(x), Fb(y)
        loss_g = (lsgan_loss(DY(fy), True) + lsgan_loss(DX(fx), True)
                  + cycle_loss(x, Fb(fy)) + cycle_loss(y, G(fx)))
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        loss_d = 0.5 * (lsgan_loss(DY(y), True) + lsgan_loss(DY(fy.detach()), False)
                        + lsgan_loss(DX(x), True) + lsgan_loss(DX(fx.detach()), False))
        opt_d.zero_grad()
        loss_d.backward()
        opt_d.step()
        history.append({"step": step + 1, "loss_g": float(loss_g), "loss_d": float(loss_d)})
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "history.csv", pd.DataFrame(history).to_csv(index=False))
    write_text_atomic(folder / "config.json", json.dumps({**json.loads(key), "seconds": time.perf_counter() - t0}, indent=1))
    save_torch_atomic(folder / "generator.pt", {"state": G.state_dict(), "blocks": blocks, "width": s["width"]})


@dataclass
class CycleGANTask:
    """Training the CycleGAN of ``domain`` (:func:`train_cyclegan`) as an :mod:`xrlib.exec` task (picklable).

    ``threads``: the chapter's ``sim.threads`` (``None``: :func:`xrlib.core.runs.default_threads`). The task only
    trains and caches the generator; the driver translates (:func:`translate_domain`), as drivers alone write
    manifests. Its result is the generator's folder (a string)."""

    profile: Profile
    run_dir: str
    domain: str
    threads: int | None = None
    device: str | None = None

    def __post_init__(self):
        if self.threads is None:
            from xrlib.core.runs import default_threads

            self.threads = default_threads()

    @property
    def key(self) -> str:
        return f"CycleGAN {self.domain}"

    def run(self) -> str:
        return str(train_cyclegan(self.profile, Path(self.run_dir), self.domain, self.device))


def cyclegan_seconds(run: Path, domain: str) -> float | None:
    """The recorded training time (s) of the CycleGAN whose translation of ``domain`` is on disk (``None``: no
    complete translation, or a CycleGAN folder without its record)."""
    try:
        info = json.loads((translated_dir(run, domain) / "build.json").read_text(encoding="utf-8"))
        cfg = json.loads((Path(run) / "sim" / "cyclegan" / info["cyclegan"] / "config.json").read_text(encoding="utf-8"))
        return float(cfg["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def translate_domain(profile: Profile, run: Path, domain: str, device=None, progress: bool = False) -> pd.DataFrame:
    """Translate every image of ``domain`` with its CycleGAN (trained first if needed) into :func:`translated_dir`."""
    run = Path(run)
    folder = train_cyclegan(profile, run, domain, device, progress)
    out = translated_dir(run, domain)
    digest = hashlib.sha256(f"{build_hash(domain_dir(run, domain))}|{folder.name}|v{CYCLEGAN_VERSION}".encode()).hexdigest()
    try:
        info = json.loads((out / "build.json").read_text(encoding="utf-8"))
        if info.get("hash") == digest and info.get("complete") is True:
            return read_manifest(out)
    except (OSError, ValueError):
        pass
    dev = resolve_device(device)
    ck = torch.load(folder / "generator.pt", map_location=dev, weights_only=False)
    G = ResnetGenerator(ck["blocks"], ck["width"]).to(dev).eval()
    G.load_state_dict(ck["state"])
    src = domain_dir(run, domain)
    man = read_manifest(src)
    rows = []
    for rel, grp in man.groupby("shard", sort=False):
        with np.load(src / rel) as z:
            arrays = {k: z[k] for k in z.files}
        with torch.no_grad():
            x = torch.from_numpy(arrays["image"].astype(np.float32) / 255.0)[:, None].to(dev)
            arrays["image"] = np.round(G(x)[:, 0].cpu().numpy() * 255).astype(np.uint8)
        save_npz_atomic(out / rel, arrays)
        r0 = grp.iloc[0]
        rows += shard_rows(str(r0.subject), str(r0.source), str(r0.pool), str(r0.split), rel, arrays, sha256_file(out / rel))
    cols = MANIFEST_COLUMNS + extra_columns(rows)
    write_text_atomic(out / MANIFEST_FILE, pd.DataFrame(rows, columns=cols).to_csv(index=False))
    write_text_atomic(out / "build.json", json.dumps({"hash": digest, "complete": True, "cyclegan": folder.name}))
    return read_manifest(out)
