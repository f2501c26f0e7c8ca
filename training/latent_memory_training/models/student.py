"""The localisation model: image encoder + motion token + memory cell + pose heads.

Per frame it reads the image, the wheel-odometry motion of the camera (when given) and
the classical two-view cues, and integrates a pose. The lessons of the first experiments
(docs/lessons.md in shared/) shape the heads:

- with odometry the motion is odometry's minus a tracked rotation bias, and nothing
  else: a free learned correction moved good odometry away on runs it had not seen
  (lessons.md, "A third look"), so "safe before clever" leaves odometry alone unless
  a filter has the evidence;
- the bias is a Kalman filter state (rad/s, per axis) with its own variance, nothing
  in it learned: it is measured as odometry rotation - vision rotation, innovations a
  chi-square test rejects are ignored, and the correction applied is the estimate
  soft-thresholded by two standard deviations and the vision rotation's own
  systematic error, so good odometry is left alone and a drifting one loses the part
  of its drift that stands out;
- without odometry the rotation comes from the cues and the translation is a learned
  speed along the camera's forward axis, both plus a learned correction.
"""

from __future__ import annotations

import torch
from torch import nn

from latent_memory_ros.cues import (
    CUE_DIM,
    CUE_FLOW,
    CUE_FLOW_MAGNITUDE,
    CUE_ROTATION,
    CUE_ROTATION_ONLY,
    CUE_VALID,
)
from latent_memory_ros.model_format import ODOM_ROTATION, ODOM_TRANSLATION, ODOM_VALID
from latent_memory_training.models import so3
from latent_memory_training.models.cells import (
    CELLS,
    REFERENCE_CELLS,
    MemoryCell,
    State,
    TransformerBlock,
)
from latent_memory_training.models.config import ModelConfig
from latent_memory_training.models.place import PlaceMemory

# Per-frame motions are centimetres and centiradians; this brings them to O(1).
MOTION_SCALE = 30.0

# The drift filter (rad/s per axis). Its prior: world.md v2 drifts up to 0.8 mrad per
# frame at 30 Hz (0.024 rad/s); a standard deviation of 0.02 rad/s covers that.
BIAS_PRIOR_VAR = 0.02**2
# Innovations beyond this squared Mahalanobis distance (chi-square, 3 dof, p = 0.001)
# are outliers: a wrong two-view fit, a moving object, a slipping wheel.
BIAS_GATE_CHI2 = 16.27
# The correction applied is the estimate soft-thresholded by what it cannot tell from
# zero: twice its own standard deviation, and the vision rotation's own systematic error
# (ModelConfig.vision_bias_floor), which the filter cannot tell from odometry drift.
BIAS_SIGMAS = 2.0
# A drift larger than this (rad/s, about 3 degrees per second) is no wheel odometry's.
BIAS_LIMIT = 0.05


