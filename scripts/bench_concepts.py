"""Benchmark the concept counter (inverted index + intersections) against a per-concept regex scan of the same file,
or (``--engine ray``) the Ray engine against the local one: both run, every count must be equal, both times print.

The corpus is synthetic and seeded: each caption is a CIFAR-10 / Tiny ImageNet template sentence filled with a class
name, or a run of Flickr8k caption words drawn by their frequency, or both; it is written streaming to a text file.
Usage: python scripts/bench_concepts.py [--captions 2000000] [--seed 0] [--mode all_unigrams]
       [--engine ray [--address auto|HOST:PORT] [--num-workers N] [--partition-mb 16]]
"""
from __future__ import annotations

import argparse
import collections
import itertools
import random
import re
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from zeroshot.concepts import count_corpus, describe_corpus, iter_captions
from zeroshot.concepts.corpus import PARTITION_BYTES
from zeroshot.prompts import load_card

FLICKR = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k_1k" / "captions.csv"


def write_corpus(path: Path, n: int, seed: int) -> None:
    """``n`` seeded synthetic captions, one a line, generated and written a chunk at a time."""
    rng = random.Random(seed)
    counter = collections.Counter(w for c in iter_captions(FLICKR) for w in c.split())
    words, cum = list(counter), list(itertools.accumulate(counter.values()))
    cards = [load_card("cifar10"), load_card("tinyimagenet")]
    sentences = [(card.templates, card.classes) for card in cards]
    with open(path, "w", encoding="utf-8") as f:
        for start in range(0, n, 10_000):
            lines = []
            for _ in range(min(10_000, n - start)):
                kind = rng.random()
                templates, classes = sentences[rng.random() < 0.3]
                template = rng.choice(templates).format(rng.choice(classes)) if kind < 0.6 else ""
                noise = " ".join(rng.choices(words, cum_weights=cum, k=rng.randint(4, 14))) if kind > 0.4 else ""
                lines.append(f"{template} {noise}".strip())
            f.write("\n".join(lines) + "\n")


def regex_counts(path: Path, names: list[str]) -> dict[str, int]:
    """What a user would write: one compiled ``\\bname\\b`` regex per concept, searched in every line."""
    patterns = [(name, re.compile(rf"\b{re.escape(name)}\b", re.IGNORECASE)) for name in names]
    counts = dict.fromkeys(names, 0)
    with open(path, encoding="utf-8") as f:
        for line in f:
            for name, pattern in patterns:
                if pattern.search(line):
                    counts[name] += 1
    return counts


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def compare_with_regex(path: Path, names: list[str], args) -> None:
    """Our counter and the regex scan on the same file: speeds, and the counts side by side."""
    (index, results), ours_wall, ours_cpu = timed(lambda: count_corpus(
        path, names, mode=args.mode, lemmatiser=args.lemmatiser))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    regex, regex_wall, regex_cpu = timed(lambda: regex_counts(path, names))
    n = index.n_captions
    print(f"{'method':<34}{'wall s':>8}{'captions/s (wall)':>20}{'captions/s per CPU-s':>22}")
    for label, wall, cpu in (("ours: index + count + examples", ours_wall, ours_cpu),
                             ("regex scan, one per concept", regex_wall, regex_cpu)):
        print(f"{label:<34}{wall:>8.1f}{n / wall:>20,.0f}{n / cpu:>22,.0f}")
    print(f"speed ratio ours/regex (CPU time): {regex_cpu / ours_cpu:.2f}x   "
          f"vocabulary {index.vocabulary_size:,} lemmas   peak RSS {rss:,.0f} MiB (after indexing)")
    print(f"{'concept':<12}{'ours':>10}{'regex':>10}{'ours-regex':>12}  first example")
    for r in results:
        print(f"{r.name:<12}{r.count:>10,}{regex[r.name]:>10,}{r.count - regex[r.name]:>12,}  {r.examples[:1]}")
    print("ours-regex > 0: captions holding only an inflected form (plural 'dogs'), which the exact-word regex misses; "
          "< 0: a word whose noun lemma differs from itself, or a multi-word name the regex reads as a phrase.")


