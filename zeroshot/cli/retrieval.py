"""Retrieval commands: ``zeroshot index build``, ``zeroshot index add``, ``zeroshot search`` and ``zeroshot serve``."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
import time
from pathlib import Path

from .options import (
    add_engine_args,
    add_model_args,
    add_output_arg,
    backbone_from_args,
    check_at_least,
    check_exists,
    check_output,
    check_run_args,
    extract_from_args,
    open_data,
    report_failed,
)


def add_commands(sub) -> None:
    p = sub.add_parser("index", help="FAISS indexes over image features")
    verbs = p.add_subparsers(dest="index_command", required=True)
    build = verbs.add_parser("build", help="index images (any dataset kind) or a saved FeatureSet folder")
    build.add_argument("data", nargs="+", help="images: folder, .csv list, .npz, tar shards or files; or a FeatureSet "
                                               "folder written by `zeroshot extract --output`")
    add_output_arg(build, "index folder to write")
    build.add_argument("--index", default="auto", help="'auto' (picked from N, D and --max-memory) or a faiss "
                                                       "index_factory string: Flat, HNSW32, IVF1024,Flat, IVF4096,PQ48x8")
    build.add_argument("--max-memory", default="2G", help="memory budget for 'auto' (e.g. 2G, 500M)")
    build.add_argument("--target-recall", type=float, default=0.95,
                       help="recall@10 vs exact search that nprobe/efSearch are tuned to")
    build.add_argument("--nprobe", type=int, help="IVF lists searched (skips tuning)")
    build.add_argument("--ef-search", type=int, help="HNSW search breadth (skips tuning)")
    build.add_argument("--seed", type=int, default=0, help="seed of the training sample and the tuning queries")
    build.add_argument("--captions", metavar="CSV", help="CSV of captions to store with the index, several per image allowed (header "
                                          "with columns image and caption, e.g. Flickr8k's captions.csv): `serve` "
                                          "shows them under each result and text searches can match them")
    add_engine_args(build, gpus=True, workers_help="Ray tasks encoding row chunks at once (default: the cluster's "
                    "CPUs; --engine ray builds IVF and Flat indexes), and the Ray workers extracting images")
    add_model_args(build)
    build.set_defaults(func=cmd_index_build)

    add = verbs.add_parser("add", help="append a saved FeatureSet (same backbone, new ids) to a saved index")
    add.add_argument("index", help="index folder (from `zeroshot index build`), updated in place")
    add.add_argument("features", help="FeatureSet folder written by `zeroshot extract --output`")
    add.set_defaults(func=cmd_index_add)

    p = sub.add_parser("search", help="search an index by text, by image file or by indexed id")
    p.add_argument("index", help="index folder (from `zeroshot index build`)")
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--text", action="append", help="text query (repeat for a batch)")
    query.add_argument("--image", action="append", help="image file query (repeat for a batch)")
    query.add_argument("--id", action="append", help="indexed image id (repeat for a batch); leaves itself out")
    p.add_argument("-k", type=int, default=10, help="results per query")
    p.add_argument("--template", action="append", help="prompt template with {} for text queries, repeatable; "
                                                       "embeddings are averaged (default: the text as is)")
    p.add_argument("--format", default="table", choices=["table", "csv", "json"],
                   help="results as an aligned table, CSV (query, rank, score, id, path) or JSON")
    p.add_argument("--output", help="write results here (default: stdout)")
    add_model_args(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("serve", help="search page + JSON API over an index (http://127.0.0.1:8000/)")
    p.add_argument("index", help="index folder (from `zeroshot index build`)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free port)")
    p.add_argument("--max-upload-mb", type=float, default=8.0, help="largest image upload accepted")
    p.add_argument("--template", action="append", help="prompt template with {} for text queries, repeatable")
    p.add_argument("--allow-host", action="append", metavar="NAME",
                   help="a further name the server answers to, repeatable; it always answers to the bound address "
                        "and localhost, and refuses other Host headers (DNS rebinding); '*' allows any")
    p.add_argument("--dedup-cosine", type=float, metavar="COSINE",
                   help="near-duplicates hidden by the page's dedup toggle: results within this cosine of a better one "
                        "(default: 0.97, measured for the default model; see README)")
    add_model_args(p)
    p.set_defaults(func=cmd_serve)


def cmd_index_build(args) -> None:
    from ..features import MANIFEST, FeatureSet
    from ..retrieval.index import Index, check_factory, parse_bytes
    from ..retrieval.search import add_captions, read_captions

    start = time.perf_counter()
    check_run_args(args)
    check_output("--output", args.output, folder=True)
    parse_bytes(args.max_memory)
    if not 0 < args.target_recall <= 1:
        raise ValueError(f"--target-recall must be in (0, 1], got {args.target_recall}")
    check_at_least("--nprobe", args.nprobe)
    check_at_least("--ef-search", args.ef_search)
    check_exists("--captions", args.captions)
    captions = read_captions(args.captions) if args.captions else None  # a bad file fails before any encoding
    source = args.data[0] if len(args.data) == 1 else args.data
    if isinstance(source, str) and (Path(source) / MANIFEST).is_file():
        features, backbone = FeatureSet.load(source), None
    else:
        data, backbone = open_data(source), backbone_from_args(args)
        check_factory(args.index, len(data), backbone.embed_dim, warn=False)  # errors before encoding
        features = extract_from_args(args, backbone, data)
        report_failed(features.failed)
    params = {name: value for name, value in (("nprobe", args.nprobe), ("efSearch", args.ef_search)) if value}
    index = Index.build(features, factory=args.index, max_memory=args.max_memory, target_recall=args.target_recall,
                        params=params or None, seed=args.seed, engine=args.engine, address=args.address,
                        num_workers=args.num_workers)
    if captions:
        add_captions(index, backbone or backbone_from_args(args), *captions)
    index.save(args.output)
    print(json.dumps({"n": len(index), "dim": index.dim, "factory": index.factory, "params": index.params,
                      "tuned_recall@10": index.tuned_recall, "fingerprint": index.fingerprint,
                      "images": index.paths is not None, "captions": len(index.captions), "engine": args.engine,
                      "out": args.output,
                      "seconds": round(time.perf_counter() - start, 2)}, indent=1))


def cmd_index_add(args) -> None:
    from ..cache import entry_lock
    from ..features import FeatureSet
    from ..retrieval.index import Index

    start = time.perf_counter()
    folder = Path(args.index)
    # two adds at once: the second waits, then adds to the first's result (a missing folder: load says so)
    with entry_lock(folder) if folder.is_dir() else contextlib.nullcontext():
        index = Index.load(args.index)
        before = len(index)
        index.add_features(FeatureSet.load(args.features)).save(args.index)
    print(json.dumps({"added": len(index) - before, "n": len(index), "factory": index.factory,
                      "fingerprint": index.fingerprint, "images": index.paths is not None, "out": args.index,
                      "seconds": round(time.perf_counter() - start, 2)}, indent=1))


def cmd_search(args) -> None:
    from ..retrieval.index import Index
    from ..retrieval.search import search_ids, search_images, search_text

    check_run_args(args)
    check_at_least("-k", args.k)
    check_output("--output", args.output)
    for image in args.image or []:
        check_exists("--image", image)
    index = Index.load(args.index)
    try:
        if args.id:
            queries, hits = args.id, search_ids(index, args.id, args.k)
        else:
            backbone = backbone_from_args(args)
            if args.text:
                queries, hits = args.text, search_text(index, backbone, args.text, args.k, args.template)
            else:
                queries, hits = args.image, search_images(index, backbone, args.image, args.k)
    except KeyError as exc:
        raise ValueError(exc.args[0]) from None
    text = format_results(queries, hits, args.format)
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {sum(map(len, hits))} results for {len(queries)} queries to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def format_results(queries: list[str], hits: list, fmt: str) -> str:
    """Results as an aligned table, CSV (query, rank, score, id, path) or JSON."""
    if fmt == "json":
        return json.dumps([{"query": q, "results": [h._asdict() for h in hs]} for q, hs in zip(queries, hits)],
                          indent=1) + "\n"
    rows = [[q, str(rank), f"{h.score:.4f}", str(h.id), h.path or ""]
            for q, hs in zip(queries, hits) for rank, h in enumerate(hs, 1)]
    header = ["query", "rank", "score", "id", "path"]
    if fmt == "csv":
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows([header] + rows)
        return out.getvalue()
    widths = [max(len(r[c]) for r in [header] + rows) for c in range(len(header))]
    return "".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() + "\n" for r in [header] + rows)


def cmd_serve(args) -> None:
    from ..cache import resolve_cache_dir
    from ..retrieval.index import Index
    from ..retrieval.search import DEDUP_COSINE
    from ..retrieval.serve import SearchService, serve

    check_run_args(args)
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    if args.dedup_cosine is not None and not 0 < args.dedup_cosine <= 1:
        raise ValueError(f"--dedup-cosine must be in (0, 1], got {args.dedup_cosine}")
    index = Index.load(args.index)
    service = SearchService(index, backbone_from_args(args), max_upload=int(args.max_upload_mb * 2**20),
                            templates=args.template, dedup_cosine=args.dedup_cosine or DEDUP_COSINE,
                            thumbnails=resolve_cache_dir(args.cache_dir) / "thumbnails")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: binding {args.host} makes the search service reachable from other machines; it answers to "
              "the names given with --allow-host", file=sys.stderr)
    serve(service, args.host, args.port, verbose=not args.quiet, allow_hosts=args.allow_host or ())
