"""A user's recorded runs as :class:`~latent_memory_ros.sequence.Sequence`: rosbag2 (mcap and
sqlite3), TUM RGB-D, EuRoC ASL and KITTI odometry, plus the project's cached renders.

Every reader delivers the same record: frames as RGB uint8 (decoded on access, one at a
time, by the node's own decoder, :mod:`latent_memory_ros.images`; undistorted to a pinhole
camera of the same size when the camera has a lens model, :mod:`latent_memory_ros.distortion`),
their stamps, the camera optical frame's ground-truth pose at each frame (interpolated
to the image stamps, SLERP for rotations, across gaps of at most ``max_gap_s``; frames
outside the ground truth are dropped and counted in ``meta["frames_dropped"]``), the wheel
odometry when the run has one (NaN rows when not), the camera mount and the intrinsics.

Bad input raises :class:`~latent_memory_ros.tracks.DatasetError` naming the file and line
(or the bag and topic) before anything is written: stamps that repeat or go back, a
missing file, counts that disagree, an image size that changes, a truncated bag, a topic
that is not there.

Layouts read (``detect_format`` tells them apart):

- ``rosbag2``: a bag folder (``metadata.yaml``); topics by :class:`ReadOptions`.
- ``tum``: ``rgb.txt`` and ``groundtruth.txt`` (camera in the world); the intrinsics from
  ``ReadOptions.intrinsics``, a ``meta.json`` (the project's TUM export), or the
  Freiburg camera named in the folder name (``freiburg1/2/3``, the data set's published
  calibration); ``odometry.txt`` (base in odom, same format) when there is one.
- ``euroc``: ``mav0/cam0/data.csv`` and ``data/``, ``sensor.yaml`` (intrinsics,
  ``radial-tangential`` or ``equidistant`` distortion, ``T_BS``), and
  ``mav0/state_groundtruth_estimate0/data.csv`` (body in the world; the camera is body ·
  T_BS).
- ``kitti``: a sequence folder with ``calib.txt``, ``times.txt``, ``image_2/`` (colour;
  ``image_0/`` grey); poses from ``poses.txt`` inside it or ``../../poses/NN.txt`` (cam0
  in the first cam0 frame; the colour camera's offset from ``P2`` applied).
- ``npz``: a cached render (``Sequence.save``).
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from latent_memory_ros import geometry
from latent_memory_ros.bag import IMAGE_TYPES, POSE_TYPES, bag_topics, read_run, static_chain
from latent_memory_ros.distortion import Undistorter, needs_undistortion
from latent_memory_ros.images import FrameError, PinholeCamera, decode_frame
from latent_memory_ros.sequence import Sequence
from latent_memory_ros.tracks import DatasetError, Track, check_increasing

FORMATS = ("rosbag2", "tum", "euroc", "kitti", "npz")

# TUM RGB-D's published colour-camera calibrations (vision.in.tum.de, "File formats":
# intrinsic camera calibration), keyed by the Freiburg camera a sequence's name carries:
# fx fy cx cy, then plumb_bob d0..d4. freiburg3's images are already undistorted.
TUM_CAMERAS = {
    "freiburg1": ((517.3, 516.5, 318.6, 255.3), (0.2624, -0.9531, -0.0054, 0.0026, 1.1633)),
    "freiburg2": ((520.9, 521.0, 325.1, 249.7), (0.2312, -0.7849, -0.0033, -0.0001, 0.9172)),
    "freiburg3": ((535.4, 539.2, 320.1, 247.6), (0.0, 0.0, 0.0, 0.0, 0.0)),
}


@dataclass(frozen=True)
class ReadOptions:
    """How to read a run; what a layout fixes by itself is ignored for it.

    Bags: ``image_topic`` (default: the bag's only Image/CompressedImage topic),
    ``gt_topic`` or ``gt_frames`` (parent, child on /tf; default: the bag's only pose
    topic besides the odometry), ``odom_topic`` or ``odom_frames`` (default: /odom when
    the bag has it), ``camera_info_topic`` (default: beside the image topic).
    ``gt_frame``: the frame whose pose the ground truth is, when it is not the camera
    (e.g. ``base_link`` for a robot's motion capture pose; default: the message's or the
    chain's child frame, for a PoseStamped the camera). ``base_to_camera``: the camera
    optical frame in the base frame (x y z qx qy qz qw), instead of /tf_static.
    ``intrinsics`` (fx fy cx cy) with ``distortion`` coefficients of
    ``distortion_model``: the camera, when the run does not carry it.
    ``kitti_camera``: ``image_2`` or ``image_0`` (default: image_2 when there).
    """

    image_topic: str | None = None
    gt_topic: str | None = None
    gt_frames: tuple[str, str] | None = None
    gt_frame: str | None = None
    odom_topic: str | None = None
    odom_frames: tuple[str, str] | None = None
    camera_info_topic: str | None = None
    base_to_camera: tuple[float, ...] | None = None
    intrinsics: tuple[float, float, float, float] | None = None
    distortion: tuple[float, ...] = ()
    distortion_model: str = "plumb_bob"
    max_gap_s: float = 0.2
    kitti_camera: str | None = None


class LazyImages:
    """Array-like ``(T, H, W, 3)`` uint8 frames decoded on access, so that a long run at
    full size never sits in memory: ``len``, ``shape``, iteration (one pass, in order),
    ``frames[i]`` and ``np.asarray(frames)``."""

    def __init__(
        self,
        shape: tuple[int, int, int, int],
        iterate: Callable[[], Iterator[np.ndarray]],
        load: Callable[[int], np.ndarray] | None = None,
    ) -> None:
        self.shape = shape
        self.dtype = np.dtype(np.uint8)
        self._iterate = iterate
        self._load = load

    @property
    def ndim(self) -> int:
        return 4

    def __len__(self) -> int:
        return self.shape[0]

    def __iter__(self) -> Iterator[np.ndarray]:
        return self._iterate()

    def __getitem__(self, i: int) -> np.ndarray:
        i = int(i) + (len(self) if int(i) < 0 else 0)
        if not 0 <= i < len(self):
            raise IndexError(f"frame {i} of {len(self)}")
        if self._load is not None:
            return self._load(i)
        return next(islice(self._iterate(), i, None))  # a stream (a bag): read up to it

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        out = np.empty(self.shape, np.uint8)
        for i, frame in enumerate(self):
            out[i] = frame
        return out if dtype is None else out.astype(dtype)


# --- finding runs ---------------------------------------------------------------------------


def detect_format(path: Path) -> str:
    """Which of :data:`FORMATS` ``path`` is; raises DatasetError saying what was looked for."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path} does not exist")
    if path.is_file():
        if path.suffix == ".npz":
            return "npz"
        raise DatasetError(f"{path} is a file but not a cached render (.npz); runs are folders")
    if (path / "metadata.yaml").is_file():
        return "rosbag2"
    if (path / "rgb.txt").is_file():
        return "tum"
    if (path / "mav0" / "cam0" / "data.csv").is_file() or (path / "cam0" / "data.csv").is_file():
        return "euroc"
    if (path / "calib.txt").is_file() and (path / "times.txt").is_file():
        return "kitti"
    raise DatasetError(
        f"{path} is not a run: no metadata.yaml (rosbag2), rgb.txt (TUM RGB-D), "
        "mav0/cam0/data.csv (EuRoC) or calib.txt + times.txt (KITTI)"
    )


def _detected(path: Path) -> str | None:
    try:
        return detect_format(path)
    except DatasetError:
        return None


def find_runs(path: Path, fmt: str | None = None) -> list[tuple[Path, str]]:
    """``(run, format)`` for ``path`` if it is a run, else for each run directly inside it
    (sorted; cached renders' preparation files skipped). ``fmt`` forces the format of
    what is found, and makes an unrecognised ``path`` a run of that format (its reader
    then says what is missing)."""
    path = Path(path)
    if fmt is not None and fmt not in FORMATS:
        raise DatasetError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    found = _detected(path)
    if found is not None:
        return [(path, fmt or found)]
    runs = []
    if path.is_dir():
        for child in sorted(path.iterdir()):
            if child.name.endswith((".prep.npz", ".tmp.npz", ".tmp")):
                continue
            inside = _detected(child)
            if inside is not None:
                runs.append((child, fmt or inside))
    if runs:
        return runs
    if fmt is not None and path.exists():
        return [(path, fmt)]
    if not path.is_dir():
        detect_format(path)  # raises, saying why
    raise DatasetError(
        f"{path} holds no runs: neither it nor anything in it is a rosbag2, TUM RGB-D, "
        "EuRoC or KITTI folder or a cached render (.npz)"
    )


def read_sequence(
    path: Path, fmt: str | None = None, options: ReadOptions = ReadOptions()
) -> Sequence:
    """One run as a :class:`Sequence` (format detected unless ``fmt`` forces it)."""
    path = Path(path)
    fmt = fmt or detect_format(path)
    readers = {
        "rosbag2": read_bag,
        "tum": read_tum,
        "euroc": read_euroc,
        "kitti": read_kitti,
        "npz": lambda p, _: Sequence.load(p),
    }
    if fmt not in readers:
        raise DatasetError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    return readers[fmt](path, options)


# --- shared steps -----------------------------------------------------------------------------


def _lens(
    width: int,
    height: int,
    intrinsics: tuple[float, ...],
    d: tuple[float, ...],
    model: str,
    where: str,
) -> tuple[PinholeCamera, Callable[[np.ndarray], np.ndarray] | None]:
    """The pinhole camera the frames are delivered in, and the undistortion (None when
    the camera has no distortion)."""
    if not needs_undistortion(d):
        return PinholeCamera(width, height, *(float(v) for v in intrinsics)), None
    try:
        undistorter = Undistorter(width, height, intrinsics, d, model)
    except ValueError as err:
        raise DatasetError(f"{where}: {err}") from err
    return undistorter.camera, undistorter.apply


def _decode_file(path: Path) -> np.ndarray:
    """An image file through the node's CompressedImage decoder (PNG or JPEG)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DatasetError(f"cannot read image {path}: {err}") from err
    try:
        return decode_frame(SimpleNamespace(format="", data=data))
    except FrameError as err:
        raise DatasetError(f"image {path}: {err}") from err


def _file_frames(
    files: list[Path], lens: Callable[[np.ndarray], np.ndarray] | None, size: tuple[int, int]
) -> LazyImages:
    def load(i: int) -> np.ndarray:
        rgb = _decode_file(files[i])
        if (rgb.shape[1], rgb.shape[0]) != size:
            raise DatasetError(
                f"image {files[i]} is {rgb.shape[1]}x{rgb.shape[0]}, the run's first is "
                f"{size[0]}x{size[1]}; the image size must not change within a run"
            )
        return lens(rgb) if lens is not None else rgb

    return LazyImages(
        (len(files), size[1], size[0], 3), lambda: (load(i) for i in range(len(files))), load
    )


def _assemble(
    name: str,
    fmt: str,
    source: Path,
    stamps: np.ndarray,
    gt_camera: np.ndarray,
    odom_base: np.ndarray | None,
    base_to_camera: np.ndarray,
    camera: PinholeCamera,
    frames: Callable[[np.ndarray], LazyImages],
    max_gap_s: float,
    meta: dict | None = None,
) -> Sequence:
    """Drop the frames without ground truth and build the Sequence; ``frames(keep)``
    makes the images of the kept frames."""
    keep = np.all(np.isfinite(gt_camera), axis=1)
    if keep.sum() < 2:
        raise DatasetError(
            f"{source}: {int(keep.sum())} of {len(stamps)} frames lie within the ground truth "
            f"(gaps of at most {max_gap_s} s bridged); a run needs at least 2"
        )
    odom = np.full((len(stamps), 7), np.nan) if odom_base is None else odom_base
    return Sequence(
        name=name,
        images=frames(keep),  # type: ignore[arg-type]
        stamps=np.asarray(stamps, dtype=np.float64)[keep],
        gt_camera=gt_camera[keep],
        odom_base=odom[keep],
        base_to_camera=np.asarray(base_to_camera, dtype=np.float64),
        intrinsics=camera.array,
        meta={
            "format": fmt,
            "source": str(source),
            "frames_read": int(len(stamps)),
            "frames_dropped": int((~keep).sum()),
            "max_gap_s": float(max_gap_s),
            "size": [camera.width, camera.height],
            **(meta or {}),
        },
    )


def _rows(
    path: Path, columns: int | tuple[int, ...], delimiter: str | None = None
) -> list[tuple[int, list[str]]]:
    """``(line number, fields)`` of a text table, comments (#) and blank lines skipped;
    a row with another number of fields raises DatasetError naming the line."""
    if not path.is_file():
        raise DatasetError(f"{path} does not exist")
    wanted = (columns,) if isinstance(columns, int) else columns
    out = []
    with path.open(newline="") as f:
        lines = csv.reader(f, delimiter=delimiter) if delimiter else (line.split() for line in f)
        for number, fields in enumerate(lines, start=1):
            fields = [x.strip() for x in fields]
            if not fields or not fields[0] or fields[0].startswith("#"):
                continue
            if len(fields) not in wanted:
                raise DatasetError(
                    f"{path}, line {number}: {len(fields)} fields, expected "
                    f"{' or '.join(map(str, wanted))}"
                )
            out.append((number, fields))
    return out


def _numbers(
    path: Path, rows: list[tuple[int, list[str]]], parse: Callable[[str], float] = float
) -> np.ndarray:
    try:
        return np.array([[parse(x) for x in fields] for _, fields in rows], dtype=np.float64)
    except ValueError as err:
        for number, fields in rows:
            try:
                [parse(x) for x in fields]
            except ValueError:
                raise DatasetError(
                    f"{path}, line {number}: not a number: {' '.join(fields)}"
                ) from err
        raise


def _line_of(path: Path, rows: list[tuple[int, list[str]]]) -> Callable[[int], str]:
    return lambda i: f"{path}, line {rows[i][0]}"


def _tum_track(path: Path) -> Track:
    """A TUM trajectory file (stamp tx ty tz qx qy qz qw) with increasing stamps."""
    rows = _rows(path, 8)
    values = _numbers(path, rows)
    if len(values) == 0:
        raise DatasetError(f"{path} has no poses")
    check_increasing(values[:, 0], _line_of(path, rows))
    poses = values[:, 1:].copy()
    poses[:, 3:] = geometry.quat_normalize(poses[:, 3:])
    return Track(values[:, 0], poses)


def _image_list(
    path: Path, rows: list[tuple[int, list[str]]], folder: Path, stamps: np.ndarray
) -> list[Path]:
    check_increasing(stamps, _line_of(path, rows))
    files = [folder / fields[1] for _, fields in rows]
    for (number, _), file in zip(rows, files, strict=True):
        if not file.is_file():
            raise DatasetError(f"{path}, line {number}: image {file} does not exist")
    return files


# --- TUM RGB-D ------------------------------------------------------------------------------


def read_tum(path: Path, options: ReadOptions = ReadOptions()) -> Sequence:
    path = Path(path)
    rgb_txt = path / "rgb.txt"
    rows = _rows(rgb_txt, 2)
    if not rows:
        raise DatasetError(f"{rgb_txt} lists no images")
    stamps = _numbers(rgb_txt, [(n, f[:1]) for n, f in rows])[:, 0]
    files = _image_list(rgb_txt, rows, path, stamps)
    gt = _tum_track(path / "groundtruth.txt")
    meta_file = path / "meta.json"
    saved = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    first = _decode_file(files[0])
    size = (first.shape[1], first.shape[0])
    if options.intrinsics is not None:
        k, d = options.intrinsics, options.distortion
    elif "intrinsics" in saved:
        k, d = tuple(saved["intrinsics"]), ()
    else:
        camera = next((c for name, c in TUM_CAMERAS.items() if name in path.name), None)
        if camera is None:
            raise DatasetError(
                f"{path}: no intrinsics: no meta.json, and the folder name names no Freiburg "
                f"camera ({', '.join(TUM_CAMERAS)}); pass them (--intrinsics fx fy cx cy)"
            )
        k, d = camera
    camera, lens = _lens(*size, k, d, options.distortion_model, str(path))
    odom = None
    if (path / "odometry.txt").is_file():
        odom = _tum_track(path / "odometry.txt").interpolate(stamps, options.max_gap_s)
    mount = options.base_to_camera or saved.get("base_to_camera") or geometry.IDENTITY
    return _assemble(
        saved.get("name", path.name),
        "tum",
        path,
        stamps,
        gt.interpolate(stamps, options.max_gap_s),
        odom,
        np.asarray(mount, dtype=np.float64),
        camera,
        lambda keep: _file_frames([f for f, k in zip(files, keep, strict=True) if k], lens, size),
        options.max_gap_s,
    )


# --- EuRoC ASL ------------------------------------------------------------------------------


def _euroc_yaml(path: Path) -> dict:
    import yaml

    if not path.is_file():
        raise DatasetError(f"{path} does not exist")
    try:
        # Kalibr's files start with a "%YAML:1.0" directive that PyYAML does not know.
        text = "\n".join(line for line in path.read_text().splitlines() if not line.startswith("%"))
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise DatasetError(f"{path}: not YAML: {err}") from err
    for key in ("T_BS", "resolution", "intrinsics"):
        if key not in data:
            raise DatasetError(f"{path}: no {key!r}")
    return data


def read_euroc(path: Path, options: ReadOptions = ReadOptions()) -> Sequence:
    path = Path(path)
    mav = path / "mav0" if (path / "mav0").is_dir() else path
    cam = mav / "cam0"
    sensor = _euroc_yaml(cam / "sensor.yaml")
    if str(sensor.get("camera_model", "pinhole")).lower() != "pinhole":
        raise DatasetError(
            f"{cam / 'sensor.yaml'}: camera_model {sensor['camera_model']!r}; only pinhole "
            "(with radial-tangential or equidistant distortion) is read"
        )
    t_bs = np.asarray(sensor["T_BS"]["data"], dtype=np.float64).reshape(4, 4)
    body_to_camera = geometry.from_matrix(t_bs)
    data_csv = cam / "data.csv"
    rows = _rows(data_csv, 2, delimiter=",")
    if not rows:
        raise DatasetError(f"{data_csv} lists no images")
    stamps_ns = np.array([int(f[0]) for _, f in rows], dtype=np.int64)
    stamps = stamps_ns / 1e9
    files = _image_list(data_csv, rows, cam / "data", stamps_ns.astype(np.float64))
    gt_csv = mav / "state_groundtruth_estimate0" / "data.csv"
    gt_rows = _rows(gt_csv, tuple(range(8, 18)), delimiter=",")
    if not gt_rows:
        raise DatasetError(f"{gt_csv} has no poses")
    values = _numbers(gt_csv, [(n, f[:8]) for n, f in gt_rows])
    check_increasing(values[:, 0], _line_of(gt_csv, gt_rows))
    # p_RS_R xyz, then q_RS w x y z (scalar first) -> xyz_qxyzw.
    body = np.concatenate([values[:, 1:4], values[:, 5:8], values[:, 4:5]], axis=1)
    body[:, 3:] = geometry.quat_normalize(body[:, 3:])
    gt_body = Track(values[:, 0] / 1e9, body).interpolate(stamps, options.max_gap_s)
    width, height = (int(v) for v in sensor["resolution"])
    first = _decode_file(files[0])
    if (first.shape[1], first.shape[0]) != (width, height):
        raise DatasetError(
            f"{cam / 'sensor.yaml'}: resolution {width}x{height}, but {files[0]} is "
            f"{first.shape[1]}x{first.shape[0]}"
        )
    model = str(sensor.get("distortion_model", "radial-tangential"))
    d = tuple(float(v) for v in sensor.get("distortion_coefficients", ()))
    camera, lens = _lens(
        width, height, tuple(sensor["intrinsics"]), d, model, str(cam / "sensor.yaml")
    )
    return _assemble(
        path.name,
        "euroc",
        path,
        stamps,
        geometry.compose(gt_body, body_to_camera),
        None,
        np.asarray(options.base_to_camera or body_to_camera, dtype=np.float64),
        camera,
        lambda keep: _file_frames(
            [f for f, k in zip(files, keep, strict=True) if k], lens, (width, height)
        ),
        options.max_gap_s,
        {"distortion_model": model, "distortion": list(d)},
    )


# --- KITTI odometry -------------------------------------------------------------------------


def _kitti_calib(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DatasetError(f"{path} does not exist")
    out = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        key, colon, rest = line.partition(":")
        if not colon:
            continue
        try:
            out[key.strip()] = np.array([float(v) for v in rest.split()])
        except ValueError:
            raise DatasetError(f"{path}, line {number}: not numbers: {line}") from None
    return out


def read_kitti(path: Path, options: ReadOptions = ReadOptions()) -> Sequence:
    path = Path(path)
    folder = options.kitti_camera or ("image_2" if (path / "image_2").is_dir() else "image_0")
    index = folder.rsplit("_", 1)[-1]
    calib = _kitti_calib(path / "calib.txt")
    projection = calib.get(f"P{index}")
    if projection is None or projection.size != 12:
        raise DatasetError(f"{path / 'calib.txt'}: no 12-number P{index} for {folder}")
    p = projection.reshape(3, 4)
    k = p[:, :3]
    # P_i = K [I | t_i] in the rectified cam0 frame: camera i's centre is at -t_i.
    cam0_to_camera = np.concatenate([-np.linalg.solve(k, p[:, 3]), geometry.IDENTITY[3:]])
    times = path / "times.txt"
    rows = _rows(times, 1)
    stamps = _numbers(times, rows)[:, 0]
    check_increasing(stamps, _line_of(times, rows))
    files = sorted((path / folder).glob("*.png"))
    if len(files) != len(stamps):
        raise DatasetError(
            f"{path / folder} holds {len(files)} images but {times} lists {len(stamps)} stamps"
        )
    candidates = [path / "poses.txt", path.parent.parent / "poses" / f"{path.name}.txt"]
    poses_file = next((c for c in candidates if c.is_file()), None)
    if poses_file is None:
        raise DatasetError(
            f"{path}: no ground truth ({' or '.join(map(str, candidates))}); KITTI publishes "
            "poses for sequences 00-10 only"
        )
    pose_rows = _rows(poses_file, 12)
    if len(pose_rows) != len(stamps):
        raise DatasetError(
            f"{poses_file} has {len(pose_rows)} poses but {times} lists {len(stamps)} stamps"
        )
    matrices = _numbers(poses_file, pose_rows).reshape(-1, 3, 4)
    cam0 = np.stack([geometry.from_matrix(np.vstack([m, [0, 0, 0, 1]])) for m in matrices])
    first = _decode_file(files[0])
    size = (first.shape[1], first.shape[0])
    camera = PinholeCamera(*size, float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2]))
    return _assemble(
        path.name,
        "kitti",
        path,
        stamps,
        geometry.compose(cam0, cam0_to_camera),
        None,
        np.asarray(options.base_to_camera or geometry.IDENTITY, dtype=np.float64),
        camera,
        lambda keep: _file_frames([f for f, k in zip(files, keep, strict=True) if k], None, size),
        options.max_gap_s,
        {"camera": folder},
    )


# --- rosbag2 --------------------------------------------------------------------------------


def _only_topic(
    path: Path,
    topics: dict[str, str],
    types: tuple[str, ...],
    what: str,
    flag: str,
    exclude: set[str] = frozenset(),
) -> str:
    found = sorted(t for t, ty in topics.items() if ty in types and t not in exclude)
    if len(found) == 1:
        return found[0]
    listing = ", ".join(f"{t} ({ty})" for t, ty in sorted(topics.items()))
    raise DatasetError(
        f"bag {path}: {'no' if not found else len(found)} {what} topics; name one with {flag} "
        f"(its topics are: {listing or 'none'})"
    )


def read_bag(path: Path, options: ReadOptions = ReadOptions()) -> Sequence:
    path = Path(path)
    topics = bag_topics(path)
    image_topic = options.image_topic or _only_topic(
        path, topics, IMAGE_TYPES, "image", "--image-topic"
    )
    odom_topic = options.odom_topic
    if (
        odom_topic is None
        and options.odom_frames is None
        and topics.get("/odom") == "nav_msgs/msg/Odometry"
    ):
        odom_topic = "/odom"
    gt_topic = options.gt_topic
    if gt_topic is None and options.gt_frames is None:
        gt_topic = _only_topic(
            path,
            topics,
            POSE_TYPES,
            "ground-truth pose",
            "--gt-topic or --gt-frames",
            exclude={odom_topic} if odom_topic else set(),
        )
    run = read_run(
        path,
        image_topic,
        gt_topic=gt_topic,
        odom_topic=odom_topic,
        camera_info_topic=options.camera_info_topic,
        gt_frames=options.gt_frames,
        odom_frames=options.odom_frames,
    )
    if run.image_size is None:
        raise DatasetError(f"bag {path}: topic {image_topic} has no messages")
    width, height = run.image_size
    if options.intrinsics is not None:
        k, d, model = options.intrinsics, options.distortion, options.distortion_model
    elif run.intrinsics is not None:
        info = run.intrinsics
        if (info.width, info.height) != run.image_size:
            raise DatasetError(
                f"bag {path}: camera_info is for {info.width}x{info.height} images but "
                f"{image_topic} is {width}x{height}"
            )
        k = (info.fx, info.fy, info.cx, info.cy)
        d = tuple(run.distortion.d) if run.distortion is not None else ()
        model = run.distortion.model if run.distortion is not None else "plumb_bob"
    else:
        raise DatasetError(
            f"bag {path}: no camera_info beside {image_topic}; name it (--camera-info-topic) "
            "or pass the camera (--intrinsics fx fy cx cy)"
        )
    camera, lens = _lens(width, height, k, d, model, f"bag {path}, camera_info")
    assert run.gt is not None
    gt_where = gt_topic or f"TF {options.gt_frames[0]} -> {options.gt_frames[1]}"
    if len(run.gt.stamps) < 2:
        raise DatasetError(f"bag {path}: {gt_where} has {len(run.gt.stamps)} poses; need 2")
    stamps = run.image_stamps
    mount = (
        np.asarray(options.base_to_camera, dtype=np.float64)
        if options.base_to_camera is not None
        else run.base_to_camera
    )
    body = options.gt_frame or run.gt_child_frame or run.image_frame_id
    if body == run.image_frame_id:
        body_to_camera = geometry.IDENTITY
    else:
        body_to_camera = static_chain(run.static or {}, body, run.image_frame_id)
        # Without a static chain from it, the ground truth's frame is taken to be the base
        # when the user gave the mount, or when it is the odometry's frame.
        base = options.base_to_camera is not None or body == run.odom_child_frame
        if body_to_camera is None and base and mount is not None:
            body_to_camera = mount
        if body_to_camera is None:
            raise DatasetError(
                f"bag {path}: the ground truth ({gt_where}) is the pose of {body!r}, and no "
                f"/tf_static chain leads from it to the camera frame {run.image_frame_id!r}; "
                "pass --base-to-camera, or --gt-frame with the frame it is of"
            )
    gt_camera = geometry.compose(run.gt.interpolate(stamps, options.max_gap_s), body_to_camera)
    odom = None if run.odom is None else run.odom.interpolate(stamps, options.max_gap_s)
    if mount is None:
        mount = geometry.IDENTITY
        if odom is not None:
            raise DatasetError(
                f"bag {path}: no /tf_static chain from the odometry's frame "
                f"{run.odom_child_frame!r} to the camera frame {run.image_frame_id!r}; pass "
                "--base-to-camera x y z qx qy qz qw"
            )

    def frames(keep: np.ndarray) -> LazyImages:
        def iterate() -> Iterator[np.ndarray]:
            for i, (_, rgb) in enumerate(run.images()):
                if keep[i]:
                    yield lens(rgb) if lens is not None else rgb

        return LazyImages((int(keep.sum()), height, width, 3), iterate)

    return _assemble(
        path.name,
        "rosbag2",
        path,
        stamps,
        gt_camera,
        odom,
        mount,
        camera,
        frames,
        options.max_gap_s,
        {
            "image_topic": image_topic,
            "gt": gt_where,
            "odom": odom_topic
            or (
                f"TF {options.odom_frames[0]} -> {options.odom_frames[1]}"
                if options.odom_frames
                else None
            ),
        },
    )


# --- command lines ----------------------------------------------------------------------------


def add_reader_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that say how to read runs (``--format``, the bag topics and frames, the
    camera when the run lacks it); :func:`reader_options` turns them into options."""
    group = parser.add_argument_group("reading recorded runs (rosbag2, TUM RGB-D, EuRoC, KITTI)")
    group.add_argument("--format", choices=FORMATS, help="force the format (default: detected)")
    group.add_argument("--image-topic", help="bags: Image or CompressedImage topic")
    group.add_argument(
        "--gt-topic",
        help="bags: ground truth (PoseStamped, PoseWithCovarianceStamped, Odometry, "
        "TransformStamped)",
    )
    group.add_argument(
        "--gt-frames",
        nargs=2,
        metavar=("PARENT", "CHILD"),
        help="bags: ground truth from the TF chain PARENT -> CHILD (e.g. world robot, map base_link)",
    )
    group.add_argument(
        "--gt-frame",
        help="bags: the frame the ground truth is the pose of (default: its child frame; "
        "the camera for a PoseStamped)",
    )
    group.add_argument("--odom-topic", help="bags: wheel odometry (nav_msgs/Odometry)")
    group.add_argument(
        "--odom-frames",
        nargs=2,
        metavar=("PARENT", "CHILD"),
        help="bags: wheel odometry from the TF chain PARENT -> CHILD (e.g. odom base_link)",
    )
    group.add_argument("--camera-info-topic", help="bags: default: camera_info beside the image")
    group.add_argument(
        "--base-to-camera",
        type=float,
        nargs=7,
        metavar=("X", "Y", "Z", "QX", "QY", "QZ", "QW"),
        help="camera optical frame in the base frame (default: from /tf_static)",
    )
    group.add_argument(
        "--intrinsics",
        type=float,
        nargs=4,
        metavar=("FX", "FY", "CX", "CY"),
        help="the camera, when the run does not carry it",
    )
    group.add_argument(
        "--distortion", type=float, nargs="+", default=(), help="with --intrinsics: d coefficients"
    )
    group.add_argument(
        "--distortion-model", default="plumb_bob", help="plumb_bob (radtan) or equidistant"
    )
    group.add_argument(
        "--max-gap",
        type=float,
        default=0.2,
        help="longest ground-truth gap (s) bridged by interpolation; frames in longer ones "
        "are dropped",
    )
    group.add_argument("--kitti-camera", choices=("image_2", "image_0"), help="KITTI camera")


def reader_options(args: argparse.Namespace) -> tuple[str | None, ReadOptions]:
    """``(format or None, ReadOptions)`` from :func:`add_reader_arguments`' flags."""
    return args.format, ReadOptions(
        image_topic=args.image_topic,
        gt_topic=args.gt_topic,
        gt_frames=tuple(args.gt_frames) if args.gt_frames else None,
        gt_frame=args.gt_frame,
        odom_topic=args.odom_topic,
        odom_frames=tuple(args.odom_frames) if args.odom_frames else None,
        camera_info_topic=args.camera_info_topic,
        base_to_camera=tuple(args.base_to_camera) if args.base_to_camera else None,
        intrinsics=tuple(args.intrinsics) if args.intrinsics else None,
        distortion=tuple(args.distortion),
        distortion_model=args.distortion_model,
        max_gap_s=args.max_gap,
        kitti_camera=args.kitti_camera,
    )
