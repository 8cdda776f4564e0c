"""Figures saved as image files: matplotlib on its file-only backend (Agg), the figure closed once saved."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def saved_figure(path: Path, size: tuple[float, float] = (6, 4), dpi: int = 100) -> Iterator:
    """Gives the axes of a new `size`-inch figure to draw on; on leaving the block the figure is laid
    out, saved to `path` (its suffix picks the format) and closed.

        with saved_figure(run_dir / "pacing.png", size=(5, 3)) as ax:
            ax.plot(steps, fractions)
    """
    import matplotlib  # imported here: a heavy import, needed only where a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kdcl.common.io import atomic_write_bytes

    fig, ax = plt.subplots(figsize=size, dpi=dpi)
    try:
        yield ax
        fig.tight_layout()
        image = io.BytesIO()
        fig.savefig(image, format=Path(path).suffix.lstrip(".") or "png")
        atomic_write_bytes(path, image.getvalue())
    finally:
        plt.close(fig)
