"""Save an untrained open_clip model (timm image tower + packaged all-MiniLM-L6-v2 text tower) as a local folder.

Stands in for the trained default model until that ships; its zero-shot accuracy is chance level, by design.
"""
import argparse

from zeroshot.backbone import create_untrained_folder, load_backbone, timm_text_pair_config

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("out", help="folder to write")
parser.add_argument("--image-tower", default="resnet18")
parser.add_argument("--image-size", type=int, default=64)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
cfg = timm_text_pair_config(args.image_tower, args.image_size)
folder = create_untrained_folder(args.out, cfg, seed=args.seed)
print(f"wrote {folder} (seed {args.seed}, fingerprint {load_backbone(folder, device='cpu').fingerprint})")
