"""The classical cues: followed corners against fresh detections, and one definition for
the training data and the runtime."""

from pathlib import Path

import cv2
import numpy as np

from latent_memory_ros import cues
from latent_memory_ros.runtime import StudentRuntime

MODEL = Path(__file__).resolve().parent.parent / "models" / "default"
K = np.array([250.0, 250.0, 159.5, 119.5])  # 320 x 240


def _panning(n: int = 40) -> np.ndarray:
    """A camera panning (and slowly zooming) over a textured wall, 320x240 RGB."""
    rng = np.random.default_rng(0)
    wall = cv2.GaussianBlur(rng.integers(0, 255, (600, 900), dtype=np.uint8), (0, 0), 3)
    wall = cv2.normalize(wall, None, 0, 255, cv2.NORM_MINMAX)
    frames = []
    for t in range(n):
        x, scale = 60 + 3 * t, 1.0 + 0.002 * t
        crop = wall[100 : 100 + int(240 * scale), x : x + int(320 * scale)]
        frames.append(cv2.cvtColor(cv2.resize(crop, (320, 240)), cv2.COLOR_GRAY2RGB))
    return np.stack(frames)


def test_by_default_the_tracker_is_the_two_view_cues():
    frames = _panning()
    config = cues.CueConfig()
    tracker = cues.CueTracker(K, config)
    prev = None
    for rgb in frames:
        gray = cues.to_gray(rgb, config)
        np.testing.assert_array_equal(
            tracker.update(gray), cues.two_view_cues(prev, gray, K, config)
        )
        prev = gray
    assert tracker.detections == len(frames) - 1


def test_followed_corners_are_detected_rarely_and_give_the_same_motion():
    frames = _panning()
    tracker = cues.CueTracker(K, cues.CueConfig(redetect_below=0.8))
    followed = np.stack([tracker.update(cues.to_gray(rgb, tracker.config)) for rgb in frames])
    fresh = cues.sequence_cues(frames, K, cues.CueConfig(redetect_below=0.0))
    assert tracker.detections < (len(frames) - 1) / 2
    assert np.all(followed[1:, cues.CUE_VALID] == 1)
    assert np.all(followed[1:, cues.CUE_CORNERS] > 0.5)
    # The same rotation (the pan: about 3 px / 250 px per frame): a tenth of a milliradian
    # apart on the median frame (the slow zoom leaves single frames ambiguous).
    difference = np.linalg.norm(
        followed[1:, cues.CUE_ROTATION] - fresh[1:, cues.CUE_ROTATION], axis=1
    )
    assert np.median(difference) < 1e-4
    assert abs(np.median(followed[1:, cues.CUE_ROTATION][:, 1]) - 3 / 250) < 2e-3
    tracker.reset()
    assert not tracker.update(cues.to_gray(frames[0], tracker.config)).any()


def test_the_runtime_feeds_the_cues_the_training_data_holds():
    frames = _panning(30)
    runtime = StudentRuntime(MODEL, providers=["CPUExecutionProvider"], warmup=0)
    runtime.set_camera(K, 320, 240)
    fed = []
    for rgb in frames:
        runtime.step(rgb, trust_cues=lambda _gray, vector: fed.append(vector.copy()) or True)
    np.testing.assert_array_equal(np.stack(fed), cues.sequence_cues(frames, K))
