"""``render`` command: write synthetic-world sequences as rosbag2, TUM folders or npz caches."""

from __future__ import annotations

import argparse
import time
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from .generate import CAMERAS, mirror, render_sequence
from .writers import write_rosbag2, write_tum

SIZES = {"640x480": (640, 480), "320x240": (320, 240)}


def parse_size(text: str) -> tuple[int, int]:
    """'640x480', '320x240' or any 'WxH' no larger than 640x480."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 320x240, not {text!r}") from None
    if not (2 <= w <= 640 and 2 <= h <= 480):
        raise argparse.ArgumentTypeError(f"size {text!r} outside 2x2 .. 640x480")
    return w, h


def add_render_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``render`` command."""
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--split", choices=["train", "val", "test"], required=True)
    parser.add_argument(
        "--sequences", type=int, default=1, help="number of sequences (indices 0..N-1)"
    )
    parser.add_argument("--first", type=int, default=0, help="index of the first sequence")
    parser.add_argument("--frames", type=int, default=1800, help="frames per sequence")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cameras",
        choices=CAMERAS,
        default="random",
        help="random: a camera as real robots carry per sequence (world.md v2: field of "
        "view, rate, exposure, blur, noise, vignetting, JPEG, mono8); reference: the v1 "
        "camera (525 px at 640x480, 30 Hz, clean)",
    )
    parser.add_argument("--format", choices=["rosbag2", "tum", "npz"], default="rosbag2")
    parser.add_argument(
        "--storage", choices=["mcap", "sqlite3"], default="mcap", help="rosbag2 storage"
    )
    parser.add_argument(
        "--size", type=parse_size, default=(320, 240), help="WxH, e.g. 640x480 or 320x240"
    )
    parser.add_argument(
        "--mirror",
        action="store_true",
        help="also write each sequence's mirrored copy (<name>_mirror)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def _target(out: Path, name: str, fmt: str) -> Path:
    return out / (name + ".npz" if fmt == "npz" else name)


def _render_one(job: tuple[argparse.Namespace, int], progress=None) -> tuple[str, int]:  # noqa: ANN001
    args, index = job
    # Streaming formats render lazily, frame by frame, so long 640x480 sequences never
    # sit in memory; the npz cache needs the whole array anyway.
    seq = render_sequence(
        args.split,
        index,
        args.seed,
        args.frames,
        args.size,
        lazy=args.format != "npz",
        cameras=args.cameras,
    )
    copies = [seq, mirror(seq)] if args.mirror else [seq]
    frames = 0
    for s in copies:
        target = _target(args.out, s.name, args.format)
        if args.format == "rosbag2":
            write_rosbag2(s, target, args.storage, overwrite=args.overwrite, progress=progress)
        elif args.format == "tum":
            write_tum(s, target, overwrite=args.overwrite, progress=progress)
        else:
            if target.exists() and not args.overwrite:
                raise FileExistsError(f"{target} exists; pass --overwrite to replace it")
            s.save(target)
            if progress is not None:
                progress(len(s))
        frames += len(s)
    return seq.name, frames


def run_render(args: argparse.Namespace) -> int:
    """Render ``args.sequences`` sequences; prints the output folder and frames per second."""
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.overwrite:
        for index in range(args.first, args.first + args.sequences):
            name = f"{args.split}_{index:03d}"
            for n in [name, name + "_mirror"] if args.mirror else [name]:
                if _target(args.out, n, args.format).exists():
                    raise SystemExit(
                        f"{_target(args.out, n, args.format)} exists; pass --overwrite"
                    )
    jobs = [(args, i) for i in range(args.first, args.first + args.sequences)]
    total = args.sequences * args.frames * (2 if args.mirror else 1)
    start = time.perf_counter()
    done = 0
    with tqdm(total=total, unit="frame", desc=f"render {args.split}") as bar:
        if args.jobs <= 1:
            for job in jobs:
                done += _render_one(job, progress=bar.update)[1]
        else:
            # Workers report whole sequences; "spawn" avoids forking a parent's threads.
            with get_context("spawn").Pool(args.jobs) as pool:
                for _, n in pool.imap_unordered(_render_one, jobs):
                    done += n
                    bar.update(n)
    elapsed = time.perf_counter() - start
    print(
        f"wrote {args.sequences} {args.split} sequence(s) as {args.format} to {args.out}: "
        f"{done} frames in {elapsed:.1f} s ({done / max(elapsed, 1e-9):.1f} frames/s)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="render", description=__doc__)
    add_render_arguments(parser)
    return run_render(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
