"""Training: one seeded, resumable, cached fit loop with recipe hooks, and its tasks.

``config`` (TrainConfig, cache hash, folder names), ``data`` (the images of named sets),
``recipes`` (hook plug-ins), ``checkpoint`` (files, RNG states, results, legacy adoption,
``load_best``), ``loop`` (``train_model``), ``tasks`` (``TrainTask``, ``train_all``), ``recon`` (the ``recon-head``
recipe: an auxiliary reconstruction head for OOD scores), ``added`` (the ``added-samples`` recipe: extra
training samples from a file).
"""

from xrlib.training.checkpoint import HISTORY_COLUMNS, TrainResult, load_best
from xrlib.training.config import TRAIN_SETS, TRAIN_VERSION, TrainConfig, safe_name
from xrlib.training.data import select_images
from xrlib.training.loop import train_model
from xrlib.training.recipes import Recipe, StepContext, get_recipe, register_recipe
from xrlib.training.tasks import TrainTask, train_all
from xrlib.training.recon import ReconHeadTraining, load_seg_recon  # registers the recon-head recipe
from xrlib.training.added import AddedSamples, save_added  # registers the added-samples recipe
from xrlib.training.randomization import DomainRandomization  # registers the domain_randomization recipe
from xrlib.training.adda import ADDA  # registers the adda recipe

__all__ = ["HISTORY_COLUMNS", "TRAIN_SETS", "TRAIN_VERSION", "Recipe", "StepContext", "TrainConfig", "TrainResult",
           "TrainTask", "ReconHeadTraining", "AddedSamples", "save_added", "DomainRandomization", "ADDA", "get_recipe",
           "load_best", "load_seg_recon", "register_recipe", "safe_name", "select_images", "train_all",
           "train_model"]
