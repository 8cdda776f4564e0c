"""Where kdcl's Hydra config tree lives and how Hydra composes it (kept import-light: `kdcl --help` and a bad
key must not load torch)."""

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


def config_groups() -> dict[str, list[str]]:
    root = config_dir()
    return {
        d.name: sorted(p.stem for p in d.glob("*.yaml"))
        for d in sorted(root.iterdir())
        if d.is_dir() and d.name != "hydra"
    }


def all_keys(node, prefix: str = "") -> list[str]:
    from omegaconf import DictConfig

    keys = []
    for k in node.keys():
        full = f"{prefix}{k}"
        keys.append(full)
        try:
            child = node._get_node(k)
        except Exception:
            continue
        if isinstance(child, DictConfig):
            keys += all_keys(child, full + ".")
    return keys


def compose(overrides: list[str], return_hydra_config: bool = False):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name="train"):
        return hydra_compose(config_name="train", overrides=overrides, return_hydra_config=return_hydra_config)
