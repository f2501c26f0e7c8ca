"""What the export-parity tests share (test modules import from here, never from each
other): a perturbed model, frames of a camera panning over a photo, and those frames
stepped through the runtime with the observation PyTorch needs for each."""

import cv2
import numpy as np
import skimage.data
import torch

from latent_memory_ros import cues as cue_defs
from latent_memory_ros import geometry
from latent_memory_ros.runtime import StudentRuntime
from latent_memory_training.export.onnx_export import reference_camera
from latent_memory_training.models.config import ModelConfig
from latent_memory_training.models.student import LocalisationModel


def perturbed_model(cell: str) -> LocalisationModel:
    """A model whose zero-initialised heads and cell weights are perturbed: with zeros
    there, parity would hold trivially for them."""
    torch.manual_seed(0)
    model = LocalisationModel(ModelConfig(cell=cell))
    with torch.no_grad():
        heads = (model.delta, model.log_var, model.speed)
        for layer in (*heads, model.query_pose, model.query_log_var):
            layer.weight.normal_(0.0, 0.05)
        for p in model.cell.parameters():
            if not p.any():
                p.normal_(0.0, 0.05)
    return model.eval()


def camera_frames(n: int):
    """A camera panning over a real photo, with odometry that roughly agrees."""
    photo = cv2.resize(skimage.data.astronaut(), (960, 720))
    rng = np.random.default_rng(0)
    for t in range(n):
        x = 40 + 2 * t
        rgb = np.ascontiguousarray(photo[60:540, x : x + 640])
        odom = np.concatenate(
            [rng.normal(0, 0.01, 3), geometry.rotvec_to_quat(rng.normal(0, 0.01, 3))]
        )
        yield rgb, (None if t == 0 else odom)


def stepped(rt: StudentRuntime, frames):
    """Each frame stepped through the runtime, with the observation the PyTorch model
    needs for the same frame (the runtime's pre-processing and cues): (rgb, result, obs)."""
    cfg = cue_defs.CueConfig()
    k = cue_defs.scale_intrinsics(np.array(rt.spec.intrinsics), cfg.width / rt.spec.image_width)
    prev = None
    for rgb, odom in frames:
        res = rt.step(rgb, odom_motion=odom, dt=1 / 30)
        gray = cue_defs.to_gray(rgb, cfg)
        obs = {
            "image": torch.from_numpy(rt.preprocess(rgb)),
            "odom": torch.tensor(
                [[*(odom if odom is not None else [0, 0, 0, 0, 0, 0, 1]), float(odom is not None)]]
            ).float(),
            "dt": torch.tensor([[1 / 30]]),
            "cues": torch.from_numpy(cue_defs.two_view_cues(prev, gray, k, cfg))[None],
            "camera": reference_camera(),
        }
        prev = gray
        yield rgb, res, obs
