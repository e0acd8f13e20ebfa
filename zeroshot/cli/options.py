"""What the sub-commands share: the model / run options and the steps built from them."""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every ``--help`` shows each option's default, as ``(default: X)`` after its help, except where it says
    nothing: ``None`` (the option is unset; its help says what happens then), ``False`` (a flag that is off) or a help
    that states its default in its own words (``(default: ...)``, e.g. ``$ZEROSHOT_CACHE or ~/.cache/zeroshot``)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser using :class:`HelpFormatter`; ``add_subparsers`` makes sub-parsers of the parser's own class,
    so every sub-command, nested ones included, gets the same formatter without passing it to each ``add_parser``."""

    def __init__(self, *args, formatter_class: type[argparse.HelpFormatter] = HelpFormatter, **kwargs) -> None:
        super().__init__(*args, formatter_class=formatter_class, **kwargs)


def add_output_arg(p: argparse.ArgumentParser, help: str) -> None:
    """A required ``--output``, still accepting ``--out`` (the old spelling of four commands) as a hidden alias for
    one release: both fill ``args.output``; ``--help`` and the usage line show ``--output`` only."""
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument("--output", help=help)
    given.add_argument("--out", dest="output", help=argparse.SUPPRESS)  # kept for one release, then removed


def add_run_args(p: argparse.ArgumentParser, *, batch_size_help: str = "images per forward pass (default: 256 on "
                 "a GPU, 64 on a CPU)") -> None:
    """Options every command that runs a model shares."""
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"],
                   help="precision the model computes in")
    p.add_argument("--batch-size", type=int, default=None, help=batch_size_help)
    add_cache_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars, no 'loading model' lines")


def add_cache_arg(p: argparse.ArgumentParser) -> None:
    """``--cache-dir``: the feature and text cache every command shares (see :mod:`zeroshot.cache`)."""
    p.add_argument("--cache-dir", default=None, help="cache folder (default: $ZEROSHOT_CACHE or ~/.cache/zeroshot)")


MODEL_HELP = "model folder, local-dir:PATH, open_clip NAME[/PRETRAINED], or 'default': the shipped offline model"


def add_model_args(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--decode``, ``--workers`` and the run options."""
    p.add_argument("--model", default=os.environ.get("ZEROSHOT_MODEL", "default"),
                   help=f"{MODEL_HELP} ($ZEROSHOT_MODEL sets the default)")
    add_decode_args(p)


def add_decode_args(p: argparse.ArgumentParser) -> None:
    """``--decode``, ``--workers`` and the run options: how images are read and encoded, whichever model."""
    p.add_argument("--decode", default="exact", choices=["exact", "draft"],
                   help="exact: open_clip's preprocessing; draft: JPEG DCT-scaled decoding, faster, pixels differ "
                        "slightly (own cache)")
    p.add_argument("--workers", type=int, default=None,
                   help="decode workers (local engine) or decode threads per Ray worker (--engine ray) (default: "
                        "all cores but one on a GPU, up to 4 on a CPU)")
    add_run_args(p)


def add_engine_args(p: argparse.ArgumentParser, *, workers_help: str = "Ray workers at once (default: the cluster's "
                    "CPUs)", gpus: bool = False) -> None:
    """``--engine`` and the Ray options: where the work units run (see :mod:`zeroshot.engines`)."""
    from ..engines.session import ENGINES

    p.add_argument("--engine", default="local", choices=ENGINES,
                   help="local: this machine; ray: run the work units on a Ray cluster (pip install 'zeroshot[ray]')")
    p.add_argument("--address", default=None,
                   help="Ray cluster to use: auto, HOST:PORT or ray://HOST:PORT (default: $RAY_ADDRESS, else a "
                        "local cluster started and stopped by this command)")
    p.add_argument("--num-workers", type=int, default=None, help=workers_help)
    if gpus:
        p.add_argument("--gpus-per-worker", type=float, default=0,
                       help="GPUs each Ray worker encodes on (0: CPU)")


