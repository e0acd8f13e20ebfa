"""``zeroshot distill``: a small timm student trained into a teacher's embedding space."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .options import add_run_args, check_at_least, check_exists, check_output, check_run_args, open_data


def cmd_distill(args) -> None:
    from .. import class_embeddings, load_backbone, load_card
    from ..train.distill import distill

    check_run_args(args)
    check_at_least("--epochs", args.epochs)
    check_at_least("--views", args.views)
    check_output("--out", args.out, folder=True)
    check_exists("--init", None if args.init == "teacher" else args.init)
    card = load_card(args.anchors) if args.anchors else None
    data = open_data(args.data)
    teacher = load_backbone(args.teacher, device=args.device, precision=args.precision)
    anchors = None
    if card is not None:
        anchors = class_embeddings(teacher, card.classes, card.templates, cache_dir=args.cache_dir)
    chosen = {"student": args.student} if args.student else {}
    student = distill(teacher, data, args.out, **chosen, loss=args.loss, views=args.views,
                      epochs=args.epochs, batch_size=args.batch_size or 128, lr=args.lr, seed=args.seed,
                      anchors=anchors, affinity_weight=args.affinity_weight if anchors is not None else 0.0,
                      init=args.init, max_minutes=args.minutes, max_steps=args.max_steps, cache_dir=args.cache_dir,
                      progress=not args.quiet)
    report = json.loads((Path(args.out) / "model" / "distillation.json").read_text())
    print(json.dumps({"student": str(Path(args.out) / "model"), "fingerprint": student.fingerprint,
                      "teacher_fingerprint": teacher.fingerprint, "held_out_cosine": report["held_out_cosine"],
                      "minutes": round(report["seconds"] / 60, 1)}, indent=1))


def add_commands(sub) -> None:
    p = sub.add_parser("distill", help="distil a teacher's image tower into a small timm student")
    p.add_argument("--teacher", default=os.environ.get("ZEROSHOT_MODEL", "default"))
    p.add_argument("--student", help="timm model name (default: zeroshot.train.distill.DEFAULT_STUDENT)")
    p.add_argument("--data", required=True, help="unlabelled training images (any dataset kind)")
    p.add_argument("--out", required=True, help="output folder; the student is written to OUT/model")
    p.add_argument("--loss", default="cosine", choices=["cosine", "l1", "affinity"])
    p.add_argument("--views", type=int, default=5, help="teacher-encoded views per image (view 0 is the clean one)")
    p.add_argument("--anchors", help="dataset card whose class prompts anchor the affinity term (e.g. tinyimagenet)")
    p.add_argument("--affinity-weight", type=float, default=1.0, help="weight of the affinity term with --anchors")
    p.add_argument("--init", help="a student folder to continue training from (same --student), or 'teacher': start "
                   "a narrower copy of a ResNet teacher from its weights (e.g. resnet10t -> resnet10t_050)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--minutes", type=float, default=None, help="stop training after this many minutes")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (reproducible budget)")
    p.add_argument("--seed", type=int, default=0)
    add_run_args(p)
    p.set_defaults(func=cmd_distill)
