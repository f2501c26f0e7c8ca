"""Where a frame's time goes, stage by stage, at 640x480, without DDS.

Frames of a rendered held-out run (320x240) are upscaled to 640x480 and wrapped in
sensor_msgs/Image (rgb8) and CompressedImage (JPEG) messages beforehand; then, per frame
and in the node's order: decode, :meth:`Localizer.process` (whose runtime step reports
its own stages in ``StudentRuntime.stage_ms``), and the outputs built and serialised
(``rclpy.serialization``, what the RMW does before sending) by the node's
:class:`EstimatePublisher`. The step graph alone (``step.onnx``, one fixed feed) runs
right after every frame, so that the ratio runtime step / model alone is measured under
the same load. Nice it, and read the ratios: this machine's two cores are shared.

    nice -n 5 .venv/bin/python benchmarks/profile_hot_path.py --frames 600
    nice -n 5 .venv/bin/python benchmarks/profile_hot_path.py --no-step --clock cpu \
        --cues 320x240:0,320x240:0.8,240x180:0.8 --threads 0,1,2

``--cues`` times the cues alone in each configuration (``CueConfig``: size,
``redetect_below``, ``window``, ``levels``) frame by frame in turn, and scores their
rotation against the ground truth (median / p90 error per frame, mrad); ``--threads``
times the step graph per ``intra_op_threads``; ``--clock cpu`` reads this thread's CPU
time instead of the wall clock, for comparing code while other jobs load the machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CompressedImage, Image

from latent_memory_ros import cues, geometry, images, messages
from latent_memory_ros.localizer import Localizer, LocalizerConfig
from latent_memory_ros.runtime import StudentRuntime

REPO = Path(__file__).resolve().parent.parent
RUNTIME_STAGES = ("preprocess", "grey", "cues", "health", "onnx", "state")


class SerialisingPublisher:
    """A publisher that only serialises: the cost of a message up to the RMW."""

    def __init__(self, subscribers: int = 1) -> None:
        self.subscribers = subscribers

    def publish(self, msg) -> None:
        serialize_message(msg)

    def get_subscription_count(self) -> int:
        return self.subscribers

    def sendTransform(self, transform) -> None:  # noqa: N802 (tf2_ros' name)
        serialize_message(transform)  # tf2_msgs is not installed here: its one entry


def load_run(path: Path, frames: int, width: int, height: int) -> dict:
    with np.load(path) as z:
        run = {k: z[k] for k in ("stamps", "odom_base", "base_to_camera", "intrinsics")}
        small = z["images"][:frames]
        run["gt_camera"] = z["gt_camera"][:frames]
    scale = width / small.shape[2]
    run["images"] = np.stack([cv2.resize(im, (width, height)) for im in small])
    run["intrinsics"] = cues.scale_intrinsics(run["intrinsics"], scale, height / small.shape[1])
    return run


def image_messages(rgb: np.ndarray, stamp: float) -> tuple[Image, CompressedImage]:
    raw = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", step=rgb.shape[1] * 3)
    raw.data = rgb.tobytes()
    jpeg = CompressedImage(format="jpeg")
    jpeg.data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
    for msg in (raw, jpeg):
        msg.header.stamp.sec, msg.header.stamp.nanosec = int(stamp), int(stamp % 1 * 1e9)
        msg.header.frame_id = "camera_optical"
    return raw, jpeg


def percentiles(values) -> tuple[float, float, float]:
    v = np.asarray(values, dtype=np.float64)
    return float(np.percentile(v, 50)), float(np.percentile(v, 99)), float(v.mean())


def profile(args: argparse.Namespace, run: dict) -> dict[str, list[float]]:
    runtime = StudentRuntime(
        args.model, providers=["CPUExecutionProvider"], intra_op_threads=args.intra_op_threads
    )
    h, w = run["images"].shape[1:3]
    runtime.set_camera(run["intrinsics"], w, h)
    localizer = Localizer(runtime, LocalizerConfig(base_to_camera=run["base_to_camera"]))
    publishers = {k: SerialisingPublisher() for k in ("pose", "odometry", "status", "path")}
    publishers["markers"] = SerialisingPublisher(subscribers=0)
    outputs = messages.EstimatePublisher(
        publishers,
        SerialisingPublisher(),
        "odom",
        "base_link",
        messages.PathBuffer(2000, 1.0, True),
    )
    msgs = [image_messages(rgb, s) for rgb, s in zip(run["images"], run["stamps"], strict=False)]
    # The model alone: one fixed feed of the right shapes, the carried state included.
    alone = {"image": runtime.preprocess(run["images"][0])}
    names = runtime.spec.inputs_optional
    alone |= {"cues": np.zeros((1, cues.CUE_DIM), np.float32)} if "cues" in names else {}
    alone |= {"odom": np.zeros((1, 8), np.float32)} if "odom" in names else {}
    alone |= {"camera": runtime._camera_feed} if "camera" in names else {}
    alone |= {"dt": np.full((1, 1), 1 / 30, np.float32)} if "dt" in names else {}
    alone |= {f"state.{k}": v for k, v in runtime.state.items()}
    session = runtime._session

    times: dict[str, list[float]] = {}

    def add(stage: str, ms: float) -> None:
        times.setdefault(stage, []).append(ms)

    clock = time.perf_counter
    for i, (raw, jpeg) in enumerate(msgs):
        stamp_ns = int(round(run["stamps"][i] * 1e9))
        t0 = clock()
        images.compressed_msg_to_rgb(jpeg)
        t1 = clock()
        rgb = images.image_msg_to_rgb(raw)
        t2 = clock()
        localizer.add_odometry(stamp_ns, run["odom_base"][i])
        estimate = localizer.process(rgb, stamp_ns, True)
        t3 = clock()
        status = messages.tracking_status(estimate, "profile", runtime.frames, runtime.spec.name)
        outputs.publish(raw.header.stamp, estimate, status)
        t4 = clock()
        session.run(None, alone)
        t5 = clock()
        if i < args.warmup:
            continue
        add("decode JPEG (instead of rgb8)", (t1 - t0) * 1e3)
        add("decode rgb8 Image", (t2 - t1) * 1e3)
        for stage in RUNTIME_STAGES:
            add(stage, runtime.stage_ms[stage])
        add("runtime step", estimate.step_ms)
        add("localizer (odometry, health, pose)", (t3 - t2) * 1e3 - estimate.step_ms)
        add("outputs built + serialised", (t4 - t3) * 1e3)
        add("node work per frame (rgb8)", (t4 - t1) * 1e3)
        add("model alone (step.onnx)", (t5 - t4) * 1e3)
    return times


def table(times: dict[str, list[float]]) -> str:
    total = np.mean(times["node work per frame (rgb8)"])
    rows = ["| stage | p50 (ms) | p99 (ms) | share of the node's work |", "|---|---|---|---|"]
    for stage, values in times.items():
        p50, p99, mean = percentiles(values)
        indent = "  " if stage in RUNTIME_STAGES else ""
        share = "" if stage.startswith(("model alone", "decode JPEG")) else f"{mean / total:.0%}"
        rows.append(f"| {indent}{stage} | {p50:.3f} | {p99:.3f} | {share} |")
    step, model = (percentiles(times[k]) for k in ("runtime step", "model alone (step.onnx)"))
    rows.append(
        f"\nruntime step / model alone: p50 {step[0] / model[0]:.2f}x, p99 {step[1] / model[1]:.2f}x"
        f" ({len(times['runtime step'])} frames)"
    )
    return "\n".join(rows)


def cue_variants(args: argparse.Namespace, run: dict) -> str:
    """Per cue configuration (``WxH[:redetect_below[:window[:levels]]]``): the cues' cost
    per frame (grey image included), how often corners were detected, the mean corner
    share (CUE_CORNERS) and the rotation error against the ground truth."""
    gt = run["gt_camera"]
    true = geometry.quat_to_rotvec(geometry.relative(gt[:-1], gt[1:])[:, 3:])
    h, w = run["images"].shape[1:3]
    rows = [
        "| cues (size : redetect below : window : levels) | p50 (ms) | p99 (ms) | detected "
        "| corners | valid | rotation error median / p90 (mrad) |",
        "|---|---|---|---|---|---|---|",
    ]
    variants = []
    for variant in args.cues.split(","):
        size, *rest = variant.split(":")
        cw, ch = (int(v) for v in size.split("x"))
        fields = dict(zip(("redetect_below", "window", "levels"), rest, strict=False))
        config = cues.CueConfig(
            width=cw,
            height=ch,
            redetect_below=float(fields.get("redetect_below", cues.CueConfig.redetect_below)),
            window=int(fields.get("window", cues.CueConfig.window)),
            levels=int(fields.get("levels", cues.CueConfig.levels)),
        )
        k = cues.cue_intrinsics(run["intrinsics"], w, h, config)
        variants.append((config, cues.CueTracker(k, config), [], []))
    for rgb in run["images"]:  # the variants in turn on each frame: under the same load
        for config, tracker, out, ms in variants:
            start = time.perf_counter()
            out.append(tracker.update(cues.to_gray(rgb, config)))
            ms.append((time.perf_counter() - start) * 1e3)
    for config, tracker, out, ms in variants:
        out = np.array(out)[1:]
        ok = out[:, cues.CUE_VALID] > 0
        err = np.linalg.norm(out[ok, cues.CUE_ROTATION] - true[ok], axis=1) * 1e3
        p50, p99, _ = percentiles(ms[args.warmup :])
        name = f"{config.width}x{config.height} : {config.redetect_below:g} : {config.window}"
        rows.append(
            f"| {name} : {config.levels} | {p50:.3f} | {p99:.3f} | "
            f"{tracker.detections / len(ms):.2f} | {out[ok, cues.CUE_CORNERS].mean():.3f} | "
            f"{ok.mean():.3f} | {np.median(err):.2f} / {np.percentile(err, 90):.2f} |"
        )
    return "\n".join(rows)


def thread_counts(args: argparse.Namespace, run: dict) -> str:
    """The step graph's time in the runtime per ``intra_op_threads``, in blocks of
    frames taken in turn (sessions that spin their threads would slow one another if
    interleaved frame by frame)."""
    counts = [int(v) for v in args.threads.split(",")]
    runtimes = {
        n: StudentRuntime(args.model, providers=["CPUExecutionProvider"], intra_op_threads=n)
        for n in counts
    }
    times: dict[int, list[float]] = {n: [] for n in counts}
    for _ in range(4):
        for n, runtime in runtimes.items():
            runtime.reset()
            for rgb in run["images"][: len(run["images"]) // 4]:
                runtime.step(rgb)
                times[n].append(runtime.stage_ms["onnx"])
    rows = ["| intra_op_threads | onnx p50 (ms) | p99 (ms) |", "|---|---|---|"]
    for n, values in times.items():
        p50, p99, _ = percentiles(values)
        rows.append(f"| {n} | {p50:.3f} | {p99:.3f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "default")
    parser.add_argument("--run", type=Path, default=Path("/work/data/test/test_000.npz"))
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--warmup", type=int, default=30, help="frames left out of the table")
    parser.add_argument("--size", default="640x480", help="frame size the run is upscaled to")
    parser.add_argument(
        "--cues", default="", help="cue variants to compare, e.g. 320x240:0,320x240:0.8,240x180"
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: this thread's CPU time (time.thread_time), which waiting for a core "
        "does not inflate: compares code on a loaded machine (onnxruntime's own threads, "
        "with intra_op_threads other than 1, are not counted)",
    )
    parser.add_argument("--intra-op-threads", type=int, default=1)
    parser.add_argument("--threads", default="", help="intra_op_threads to compare, e.g. 0,1,2")
    parser.add_argument("--no-step", action="store_true", help="skip the stage table")
    parser.add_argument("--json", type=Path, help="also write the per-frame times here")
    args = parser.parse_args()
    if args.clock == "cpu":  # every stage timer here and in the runtime reads it
        time.perf_counter = time.thread_time
    width, height = (int(v) for v in args.size.split("x"))
    run = load_run(args.run, args.frames, width, height)
    print(f"{args.run.name}, {args.frames} frames at {width}x{height}, {args.clock} clock\n")
    if not args.no_step:
        times = profile(args, run)
        print(table(times))
        if args.json:
            args.json.write_text(json.dumps(times))
    if args.cues:
        print("\n" + cue_variants(args, run))
    if args.threads:
        print("\n" + thread_counts(args, run))


if __name__ == "__main__":
    main()
