"""``zeroshot dedup``: near-duplicate images within a set, or between two (train/evaluation leakage)."""
from __future__ import annotations

from pathlib import Path

from .options import (add_model_args, add_output_arg, backbone_from_args, check_at_least, check_output, check_run_args,
                      extract_from_args, open_data, report_failed)


def add_commands(sub) -> None:
    from ..retrieval.dedup import DEFAULT_THRESHOLD

    p = sub.add_parser("dedup", help="near-duplicate images within a set or between two (train/eval leakage)")
    p.add_argument("data", nargs="+", metavar="DATA", help="images: folder, .csv list, .npz, tar shards (a "
                   "{000000..000009} range or several shard files) or image files")
    p.add_argument("--against", metavar="OTHER", help="a second dataset (any kind DATA takes): find images of DATA "
                                                       "that nearly duplicate images of OTHER, e.g. train against val")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help="cosine at or above which two images count as near-duplicates (measured for the default "
                        "model by scripts/bench_dedup.py; other backbones space images differently)")
    p.add_argument("--pairs", type=int, default=24, help="closest pairs shown on closest_pairs.png")
    add_output_arg(p, "folder to write pairs.csv, groups.csv and closest_pairs.png")
    add_model_args(p)
    p.set_defaults(func=cmd_dedup)


def cmd_dedup(args) -> None:
    from ..retrieval.dedup import check_threshold, components, find_pairs, match_groups, write_groups, write_pairs

    check_run_args(args)
    check_threshold(args.threshold)
    check_at_least("--pairs", args.pairs)
    check_output("--output", args.output, folder=True)
    data = open_data(args.data)
    other = open_data(args.against) if args.against else None
    if other is not None and other.location == data.location:
        raise ValueError(f"DATA and --against are both {data.location}; drop --against to find near-duplicates "
                         "within one set, or give two different sets")
    backbone = backbone_from_args(args)
    features = [extract_from_args(args, backbone, d) for d in (data, other) if d is not None]
    for fs in features:
        report_failed(fs.failed)
    pairs = find_pairs(features[0].features, features[1].features if other else None, threshold=args.threshold)
    groups = match_groups(pairs) if other else components(pairs, len(features[0]))
    sets = [(d.location, fs.ids) for d, fs in zip((data, other), features)]
    out = Path(args.output).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    write_pairs(out / "pairs.csv", pairs, *sets)
    write_groups(out / "groups.csv", groups, *sets)
    closest_pairs_png(out / "closest_pairs.png", pairs.top(args.pairs), data, other, features, backbone,
                      args.threshold)
    print(f"pairs: {len(pairs)} at cosine >= {args.threshold}")
    print(f"groups: {groups.group.max(initial=0)}")
    print(f"threshold: {args.threshold}")
    print(f"model: {args.model} (fingerprint {backbone.fingerprint})")
    print(f"data: {data.location} ({len(features[0])} images)")
    if other is not None:
        print(f"against: {other.location} ({len(features[1])} images)")
    print(f"wrote: {out / 'pairs.csv'}, {out / 'groups.csv'}, {out / 'closest_pairs.png'}")


def closest_pairs_png(path: Path, top, data, other, features: list, backbone, threshold: float) -> None:
    """The contact sheet of the ``top`` pairs. Their rows index the FeatureSets, which skip undecodable images, so
    they are mapped back to the datasets' rows, where the images are read."""
    from ..plotting import dataset_label, run_title
    from ..retrieval.dedup import Pairs, contact_sheet, dataset_rows

    shown = Pairs(dataset_rows(data, features[0].ids[top.a]), dataset_rows(other or data, features[-1].ids[top.b]),
                  top.cosine)
    title = (run_title(None, data.location, backbone.name, backbone.fingerprint)
             + (f" against {dataset_label(other.location)}" if other else "")
             + f": closest pairs, cosine >= {threshold}")
    contact_sheet(path, shown, data, other, title=title)
