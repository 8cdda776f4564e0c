"""Pretrained weights from the Hugging Face hub, the way timm fetches them: are they on this machine?

The download is timm's own (`timm.create_model(pretrained=True)` → huggingface_hub, which honours
HF_HUB_OFFLINE and HF_HUB_CACHE). kdcl only looks into the same cache before any work, so that an offline
run whose weights are not there fails in one line at the start, not when its stage begins.
"""

from __future__ import annotations

from kdcl.common.errors import KdclError
from kdcl.models.names import HUB_PREFIX, is_hub_id

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm's hub loader reads, in its order


def hub_repo(name: str) -> tuple[str, str | None] | None:
    """(repository, revision) that timm loads `name`'s pretrained weights from; None when its weights
    come from elsewhere (a plain URL: timm's own download, not checked here)."""
    if is_hub_id(name):
        repo, _, revision = name.removeprefix(HUB_PREFIX).partition("@")
        return repo, revision or None
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    return (cfg.hf_hub_id, None) if cfg is not None and cfg.hf_hub_id else None


def pretrained_input_size(name: str) -> int | None:
    """The image side `name`'s pretrained weights were trained at (timm's pretrained_cfg; a hub id's cached
    config.json), or None when it is not known here."""
    if is_hub_id(name):
        import json

        from huggingface_hub import try_to_load_from_cache

        repo, revision = hub_repo(name)
        path = try_to_load_from_cache(repo, "config.json", revision=revision)
        if not isinstance(path, str):
            return None
        with open(path) as f:
            size = json.load(f).get("pretrained_cfg", {}).get("input_size")
        return int(size[-1]) if size else None
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
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
            f"and {why}; run once with network access to cache them (HF_HUB_CACHE sets where), or give "
            f"{key}.weights=FILE")  # fmt: skip


def check_pretrained_available(name: str, key: str) -> None:
    """Offline (HF_HUB_OFFLINE), the model's hub files must be cached; online timm downloads them."""
    if not hub_offline():
        return
    found = hub_repo(name)
    if found is None:
        return
    repo, revision = found
    needed_config = not is_hub_id(name) or cached(repo, revision, "config.json")
    if not (needed_config and any(cached(repo, revision, f) for f in WEIGHT_FILES)):
        raise KdclError(not_here(name, key, "HF_HUB_OFFLINE is set"))


def hub_failure(name: str, key: str, exc: Exception) -> str:
    """One line for pretrained weights that timm could not have (offline and not cached, no network)."""
    why = "HF_HUB_OFFLINE is set" if hub_offline() else "the hub could not be reached"
    reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
    return not_here(name, key, f"{why} ({type(exc).__name__}: {reason})")
