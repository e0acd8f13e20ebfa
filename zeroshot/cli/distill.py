"""``zeroshot distill``: a small timm student trained into a teacher's embedding space."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .options import (add_output_arg, add_run_args, backbone_from_args, check_at_least, check_exists, check_output,
                      check_run_args, open_data)


def cmd_distill(args) -> None:
    from .. import class_embeddings, load_card
    from ..train.distill import distill

    check_run_args(args)
    check_at_least("--epochs", args.epochs)
    check_at_least("--views", args.views)
    check_output("--output", args.output, folder=True)
    check_exists("--init", None if args.init == "teacher" else args.init)
    card = load_card(args.anchors) if args.anchors else None
    data = open_data(args.data)
    teacher = backbone_from_args(args, args.teacher)
    anchors = None
    if card is not None:
        anchors = class_embeddings(teacher, card.classes, card.templates, cache_dir=args.cache_dir,
                                   progress=not args.quiet)
    chosen = {"student": args.student} if args.student else {}
    student = distill(teacher, data, args.output, **chosen, loss=args.loss, views=args.views,
                      epochs=args.epochs, batch_size=args.batch_size or 128, lr=args.lr, seed=args.seed,
                      anchors=anchors, affinity_weight=args.affinity_weight if anchors is not None else 0.0,
                      init=args.init, max_minutes=args.minutes, max_steps=args.max_steps, cache_dir=args.cache_dir,
                      progress=not args.quiet)
    report = json.loads((Path(args.output) / "model" / "distillation.json").read_text())
    print(json.dumps({"student": str(Path(args.output) / "model"), "fingerprint": student.fingerprint,
                      "teacher_fingerprint": teacher.fingerprint, "held_out_cosine": report["held_out_cosine"],
                      "minutes": round(report["seconds"] / 60, 1)}, indent=1))


def add_commands(sub) -> None:
    p = sub.add_parser("distill", help="distil a teacher's image tower into a small timm student")
    p.add_argument("--teacher", default=os.environ.get("ZEROSHOT_MODEL", "default"),
                   help="the model to distil, named as --model elsewhere ($ZEROSHOT_MODEL sets the default)")
    p.add_argument("--student", help="timm model name (default: zeroshot.train.distill.DEFAULT_STUDENT)")
    p.add_argument("--data", required=True, help="unlabelled training images (any dataset kind)")
    add_output_arg(p, "output folder; the student is written to OUTPUT/model")
    p.add_argument("--loss", default="cosine", choices=["cosine", "l1", "affinity"],
                   help="student vs teacher embedding: cosine distance, L1, or affinity to the --anchors prompts")
    p.add_argument("--views", type=int, default=5, help="teacher-encoded views per image (view 0 is the clean one)")
    p.add_argument("--anchors", help="dataset card whose class prompts anchor the affinity term (e.g. tinyimagenet)")
    p.add_argument("--affinity-weight", type=float, default=1.0, help="weight of the affinity term with --anchors")
    p.add_argument("--init", help="a student folder to continue training from (same --student), or 'teacher': start "
                   "a narrower copy of a ResNet teacher from its weights (e.g. resnet10t -> resnet10t_050)")
    p.add_argument("--epochs", type=int, default=10, help="passes over the training images")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--minutes", type=float, default=None, help="stop training after this many minutes")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (reproducible budget)")
    p.add_argument("--seed", type=int, default=0, help="seed of the views, the held-out split and training")
    add_run_args(p, batch_size_help="images per training step (default: 128)")
    p.set_defaults(func=cmd_distill)