class ImageEncoder(nn.Module):
    """Strided convolutions to a coarse grid of tokens with learned positions.

    Besides the colour channels it sees each pixel's viewing ray (x / z and y / z in the
    camera frame, from the normalised intrinsics), so one network serves cameras of
    different fields of view (world.md v2)."""

    def __init__(self, width: int, height: int, dim: int) -> None:
        super().__init__()
        chans = [5, 16, 32, 48, dim]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GELU()]
        self.net = nn.Sequential(*layers)
        grid = (height // 16) * (width // 16)
        self.position = nn.Parameter(torch.randn(grid, dim) * 0.02)
        self.register_buffer("u", (torch.arange(width) + 0.5) / width, persistent=False)
        self.register_buffer("v", (torch.arange(height) + 0.5) / height, persistent=False)

    def forward(self, image: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
        fx, fy, cx, cy = (camera[:, i, None, None] for i in range(4))
        b, h, w = image.shape[0], self.v.shape[0], self.u.shape[0]
        ray_x = ((self.u[None, None, :] - cx) / fx).expand(b, h, w)
        ray_y = ((self.v[None, :, None] - cy) / fy).expand(b, h, w)
        x = torch.cat([image, ray_x[:, None], ray_y[:, None]], dim=1)
        return self.net(x).flatten(2).transpose(1, 2) + self.position


def camera_features(camera: torch.Tensor) -> torch.Tensor:
    """The normalised intrinsics as O(1) features: log focal lengths, principal point
    offsets from the image centre."""
    return torch.cat([torch.log(camera[:, :2]), (camera[:, 2:] - 0.5) * 10.0], dim=-1)


class LocalisationModel(nn.Module):
    """``step(state, obs) -> (state, out)`` with obs keys image, odom, dt, cues."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        d = config.dim
        self.encoder = ImageEncoder(config.image_width, config.image_height, d)
        self.motion_features = 8 + CUE_DIM + 4
        self.motion_token = nn.Sequential(
            nn.Linear(self.motion_features, d), nn.GELU(), nn.Linear(d, d)
        )
        cells = {**CELLS, **REFERENCE_CELLS}
        if config.cell not in cells:
            raise ValueError(f"unknown cell '{config.cell}'; choose from {', '.join(cells)}")
        self.cell: MemoryCell = cells[config.cell](slots=config.slots, dim=d, heads=config.heads)
        self.trunk = nn.Sequential(
            nn.Linear(self.cell.readout_dim + self.motion_features, config.hidden), nn.GELU()
        )
        self.delta = nn.Linear(config.hidden, 6)
        self.log_var = nn.Linear(config.hidden, 6)
        self.speed = nn.Linear(config.hidden, 1)
        nn.init.zeros_(self.delta.weight)
        nn.init.zeros_(self.delta.bias)
        nn.init.zeros_(self.log_var.weight)
        nn.init.constant_(self.log_var.bias, -9.0)  # about (1 cm)^2 per frame
        nn.init.zeros_(self.speed.weight)
        nn.init.constant_(self.speed.bias, _inverse_softplus(config.initial_speed * MOTION_SCALE))
        # Map-free queries: where was the camera that saw this image, seen from here?
        self.query_token = nn.Parameter(torch.randn(d) * 0.02)
        self.query_block = TransformerBlock(d, config.heads)
        self.query_head = nn.Sequential(nn.Linear(d, config.hidden), nn.GELU())
        self.query_pose = nn.Linear(config.hidden, 6)
        self.query_log_var = nn.Linear(config.hidden, 6)
        nn.init.zeros_(self.query_pose.weight)
        nn.init.zeros_(self.query_pose.bias)
        nn.init.zeros_(self.query_log_var.weight)
        nn.init.zeros_(self.query_log_var.bias)
        self.place = (
            PlaceMemory(d, self.encoder.position.shape[0], config.place_slots, config.place_dim)
            if config.place_slots
            else None
        )

    def memory_shapes(self) -> dict[str, tuple[int, ...]]:
        """The state entries that are memory (the cell's and the place memory's): what
        the memory ablation resets and model.json calls role ``memory``."""
        place = self.place.state_shapes if self.place is not None else {}
        return {**self.cell.state_shapes, **place}

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        return {**self.memory_shapes(), "pose": (7,), "bias": (3,), "bias_certainty": (3,)}

    def query_inputs(self) -> tuple[str, ...]:
        """The state entries a query reads: the place memory and the current pose, or
        the entries of the cell's memory view."""
        if self.place is not None:
            return (*self.place.state_shapes, "pose")
        return tuple(self.cell.memory_entries)

    def initial_state(self, batch: int) -> State:
        state = self.cell.initial_state(batch)
        if self.place is not None:
            state = {**state, **self.place.initial_state(batch)}
        pose = torch.zeros(batch, 7)
        pose[:, 6] = 1.0
        device = self.delta.weight.device  # a model moved to a GPU starts its state there
        return {
            k: v.to(device)
            for k, v in {
                **state,
                "pose": pose,
                "bias": torch.zeros(batch, 3),
                "bias_certainty": torch.zeros(batch, 3),
            }.items()
        }

    def step(
        self, state: State, obs: dict[str, torch.Tensor], memory: bool = False
    ) -> tuple[State, dict]:
        odom, cues = obs["odom"], obs["cues"]
        odom_valid = odom[:, ODOM_VALID : ODOM_VALID + 1]
        odom_rot = so3.quat_to_rotvec(odom[:, ODOM_ROTATION]) * odom_valid
        odom_trans = odom[:, ODOM_TRANSLATION] * odom_valid
        cue_valid = (cues[:, CUE_VALID : CUE_VALID + 1] > 0).to(cues.dtype)
        vision_rot = cues[:, CUE_ROTATION] * cue_valid
        features = torch.cat(
            [
                odom_rot * MOTION_SCALE,
                odom_trans * MOTION_SCALE,
                odom_valid,
                obs["dt"] * MOTION_SCALE,
                _scale_cues(cues),
                camera_features(obs["camera"]),
            ],
            dim=-1,
        )
        image_tokens = self.encoder(obs["image"], obs["camera"])
        tokens = torch.cat([self.motion_token(features)[:, None], image_tokens], 1)
        cell_state = {k: state[k] for k in self.cell.state_shapes}
        cell_state, readout = self.cell.step(cell_state, tokens)
        h = self.trunk(torch.cat([readout, features], dim=-1))

        bias, certainty, correction = self.drift_filter(
            state, odom_rot - vision_rot, odom_valid * cue_valid, obs["dt"]
        )
        delta = self.delta(h) / MOTION_SCALE
        speed = nn.functional.softplus(self.speed(h)) / MOTION_SCALE
        forward = torch.zeros_like(odom_trans)
        forward[:, 2] = 1.0
        free = 1 - odom_valid  # the learned correction only where there is no odometry
        rot = odom_valid * (odom_rot - correction) + free * (vision_rot + delta[:, :3])
        # Without odometry and without cues (a run's first frame) nothing says we moved.
        prior = cue_valid * speed * forward
        trans = odom_valid * odom_trans + free * (prior + delta[:, 3:])
        motion = so3.motion_to_pose(rot, trans)
        pose = so3.compose(state["pose"], motion)
        if self.place is not None:
            places = {k: state[k] for k in self.place.state_shapes}
            described = self.place.describe(image_tokens)
            pose = self.place.revisit(places, described, pose, odom_valid)
            places = self.place.write(places, described, pose)
        new_state = {**cell_state, "pose": pose, "bias": bias, "bias_certainty": certainty}
        if self.place is not None:
            new_state.update(places)
        out = {"pose": pose, "motion": motion, "log_var": self.log_var(h), "bias": correction}
        if memory:  # the memory view (N x E slots), what distillation matches
            out["memory"] = self.cell.memory(cell_state)
        return new_state, out

    def drift_filter(
        self,
        state: State,
        measured: torch.Tensor,
        valid: torch.Tensor,
        dt: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One Kalman step of the odometry's rotation drift ``b`` (rad/s, per axis).

        Nothing in it is learned: its noise, random walk and floor are ModelConfig's.
        A learned vision-error fix and a learned, cue-dependent noise were tried
        (docs/benchmarks.md, "A drift filter"): over training they made the worst
        validation run worse (1.54 -> 2.69 -> 1.66 times the odometry at steps 300,
        600 and 900), so the filter that ships is the plain one.

        ``measured`` is odometry rotation - vision rotation this frame (rad), ``valid``
        whether both exist. Innovations beyond the chi-square gate are ignored. The
        variance P lives in the state as ``bias_certainty`` = log(P0 / P), well scaled
        in float32 and zero for the prior, so an all-zero state is the prior.
        Returns the new ``bias``, ``bias_certainty`` and the correction (rad this frame)
        to subtract from the odometry rotation."""
        dt = dt.clamp_min(1e-3)
        b = state["bias"]
        var = BIAS_PRIOR_VAR * torch.exp(-state["bias_certainty"])
        var = var + self.config.bias_walk * dt
        noise = self.config.vision_rot_noise**2 / dt**2
        innovation = measured / dt - b
        total = var + noise
        mahalanobis = (innovation**2 / total).sum(dim=-1, keepdim=True)
        use = valid * (mahalanobis < BIAS_GATE_CHI2).to(valid.dtype)
        gain = use * var / total
        b = (b + gain * innovation).clamp(-BIAS_LIMIT, BIAS_LIMIT)
        var = (1 - gain) * var
        certainty = torch.log(BIAS_PRIOR_VAR / var).clamp_min(0.0)
        floor = torch.sqrt(BIAS_SIGMAS**2 * var + self.config.vision_bias_floor**2)
        applied = torch.sign(b) * torch.relu(b.abs() - floor)
        return b, certainty, applied * dt

    def query(
        self, state: State, image: torch.Tensor, camera: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """The pose (xyz_qxyzw) of the camera that took ``image`` (normalised intrinsics
        ``camera``) in the current camera frame, and its log variance (x, y, z, rx, ry,
        rz), read from memory alone (``state`` needs only :meth:`query_inputs`); the state
        is not changed. With a place memory also ``seen`` ``[B, 1]``, the probability
        that the place is in the memory and the answer right."""
        if self.place is not None:
            described = self.place.describe(self.encoder(image, camera))
            return self.place.answer(state, state["pose"], described)
        memory = self.cell.memory(state)
        b = memory.shape[0]
        token = self.query_token.expand(b, 1, -1)
        x = self.query_block(torch.cat([token, memory, self.encoder(image, camera)], dim=1))
        h = self.query_head(x[:, 0])
        rel = self.query_pose(h)
        return so3.motion_to_pose(rel[:, :3], rel[:, 3:]), self.query_log_var(h)

    def rollout(
        self, state: State, obs: dict[str, torch.Tensor], memory: bool = False
    ) -> tuple[State, dict[str, torch.Tensor]]:
        """Step through ``[B, T, ...]`` observations; outputs stacked along time (with
        the memory view at every frame when ``memory``)."""
        outs = []
        for t in range(obs["image"].shape[1]):
            state, out = self.step(state, {k: v[:, t] for k, v in obs.items()}, memory)
            outs.append(out)
        return state, {k: torch.stack([o[k] for o in outs], dim=1) for k in outs[0]}


# Rotations and flows are per-frame small quantities; ratios and directions are O(1).
_SMALL_CUES = {
    *range(CUE_DIM)[CUE_ROTATION],
    *range(CUE_DIM)[CUE_FLOW],
    CUE_FLOW_MAGNITUDE,
    *range(CUE_DIM)[CUE_ROTATION_ONLY],
}
_CUE_SCALE = [MOTION_SCALE if i in _SMALL_CUES else 1.0 for i in range(CUE_DIM)]


def _scale_cues(cues: torch.Tensor) -> torch.Tensor:
    scale = torch.tensor(_CUE_SCALE)
    return cues * scale.to(cues)


def _inverse_softplus(y: float) -> float:
    return float(torch.log(torch.expm1(torch.tensor(y))))
