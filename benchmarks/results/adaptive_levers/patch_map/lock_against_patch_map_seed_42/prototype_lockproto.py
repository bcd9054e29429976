"""The prototype behind this folder's lock: the main job, with the lock's learned map (``--colour_map_every``) a
patch map fitted at the attacker's learning rate instead of a colour map. Not part of the package (the lever was
rejected); run it as ``accelerate launch .../prototype_lockproto.py`` plus the main job's flags."""

import dataclasses
import runpy
import sys
from pathlib import Path

from hf_encoderlock.lock import trainer as trainer_module
from hf_encoderlock.probing import learned_transforms as lt

MAIN_JOB = Path(__file__).resolve().parents[5] / "examples" / "lock_vit.py"


class LockPatchMap(lt.PatchMap):
    def layout(self):
        return {"patch_size": self.patch_size}  # what the lock state records of its map


def fit_patch_map_pixels(encoder, pixels, labels, hidden, fit=None, num_classes=None):
    """Takes the place of fit_colour_map_to_pixels in the lock (``hidden`` is ignored)."""
    fit = dataclasses.replace(fit or lt.LearnedMapFit(), learning_rate=1e-3)
    side = getattr(encoder, "patch_size", None) or 8
    channels = pixels.shape[1]
    return lt._fit_input_map(
        encoder, pixels, labels, lambda *scale: LockPatchMap(channels, side, *scale), fit, num_classes
    )


trainer_module.fit_colour_map_to_pixels = fit_patch_map_pixels
sys.argv = [str(MAIN_JOB), *sys.argv[1:]]
runpy.run_path(str(MAIN_JOB), run_name="__main__")