def check_engine_args(args: argparse.Namespace) -> None:
    """The Ray options only mean something with ``--engine ray``; with it, Ray must be installed and a given
    ``--address`` must answer, found out before any long work (a model load, a pass over a corpus)."""
    if args.engine == "local":
        given = [f"--{name.replace('_', '-')}" for name in ("address", "num_workers", "gpus_per_worker")
                 if getattr(args, name, None)]
        if given:
            raise ValueError(f"{' and '.join(given)}: used only with --engine ray; add --engine ray or drop "
                             f"{'it' if len(given) == 1 else 'them'}")
        return
    from ..engines.session import check_address, check_reachable, require_ray

    check_at_least("--num-workers", args.num_workers)
    if getattr(args, "gpus_per_worker", 0) < 0:
        raise ValueError(f"--gpus-per-worker must be 0 or more, got {args.gpus_per_worker}")
    require_ray()
    if args.address and check_address(args.address):
        check_reachable(args.address)


def add_class_args(p: argparse.ArgumentParser,
                   classes_help: str = "comma-separated class names, in label order") -> None:
    """``--card`` and ``--classes``: where class names and prompt templates come from."""
    p.add_argument("--card", help="dataset card giving class names and templates, e.g. cifar10")
    p.add_argument("--classes", help=classes_help)


