"""`kdcl cache list|clear [DIR]`: show or free the stores shared by runs (kdcl/common/cache.py)."""

from __future__ import annotations

from pathlib import Path

from kdcl.common.cache import SIDECAR, entries
from kdcl.common.errors import KdclError


def list_cache(directory: Path) -> str:
    rows = entries(directory)
    if not rows:
        return f"{directory}: no shared stores"
    lines = [f"{directory}: {len(rows)} shared stores, {sum(r['size_mb'] for r in rows):.2f} MB"]
    for r in rows:
        what = r.get("what", {})
        views = what.get("views", {})
        detail = f"K={views.get('k')} seed={views.get('seed')}" if views else ""
        lines.append(f"  {r['file']}  {r['size_mb']:.2f} MB  {what.get('kind', '?')} "
                     f"{(what.get('data') or {}).get('name', '')} {detail}  built {r.get('created')} by {r.get('built_by')}, "
                     f"last used {r.get('last_used')}")  # fmt: skip
    return "\n".join(lines)


def clear_cache(directory: Path) -> str:
    """Delete every entry (data, sidecar, lock file). A job that already read an entry keeps its copy."""
    rows = entries(directory)
    freed = 0.0
    for r in rows:
        stem = directory / Path(r["file"]).stem
        for suffix in (".pt", SIDECAR, ".lock"):
            stem.with_suffix(suffix).unlink(missing_ok=True)
        freed += r["size_mb"]
    return f"{directory}: removed {len(rows)} shared stores, freed {freed:.2f} MB"


def cache_command(rest: list[str]) -> None:
    """kdcl cache list|clear [DIR]  (DIR: the cache directory, default outputs/cache)."""
    if not rest or rest[0] not in ("list", "clear") or len(rest) > 2:
        raise KdclError("cache takes list or clear and optionally the cache directory: kdcl cache list|clear "
                        "[outputs/cache]")  # fmt: skip
    directory = Path(rest[1] if len(rest) > 1 else "outputs/cache")
    if len(rest) > 1 and not directory.is_dir():
        raise KdclError(f"cache directory '{directory}' does not exist; give paths.cache_dir of your runs")
    print(list_cache(directory) if rest[0] == "list" else clear_cache(directory), flush=True)