def assert_equal(expected: list, got: list) -> None:
    """Every field of every concept's counts is the same in both results."""
    for a, b in zip(expected, got, strict=True):
        assert (a.name, a.count, a.n_captions, a.frequency, a.variants, a.examples, a.missing) == \
            (b.name, b.count, b.n_captions, b.frequency, b.variants, b.examples, b.missing), a.name
        assert np.array_equal(a.caption_ids, b.caption_ids), a.name


def compare_with_ray(path: Path, names: list[str], args) -> None:
    """The local engine and the Ray engine on the same file: every field of every concept's counts must be equal;
    prints both wall times (Ray's without starting or joining the cluster, which is timed apart) and their ratio,
    and the CPU time of the same partitions counted in turn in this process (the cost of partitioning without Ray)."""
    from zeroshot.concepts.corpus import plan_partitions
    from zeroshot.concepts.matching import merge_partitions
    from zeroshot.engines.concepts import count_one_partition, worker_lemmatiser
    from zeroshot.engines.session import ray_session

    options = {"mode": args.mode, "lemmatiser": args.lemmatiser}
    partition_bytes = int(args.partition_mb * 2**20)
    plan = plan_partitions(path, partition_bytes=partition_bytes)
    (index, local), local_wall, local_cpu = timed(lambda: count_corpus(path, names, **options))
    job = (names, args.mode, args.lemmatiser, 3, None)
    in_turn, _, turn_cpu = timed(lambda: [count_one_partition(partition, job) for partition in plan])
    assert_equal(local, merge_partitions(in_turn, worker_lemmatiser(args.lemmatiser), 3)[1])
    started = time.perf_counter()
    with ray_session(args.address, num_cpus=args.num_workers) as ray:
        startup = time.perf_counter() - started
        cpus = int(ray.cluster_resources().get("CPU", 0))
        (summary, distributed), ray_wall, _ = timed(lambda: count_corpus(
            path, names, engine="ray", num_workers=args.num_workers, partition_bytes=partition_bytes, **options))
    assert summary.n_captions == index.n_captions, (summary.n_captions, index.n_captions)
    assert_equal(local, distributed)
    n = index.n_captions
    print(f"equal: every count, variant count, caption id, example and missing lemma of {len(local)} concepts "
          f"({sum(r.count for r in local):,} matches)")
    print(f"{'engine':<52}{'wall s':>8}{'captions/s':>12}")
    print(f"{'local (one pass, this process)':<52}{local_wall:>8.1f}{n / local_wall:>12,.0f}")
    print(f"{f'ray ({len(plan)} partitions of {args.partition_mb:g} MiB, {cpus} CPUs, workers {args.num_workers})':<52}"
          f"{ray_wall:>8.1f}{n / ray_wall:>12,.0f}")
    print(f"ratio ray/local wall: {ray_wall / local_wall:.2f}   (cluster start/join, not counted: {startup:.1f} s)")
    print(f"CPU time in this process: one pass {local_cpu:.2f} s, the {len(plan)} partitions in turn {turn_cpu:.2f} s "
          f"({turn_cpu / local_cpu:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=2_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", default="all_unigrams", choices=["all_unigrams", "phrase"])
    parser.add_argument("--lemmatiser", default="lemminflect")
    parser.add_argument("--card", default="cifar10", help="whose class names to count (cifar10, tinyimagenet ...)")
    parser.add_argument("--engine", default="local", choices=["local", "ray"],
                        help="local: ours against a regex scan; ray: the Ray engine against the local one")
    parser.add_argument("--address", help="with --engine ray: a running cluster (default: start a local one)")
    parser.add_argument("--num-workers", type=int, help="with --engine ray: tasks at once (default: one per CPU)")
    parser.add_argument("--partition-mb", type=float, default=PARTITION_BYTES / 2**20,
                        help="with --engine ray: partition size in MiB")
    args = parser.parse_args()
    names = load_card(args.card).classes
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.txt"
        _, gen_wall, _ = timed(lambda: write_corpus(path, args.captions, args.seed))
        digest = describe_corpus(path)["sha256"][:16]
        print(f"seed {args.seed}  corpus {args.captions:,} synthetic captions ({path.stat().st_size / 2**20:.0f} MiB, "
              f"sha256 {digest}..., generated in {gen_wall:.1f} s)  concepts: {len(names)} {args.card} classes  "
              f"mode {args.mode}  lemmatiser {args.lemmatiser}")
        (compare_with_ray if args.engine == "ray" else compare_with_regex)(path, names, args)


if __name__ == "__main__":
    main()
