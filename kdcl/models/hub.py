"""Pretrained weights from the Hugging Face hub, the way timm fetches them: do they exist, are they here?

The download is timm's own (`timm.create_model(pretrained=True)` → huggingface_hub, which honours
HF_HUB_OFFLINE and HF_HUB_CACHE). kdcl checks the name against timm's registry and, offline, looks into the
same cache before any work, so that a wrong tag, an architecture without weights or an offline run whose
weights are not there fails in one line at the start, not when its stage begins.
"""

from __future__ import annotations

import json
from functools import cache

from kdcl.common.errors import KdclError
from kdcl.models.names import HUB_PREFIX, is_hub_id

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm's hub loader reads, in its order


def registry_cfg(name: str):
    """timm's pretrained_cfg for a registry name (architecture or architecture.tag); RuntimeError for a tag
    timm does not have."""
    import timm

    return timm.models.get_pretrained_cfg(name)


def hub_repo(name: str) -> tuple[str, str | None, tuple[str, ...]] | None:
    """(repository, revision, weight files) that timm loads `name`'s pretrained weights from; None when they
    come from elsewhere (a plain URL: timm's own download, not checked here)."""
    if is_hub_id(name):
        repo, _, revision = name.removeprefix(HUB_PREFIX).partition("@")
        return repo, revision or None, WEIGHT_FILES
    cfg = registry_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        return None
    repo, _, revision = cfg.hf_hub_id.partition("@")  # timm's hf_split
    return repo, revision or None, (cfg.hf_hub_filename,) if cfg.hf_hub_filename else WEIGHT_FILES


@cache
def hub_config(name: str) -> dict | None:
    """A hub id's config.json (its architecture and pretrained_cfg), as timm reads it: from the cache, fetched
    when online; None when it cannot be had. Read once per process: every model build asks (read-only)."""
    from huggingface_hub import hf_hub_download

    repo, revision, _ = hub_repo(name)
    try:
        path = hf_hub_download(repo, "config.json", revision=revision)
    except Exception:  # offline and not cached, no network, no such repository: the model's load says which
        return None
    with open(path) as f:
        return json.load(f)


def architecture_of(name: str) -> str | None:
    """The timm architecture `name` builds (a hub id's from its config.json; None when that cannot be had)."""
    if not is_hub_id(name):
        return name.split(".")[0]
    config = hub_config(name)
    return config.get("architecture") if config else None


def pretrained_input_size(name: str) -> int | None:
    """The image side `name`'s pretrained weights were trained at (timm's pretrained_cfg, a hub id's
    config.json), or None when it is not known (a tag timm does not have: the name's check says so)."""
    if is_hub_id(name):
        size = ((hub_config(name) or {}).get("pretrained_cfg") or {}).get("input_size")
        return int(size[-1]) if size else None
    try:
        cfg = registry_cfg(name)
    except RuntimeError:
        return None
    return int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else None


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def cached(repo: str, revision: str | None, filename: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, filename, revision=revision), str)


def not_here(name: str, key: str, why: str) -> str:
    from huggingface_hub import constants

    return (f"{key}.pretrained=true: the weights of '{name}' are not in the hub cache {constants.HF_HUB_CACHE} "
            f"and {why}; run once with network access to cache them (HF_HUB_CACHE sets where), or set "
            f"{key}.pretrained=false {key}.weights=FILE")  # fmt: skip


def check_weights_exist(name: str, key: str) -> None:
    """A registry name's tag exists and names weights (timm would otherwise initialise at random, quietly)."""
    if is_hub_id(name):
        return
    import timm

    architecture = name.split(".")[0]
    try:
        cfg = registry_cfg(name)
    except RuntimeError:
        tags = timm.list_pretrained(f"{architecture}.*")
        raise KdclError(f"{key}.name '{name}': timm has no such pretrained tag; its tags: "
                        f"{', '.join(tags[:6]) or 'none'}") from None  # fmt: skip
    if cfg is None or not cfg.has_weights:
        raise KdclError(f"{key}.name '{name}' has no pretrained weights in timm; set {key}.pretrained=false or "
                        f"choose a model that has them (kdcl models '{architecture}*')")  # fmt: skip


def check_pretrained_available(name: str, key: str) -> None:
    """The name has weights in timm and, offline (HF_HUB_OFFLINE), its hub files are cached; online timm
    downloads them."""
    check_weights_exist(name, key)
    if not hub_offline():
        return
    found = hub_repo(name)
    if found is None:
        return
    repo, revision, files = found
    needed_config = not is_hub_id(name) or cached(repo, revision, "config.json")
    if not (needed_config and any(cached(repo, revision, f) for f in files)):
        raise KdclError(not_here(name, key, "HF_HUB_OFFLINE is set"))


def hub_failure(name: str, key: str, exc: Exception) -> str:
    """One line for pretrained weights that timm could not have (offline and not cached, no network)."""
    why = "HF_HUB_OFFLINE is set" if hub_offline() else "the hub could not be reached"
    reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
    return not_here(name, key, f"{why} ({type(exc).__name__}: {reason})")