@contextlib.contextmanager
def loading_note(name: str) -> Iterator[None]:
    """``loading model NAME ...`` on stderr at once, then how long it took: building a model (imports, weights) takes
    seconds to minutes in which nothing else would be printed."""
    print(f"loading model {name} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    yield
    print(f"loaded model {name} in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


def backbone_from_args(args, spec: str | None = None):
    """The backbone ``--model`` names (or ``spec``, e.g. a tagger or a teacher), on ``--device`` at ``--precision``;
    its network is built when first needed, announced by :func:`loading_note` unless ``--quiet``."""
    from .. import load_backbone

    spec = spec or args.model
    return load_backbone(spec, device=args.device, precision=args.precision, decode=getattr(args, "decode", "exact"),
                         loading=contextlib.nullcontext if args.quiet else partial(loading_note, spec))


def extract_from_args(args, backbone, data):
    """The FeatureSet of ``data`` (an opened dataset), cached, with the run options. A run in which every file failed
    to decode is an error (exit 1), not an empty result that later steps would report as something else."""
    from .. import extract

    ray = {"engine": args.engine, "address": args.address, "ray_workers": args.num_workers,
           "gpus_per_worker": getattr(args, "gpus_per_worker", 0)} if hasattr(args, "engine") else {}
    fs = extract(backbone, data, cache_dir=args.cache_dir, **extract_options(args), **ray)
    if len(fs) == 0 and fs.failed:
        first = ", ".join(f"{i} ({reason})" for i, reason in list(fs.failed.items())[:3])
        raise OSError(f"none of the {len(fs.failed)} file(s) of {data.location} could be decoded: {first}"
                      f"{', ...' if len(fs.failed) > 3 else ''}; check that they are image files (JPEG, PNG, WebP "
                      "...) and readable, or give other data")
    return fs


def extract_options(args) -> dict:
    """The keyword arguments of :func:`zeroshot.extract` that the run options set, for library evaluations."""
    return {"batch_size": args.batch_size, "num_workers": args.workers, "progress": not args.quiet}


def classes_and_templates(args, dataset_classes=None) -> tuple[list[str], list[str]]:
    """Class names and templates from ``--classes`` (templates from ``--card`` if given) or ``--card``."""
    from .. import load_card

    if args.classes:
        names = [c.strip() for c in args.classes.split(",") if c.strip()]
        templates = load_card(args.card).templates if args.card else ["a photo of a {}."]
        return names, templates
    if not args.card:
        raise ValueError("give --classes 'a,b,c' or --card NAME")
    card = load_card(args.card).select(dataset_classes)
    return card.classes, card.templates


def class_embeddings_from_args(args, backbone, dataset_classes=None):
    """(class names, (C, D) class text embeddings) from ``--classes`` / ``--card``, cached; a progress bar while the
    prompts are encoded unless ``--quiet``."""
    from .. import class_embeddings

    names, templates = classes_and_templates(args, dataset_classes)
    return names, class_embeddings(backbone, names, templates, cache_dir=args.cache_dir, progress=not args.quiet)


def report_failed(failed: dict[str, str]) -> None:
    """List the files a run skipped (a FeatureSet's ``failed``: id -> reason) on stderr."""
    if failed:
        print(f"skipped {len(failed)} file(s) that could not be decoded:", file=sys.stderr)
        for i, reason in failed.items():
            print(f"  {i}: {reason}", file=sys.stderr)


def int_list(text: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]``."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated whole numbers like 1,2,4, got {text!r}") from None


# --- checks every command runs first: cheap mistakes fail in a second, before a model loads or an image decodes ---
def check_at_least(option: str, value: int | float | None, low: int = 1) -> None:
    """Refuse a count below ``low`` (``--top-k 0``) that would fail late or write a malformed file."""
    if value is not None and value < low:
        raise ValueError(f"{option} must be at least {low}, got {value}")


def gpu_count() -> int:
    """CUDA devices torch can use; ``CUDA_VISIBLE_DEVICES=""`` answers without importing torch."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_device(device: str | None) -> None:
    """Refuse ``--device`` values this machine cannot run (``cuda`` without a GPU, ``cuda:3`` of two, typos)."""
    if device is None:
        return
    match = re.fullmatch(r"(cpu|cuda|mps|xpu)(?::(\d+))?", device)
    if not match:
        raise ValueError(f"unknown --device {device!r}; use cpu, cuda or cuda:N")
    if match[1] != "cuda":
        return
    count = gpu_count()
    if count == 0:
        raise ValueError(f"--device {device}: no CUDA GPU is available here; use --device cpu (or leave --device out)")
    if match[2] is not None and int(match[2]) >= count:
        raise ValueError(f"--device {device}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}; "
                         "pick one of them or use --device cpu")


def check_run_args(args: argparse.Namespace) -> None:
    """The options every model command shares: ``--device``, ``--batch-size`` and ``--workers``."""
    check_device(args.device)
    check_at_least("--batch-size", args.batch_size)
    check_at_least("--workers", getattr(args, "workers", None), 0)
    if hasattr(args, "engine"):
        check_engine_args(args)


def check_exists(option: str, path: str | os.PathLike | None) -> None:
    """A file or folder named on the command line must exist."""
    if path is not None and not Path(path).expanduser().exists():
        raise FileNotFoundError(f"{option} {path} does not exist; check the path")


def check_output(option: str, path: str | os.PathLike | None, *, folder: bool = False) -> None:
    """Refuse an output that cannot be written before doing the work: a folder where a file goes (or the reverse),
    a location under a file, or one without write permission. Nothing is created here."""
    if path is None:
        return
    path = Path(path).expanduser()
    kind = "folder" if folder else "file"
    if path.exists() and path.is_dir() != folder:
        raise ValueError(f"{option} {path} is a {'file' if folder else 'folder'}, but a {kind} is written there; "
                         f"give a {kind} path")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir() and existing != path:
        raise ValueError(f"{option} {path} cannot be created: {existing} is a file; give a {kind} path elsewhere")
    if not os.access(existing, os.W_OK):
        raise PermissionError(f"{option} {path} is not writable ({existing} does not allow writing); "
                              f"give a {kind} path you can write to")


def check_classes(args: argparse.Namespace, dataset=None, *, required: bool = True) -> None:
    """``--card`` exists and (if ``required``) ``--card`` or ``--classes`` is given, and the card covers the dataset's
    classes: checked before encoding, not after."""
    if required or args.card or args.classes:
        classes_and_templates(args, dataset.classes if dataset is not None else None)


def open_data(spec: str | os.PathLike | list):
    """Open a dataset named on the command line now: a missing path or unknown kind fails before the model loads."""
    from ..datasets import open_dataset

    return open_dataset(spec)
