"""Is a name a timm model? Answered from a list of timm's model names kept on disk per timm version,
so that a typo in a model name is refused without importing timm (3–5 s: it imports every model
module). The list is written the first time timm is imported for the check; hand-written because
timm offers no import-free registry.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from kdcl.common.errors import KdclError, did_you_mean


def names_file() -> Path:
    try:
        timm_version = version("timm")
    except PackageNotFoundError:  # pragma: no cover — timm is a dependency
        timm_version = "unknown"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "kdcl" / f"timm-{timm_version}-models.txt"


@lru_cache(maxsize=1)
def timm_model_names() -> frozenset[str]:
    """Every architecture timm can create (`timm.list_models()`), from the file when it exists."""
    path = names_file()
    try:
        names = path.read_text().split()
        if names:
            return frozenset(names)
    except OSError:
        pass
    import timm

    names = timm.list_models()
    try:  # a read-only home only costs the next check its speed
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text("\n".join(names) + "\n")
        tmp.replace(path)
    except OSError:
        pass
    return frozenset(names)


HUB_PREFIX = "hf-hub:"
HUB_ID = re.compile(r"hf-hub:[\w.-]+/[\w.-]+(@[\w./-]+)?")


def is_hub_id(name) -> bool:
    """A Hugging Face hub id (`hf-hub:timm/resnet50.a1_in1k`): its architecture is read from the hub's config."""
    return isinstance(name, str) and name.startswith(HUB_PREFIX)


def check_model_name(name, key: str) -> None:
    """`name` is a timm architecture, optionally with a pretrained tag (`resnet50.a1_in1k`), or a hub id."""
    if is_hub_id(name):
        if not HUB_ID.fullmatch(name):
            raise KdclError(
                f"{key} '{name}' is not a hub id; write it as hf-hub:OWNER/REPO (e.g. hf-hub:timm/resnet18.a1_in1k)"
            )
        return
    names = timm_model_names()
    if not isinstance(name, str) or name.split(".", 1)[0] not in names:
        raise KdclError(
            f"{key} '{name}' is not a timm model{did_you_mean(str(name), sorted(names))} "
            "(kdcl models 'PATTERN' lists the names)"
        )
