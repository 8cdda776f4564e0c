"""Where kdcl's Hydra config tree lives (kept import-light: `kdcl --help` must not load torch)."""

from __future__ import annotations

from pathlib import Path


def config_dir() -> Path:
    """conf/ ships inside the wheel as kdcl/conf; in a source checkout it sits next to kdcl/."""
    from kdcl.config.schema import register

    register()  # train.yaml's defaults start with the structured schema, which Hydra must know first
    here = Path(__file__).resolve().parents[1]  # kdcl/ (this file is kdcl/config/compose.py)
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise RuntimeError(f"kdcl's config directory is missing (looked in {here / 'conf'}); reinstall kdcl")
