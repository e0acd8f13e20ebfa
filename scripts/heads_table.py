"""The README's table of registered heads, printed from ``zeroshot.heads.REGISTRY`` (a test keeps them equal).

    python scripts/heads_table.py
"""
from __future__ import annotations

from zeroshot.heads import REGISTRY


def heads_table() -> str:
    """Markdown: one row per registered name with its class, kind, what ``fit`` needs (and may take) and a summary."""
    rows = ["| name | class | kind | fit needs (optional) | what it is |", "|---|---|---|---|---|"]
    for spec in REGISTRY.values():
        optional = f" ({', '.join(spec.optional)})" if spec.optional else ""
        rows.append(f"| `{spec.name}` | `{spec.class_name}` | {spec.kind} | {', '.join(spec.needs)}{optional} "
                    f"| {spec.summary} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(heads_table())
