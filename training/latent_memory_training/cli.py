"""``latent_memory_train``: render data, fit a model, export it for the node.

Heavy imports (torch) happen inside the sub-commands, so ``render`` runs without torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
from pathlib import Path

from latent_memory_ros.atomic import atomic_path

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def parse_bool(text: str) -> bool:
    """A boolean flag's value; anything but true/false (1/0, yes/no, on/off) is refused
    at parse time, so a typo never reads as false."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def count(text: str) -> int:
    """A flag that counts something (processes, frames, steps, slots): a whole number of
    at least 1, refused at parse time (``--query-every 0`` once divided by zero)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


def _add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """One flag per field of the dataclass ``cls``, typed like its default; a field's
    ``metadata["choices"]`` limits its values."""
    for f in dataclasses.fields(cls):
        default = f.default
        flag = "--" + prefix + f.name.replace("_", "-")
        help_text = f"{cls.__name__}.{f.name} (default: %(default)s)"
        if isinstance(default, bool):
            parser.add_argument(
                flag, type=parse_bool, default=default, metavar="{true,false}", help=help_text
            )
        elif isinstance(default, tuple):
            parser.add_argument(flag, type=int, nargs="+", default=list(default), help=help_text)
        else:
            parser.add_argument(
                flag,
                type=type(default),
                default=default,
                choices=f.metadata.get("choices"),
                help=help_text,
            )


def _dataclass_from_args(cls: type, args: argparse.Namespace, prefix: str = ""):
    values = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, (prefix + f.name).replace("-", "_"))
        values[f.name] = tuple(value) if isinstance(f.default, tuple) else value
    return cls(**values)


def _run_sources(args: argparse.Namespace, paths: list[Path] | None) -> list:
    """The runs of ``paths`` (each a run or a folder of runs, any mix of formats), read
    as the reader flags say."""
    from latent_memory_ros.datasets import reader_options
    from latent_memory_training.data.prepare import find_sources

    if not paths:
        return []
    fmt, options = reader_options(args)
    return find_sources(paths, fmt, options)


def _split_by_run(train: list, val: list, fraction: float, seed: int) -> tuple[list, list]:
    """Training and validation runs: ``--val`` as given (refusing a run in both), or with
    ``--val-fraction`` a seeded share of the ``--data`` runs, whole runs only."""
    import numpy as np

    if val:
        both = {s.path.resolve() for s in train} & {s.path.resolve() for s in val}
        if both:
            raise ValueError(f"runs in both --data and --val: {', '.join(map(str, sorted(both)))}")
        return train, val
    if fraction <= 0:
        return train, []
    count = max(1, round(fraction * len(train)))
    if count >= len(train):
        raise ValueError(f"--val-fraction {fraction} of {len(train)} runs leaves none to train on")
    held = set(np.random.default_rng(seed).permutation(len(train))[:count].tolist())
    return (
        [s for i, s in enumerate(train) if i not in held],
        [s for i, s in enumerate(train) if i in held],
    )


def _training_data(args: argparse.Namespace, train_cfg, size: tuple[int, int], sources: list):
    """The runs of ``--data`` (``sources``), or with ``--world`` a pool of fresh rooms
    (started at the step a resumed run carries on from); None with a message when
    neither gives anything."""
    from latent_memory_training.data.prepare import load_prepared
    from latent_memory_training.data.world_stream import RoomPool
    from latent_memory_training.training.config import WorldConfig

    if args.world:
        import torch

        world = _dataclass_from_args(WorldConfig, args, "world_")
        step = 0
        if args.resume is not None:
            step = int(torch.load(args.resume, map_location="cpu", weights_only=False)["step"])
        print(f"rendering fresh rooms ({world.workers} workers, {world.cameras} cameras) ...")
        return RoomPool(train_cfg.seed, size, world, step=step)
    if not sources:
        print(
            "error: give --data (runs: rosbag2, TUM RGB-D, EuRoC, KITTI folders or cached "
            "renders, or folders of them) or --world",
            file=sys.stderr,
        )
        return None
    formats = sorted({s.fmt for s in sources})
    print(f"preparing {len(sources)} training runs ({', '.join(formats)}) ...", flush=True)
    return load_prepared(sources, *size, jobs=args.jobs, cache_dir=args.out / "prepared")


def _fine_tuned_config(train_cfg, model_cfg):
    """With ``--init-from``, the model's configuration is the checkpoint's."""
    import dataclasses

    import torch

    from latent_memory_training.models.config import ModelConfig
    from latent_memory_training.training.fit import fine_tuning_checkpoint

    checkpoint = fine_tuning_checkpoint(Path(train_cfg.init_from))
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)["model_config"]
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(saved) - known)
    if unknown:
        raise ValueError(
            f"{checkpoint} is a model of another version (configuration fields "
            f"{', '.join(unknown)} unknown here)"
        )
    if dataclasses.asdict(model_cfg) != dataclasses.asdict(ModelConfig()):
        print("note: --init-from takes the model configuration of the checkpoint")
    return ModelConfig(**saved)


def _run_fit(args: argparse.Namespace) -> int:
    from latent_memory_ros.bag import BagTopicError
    from latent_memory_ros.tracks import DatasetError
    from latent_memory_training.data.prepare import load_prepared
    from latent_memory_training.data.world_stream import RoomPool
    from latent_memory_training.models.config import ModelConfig
    from latent_memory_training.training.config import TrainConfig
    from latent_memory_training.training.fit import fit

    model_cfg = _dataclass_from_args(ModelConfig, args, "model_")
    train_cfg = _dataclass_from_args(TrainConfig, args)
    cache = args.out / "prepared"
    try:
        if train_cfg.init_from:
            model_cfg = _fine_tuned_config(train_cfg, model_cfg)
        w, h = model_cfg.image_width, model_cfg.image_height
        train_runs, val_runs = _split_by_run(
            _run_sources(args, args.data),
            _run_sources(args, args.val),
            args.val_fraction,
            train_cfg.seed,
        )
        if val_runs:
            print(f"validation runs: {', '.join(s.path.name for s in val_runs)}")
        train = _training_data(args, train_cfg, (w, h), train_runs)
        if train is None:
            return 2
        val = load_prepared(val_runs, w, h, jobs=args.jobs, cache_dir=cache)
        heldout_runs = _run_sources(args, args.heldout)
        heldout = load_prepared(heldout_runs, w, h, jobs=args.jobs, cache_dir=cache)
    except (DatasetError, BagTopicError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    teacher = getattr(args, "teacher", None)
    if teacher is not None:
        if train_cfg.distill_weight <= 0:
            print("error: distill needs --distill-weight > 0", file=sys.stderr)
            return 2
        print(
            f"distilling from {teacher} ({train_cfg.distill_distance}, "
            f"{train_cfg.distill_schedule} lambda {train_cfg.distill_weight})",
            flush=True,
        )
    if isinstance(train, RoomPool):
        # A stopped run (kill, a scheduler's SIGTERM) still stops its rendering workers.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        best = fit(
            train,
            val,
            args.out,
            model_cfg,
            train_cfg,
            resume=args.resume,
            teacher_path=teacher,
            heldout=heldout,
        )
    finally:
        if isinstance(train, RoomPool):
            print(f"rooms seen: {train.rooms_seen}; waited {train.waited_s:.0f} s for rendering")
            train.close()
    print(f"best checkpoint: {best}")
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from latent_memory_ros.model_format import tracking_thresholds
    from latent_memory_training.export.onnx_export import export_model
    from latent_memory_training.models.config import ModelConfig
    from latent_memory_training.models.student import LocalisationModel
    from latent_memory_training.training.fit import load_model

    if args.random_init:
        import torch

        torch.manual_seed(args.seed)
        model, data = LocalisationModel(ModelConfig(cell=args.cell)), {}
    else:
        if args.checkpoint is None:
            print("error: --checkpoint is required unless --random-init", file=sys.stderr)
            return 2
        model, data = load_model(args.checkpoint)
    metrics = {}
    for path in args.metrics or []:
        metrics |= json.loads(Path(path).read_text())
    if args.heldout:
        results = json.loads(Path(args.heldout).read_text())
        metrics["heldout"] = {
            "sequences": len({r["sequence"] for r in results["per_sequence"]}),
            "summary": results["summary"],
            "calibration": results["calibration"],
        }
    if args.distillation:
        from latent_memory_training.benchmark.distillation import summary

        results = json.loads(Path(args.distillation).read_text())
        try:
            metrics["distillation"] = summary(results, args.distilled)
        except KeyError as err:
            print(f"error: --distillation {args.distillation}: {err.args[0]}", file=sys.stderr)
            return 2
    tracking = None
    if args.heldout:
        tracking = tracking_thresholds(metrics["heldout"]["calibration"]["original"])
    training = {k: data[k] for k in ("train_config", "step", "history") if k in data}
    if args.data_summary:
        training["data"] = json.loads(Path(args.data_summary).read_text())
    out = export_model(
        model, args.out, args.name or Path(args.out).name, training, metrics, tracking
    )
    _keep_weights(model, data, Path(out))
    print(f"exported {out}")
    return 0


def _keep_weights(model, data: dict, model_dir: Path) -> None:
    """The PyTorch weights beside the ONNX graphs (``checkpoint.pt``, no optimizer
    state), so that ``fit --init-from MODEL_DIR`` can fine-tune an exported model."""
    import torch

    from latent_memory_training.training.fit import CHECKPOINT_IN_MODEL_DIR

    kept = {k: v for k, v in data.items() if k != "optimizer"}
    kept |= {"model_config": model.config.to_dict(), "model": model.state_dict()}
    with atomic_path(model_dir / CHECKPOINT_IN_MODEL_DIR) as tmp:
        torch.save(kept, tmp)


def _run_bench_accuracy(args: argparse.Namespace, cells: list[str]) -> int:
    from latent_memory_training.benchmark.accuracy import accuracy_table, cell_accuracy
    from latent_memory_training.data.prepare import find_sequences, load_prepared
    from latent_memory_training.models.cells import CELLS
    from latent_memory_training.training.config import TrainConfig

    if not (args.val and args.test):
        print("error: --data needs --val and --test", file=sys.stderr)
        return 2
    train = load_prepared(find_sequences(args.data), 128, 96, jobs=args.jobs)
    val = load_prepared(find_sequences(args.val), 128, 96, jobs=args.jobs)
    steps = 2400 if args.full else args.train_steps
    test = find_sequences(args.test)
    test = test if args.full else test[: args.test_sequences]
    test_seqs = load_prepared(test, 128, 96, jobs=args.jobs)
    half = max(1, steps // 2)
    cfg = TrainConfig(steps=steps, window=48, spans=(1, 4, 16, 47),
                      val_every=half, curriculum_steps=half)  # fmt: skip
    # The teacher trains first: the distilled rows learn from it.
    cells = sorted(cells, key=lambda c: c != "bottleneck")
    teacher = args.teacher
    if args.distill and teacher is None and "bottleneck" not in cells:
        print("error: --distill needs --teacher or the bottleneck cell", file=sys.stderr)
        return 2
    rows = []

    def add(cell: str, distilled_from: Path | None = None) -> None:
        rows.append(
            cell_accuracy(
                cell,
                train,
                val,
                test,
                test_seqs,
                args.out,
                cfg,
                args.jobs,
                distilled_from,
                ablation=not args.no_ablation,
            )
        )
        (args.out / "accuracy.json").write_text(json.dumps(rows, indent=2) + "\n")
        (args.out / "accuracy.md").write_text(accuracy_table(rows) + "\n")
        print(accuracy_table(rows[-1:]).splitlines()[-1], flush=True)

    for cell in cells:
        add(cell)
        if cell == "bottleneck" and teacher is None:
            teacher = Path(rows[-1]["checkpoint"])
        if args.distill and cell in CELLS:
            add(cell, teacher)
    print(accuracy_table(rows))
    return 0


def _run_compare(args: argparse.Namespace) -> int:
    import torch

    from latent_memory_training.benchmark.distillation import run, table
    from latent_memory_training.data.prepare import find_sequences, load_prepared

    checkpoints = {}
    for item in args.checkpoint:
        name, _, path = item.partition("=")
        if not path:
            print(f"error: --checkpoint {item}: expected NAME=PATH", file=sys.stderr)
            return 2
        checkpoints[name] = Path(path)
    sizes = {
        (c["model_config"]["image_width"], c["model_config"]["image_height"])
        for c in (
            torch.load(p, map_location="cpu", weights_only=False) for p in checkpoints.values()
        )
    }
    if len(sizes) != 1:
        print(f"error: the models differ in input size {sorted(sizes)}", file=sys.stderr)
        return 2
    (w, h) = sizes.pop()
    paths = find_sequences(args.data)[: args.limit or None]
    seqs = load_prepared(paths, w, h, jobs=args.jobs)
    results = run(
        checkpoints, seqs, args.out, args.query_every, args.query_min_gap, not args.no_ablation
    )
    print(table(results))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from latent_memory_training.data.cli_render import add_render_arguments
    from latent_memory_training.models.config import ModelConfig
    from latent_memory_training.training.config import TrainConfig, WorldConfig

    parser = argparse.ArgumentParser(prog="latent_memory_train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    render = sub.add_parser(
        "render", help="render synthetic runs (world.md) to rosbag2, TUM or npz"
    )
    add_render_arguments(render)

    fit = sub.add_parser(
        "fit", help="train a model on runs: cached renders, rosbag2, TUM RGB-D, EuRoC, KITTI"
    )
    distill = sub.add_parser(
        "distill",
        help="train a student whose memory is pulled towards a frozen bottleneck teacher's",
    )
    distill.add_argument(
        "--teacher", type=Path, required=True, help="checkpoint of a --model-cell bottleneck fit"
    )
    from latent_memory_ros.datasets import add_reader_arguments

    runs = "each a run (rosbag2, TUM RGB-D, EuRoC or KITTI folder, cached render .npz) or a folder of runs, formats mixed"
    for p in (fit, distill):
        p.add_argument("--data", type=Path, nargs="+", help=f"training runs: {runs}")
        p.add_argument(
            "--world",
            action="store_true",
            help="train on fresh rooms from the generator for as long as it trains "
            "(--world-* flags), instead of --data",
        )
        p.add_argument("--val", type=Path, nargs="+", help=f"validation runs: {runs}")
        p.add_argument(
            "--val-fraction",
            type=float,
            default=0.0,
            help="without --val: this share of the --data runs (whole runs, seeded by --seed) "
            "validates instead of training",
        )
        p.add_argument(
            "--heldout",
            type=Path,
            nargs="+",
            help="held-out runs scored every --heldout-every steps into the history (never "
            f"used to choose a checkpoint): {runs}",
        )
        add_reader_arguments(p)
        p.add_argument("--out", type=Path, required=True, help="folder for checkpoints")
        p.add_argument("--resume", type=Path, help="checkpoint to resume from (last.pt)")
        p.add_argument("--jobs", type=count, default=1, help="processes preparing uncached data")
        _add_dataclass_arguments(p, ModelConfig, "model-")
        _add_dataclass_arguments(p, TrainConfig)
        _add_dataclass_arguments(p, WorldConfig, "world-")
    distill.set_defaults(distill_weight=0.1, distill_distance="cosine")  # the shipped recipe

    export = sub.add_parser("export", help="export a checkpoint to models/NAME for the node")
    export.add_argument("--checkpoint", type=Path)
    export.add_argument("--out", type=Path, required=True)
    export.add_argument("--name")
    export.add_argument("--cell", default="kinaema")
    export.add_argument("--random-init", action="store_true", help="export an untrained model")
    export.add_argument("--seed", type=int, default=0)
    export.add_argument(
        "--metrics", type=Path, action="append", help="JSON of metrics measured before export"
    )
    export.add_argument(
        "--heldout", type=Path, help="results of `heldout` to summarise into model.json"
    )
    export.add_argument(
        "--distillation", type=Path, help="results of `compare` to summarise into model.json"
    )
    export.add_argument(
        "--distilled", default="distilled", help="the compared model this one comes from"
    )
    export.add_argument("--data-summary", type=Path, help="JSON describing the training data")
    bench = sub.add_parser(
        "bench", help="per-cell cost: parameters, state bytes, FLOPs, latency against t"
    )
    bench.add_argument("--out", type=Path, required=True, help="folder for costs.json/.md/.png")
    bench.add_argument("--cells", nargs="+", help="cells to measure (default: all)")
    bench.add_argument("--at", type=int, nargs="+", default=[10, 100, 1000, 10000])
    bench.add_argument("--data", type=Path, help="train renders (*.npz): also train every cell")
    bench.add_argument("--val", type=Path, help="validation renders (*.npz)")
    bench.add_argument("--test", type=Path, help="held-out renders (*.npz)")
    bench.add_argument("--train-steps", type=count, default=100, help="training budget per cell")
    bench.add_argument("--test-sequences", type=count, default=2, help="held-out sequences used")
    bench.add_argument(
        "--distill",
        action="store_true",
        help="also train every fixed-state cell distilled from the teacher (+distill rows)",
    )
    bench.add_argument(
        "--teacher", type=Path, help="teacher checkpoint for --distill (default: train one)"
    )
    bench.add_argument("--jobs", type=count, default=2, help="processes for data and evaluation")
    bench.add_argument(
        "--full",
        action="store_true",
        help="the long version: the shipped model's budget (2,400 steps) and all held-out sequences",
    )

    compare = sub.add_parser(
        "compare",
        help="distillation table: checkpoints side by side on held-out renders (PyTorch)",
    )
    compare.add_argument(
        "--checkpoint",
        action="append",
        required=True,
        metavar="NAME=PATH",
        help="a model to compare; names full, teacher, student, distilled give gap_closed",
    )
    compare.add_argument("--data", type=Path, required=True, help="held-out renders (*.npz)")
    compare.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    compare.add_argument("--limit", type=int, default=0, help="only the first N sequences")
    compare.add_argument("--jobs", type=count, default=1, help="processes preparing data")
    compare.add_argument("--query-every", type=count, default=150, help="frames between queries")
    compare.add_argument("--query-min-gap", type=count, default=30, help="frames back at least")

    place = sub.add_parser(
        "place",
        help="add a trained, calibrated place memory to a checkpoint (queries that answer)",
    )
    place.add_argument("--checkpoint", type=Path, required=True, help="the model to extend")
    place.add_argument(
        "--data",
        type=Path,
        nargs="+",
        help="training runs (any format; omit with --val to keep the trained place memory)",
    )
    place.add_argument(
        "--val", type=Path, help="validation runs: calibration (omit with --data to keep it)"
    )
    place.add_argument(
        "--revisit-val",
        type=Path,
        nargs="+",
        help="long validation runs (folders) with revisits: choose how revisits pull the pose",
    )
    place.add_argument("--out", type=Path, required=True, help="the new checkpoint (.pt)")
    place.add_argument("--slots", type=count, default=128, help="place slots in the memory")
    place.add_argument("--dim", type=count, default=32, help="size of a view's descriptor")
    place.add_argument("--steps", type=count, default=1500, help="contrastive training steps")
    place.add_argument("--every", type=count, default=2, help="train on every N-th frame")
    place.add_argument("--seed", type=int, default=0)
    place.add_argument("--threads", type=count, default=1)

    heldout = sub.add_parser("heldout", help="held-out accuracy of an exported model and baselines")
    heldout.add_argument("--model", type=Path, required=True)
    heldout.add_argument(
        "--data", type=Path, required=True, help="folder of held-out renders (*.npz)"
    )
    heldout.add_argument("--out", type=Path, required=True, help="JSON file for the results")
    heldout.add_argument("--no-mirror", action="store_true", help="skip the mirrored copies")
    heldout.add_argument("--limit", type=int, default=0, help="only the first N sequences")
    heldout.add_argument("--jobs", type=count, default=1, help="worker processes")
    heldout.add_argument(
        "--query-every",
        type=count,
        default=30,
        help="frames between the earlier frames asked about",
    )
    heldout.add_argument("--query-min-gap", type=count, default=30, help="frames back at least")
    for p in (heldout, compare, bench):
        p.add_argument(
            "--no-ablation",
            action="store_true",
            help="skip the memory ablation (the runs with the memory reset before every frame)",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "render":
        from latent_memory_training.data.cli_render import run_render

        return run_render(args) or 0
    if args.command == "bench":
        from latent_memory_training.benchmark.costs import all_cells, costs_table, run_costs

        cells = args.cells or all_cells()
        rows = run_costs(args.out, cells, tuple(args.at))
        print(costs_table(rows, tuple(args.at)))
        if args.data:
            return _run_bench_accuracy(args, cells)
        return 0
    if args.command == "compare":
        return _run_compare(args)
    if args.command == "heldout":
        from latent_memory_training.benchmark.heldout import run

        return run(args)
    if args.command == "place":
        from latent_memory_training.training.place import run as run_place

        return run_place(args)
    return {"fit": _run_fit, "distill": _run_fit, "export": _run_export}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
