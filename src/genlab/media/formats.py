"""What a family's `sample` returns, as a `Media`: how samples are written to a file, shown on a page and
counted. A family names its media (`GenerativeModel.media`); a new kind of output is one more `Media`.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genlab.media.images import image_grid, save_grid
from genlab.media.suffixes import PARQUET_SUFFIXES

TEXT_SEPARATOR = "\n\n" + "-" * 40 + "\n\n"  # between samples in a .txt file


@dataclass(frozen=True)
class Media:
    """Image tensors, texts or table rows: a suffix, how many `genlab sample` draws by default, whether the
    terminal shows them, and the writers."""

    name: str
    suffix: str
    default_n: int = 64
    to_terminal: bool = False  # `genlab sample` without --out prints them

    def save(self, samples: Any, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return self._write(samples, path)

    def _write(self, samples: Any, path: Path) -> Path:
        return save_grid(samples, path, scale=4)

    def html(self, samples: Any) -> str:
        """The samples inline in a self-contained page."""
        return png_tag(samples, scale=3, nrow=8)

    def log(self, experiment: Any, samples: Any, step: int) -> None:
        """Show the samples in a logger's experiment (TensorBoard's writer) when it takes this media."""
        if hasattr(experiment, "add_image"):
            experiment.add_image("samples", image_grid(samples), step, dataformats="HWC")


class TextMedia(Media):
    def _write(self, samples: list[str], path: Path) -> Path:
        path.write_text(TEXT_SEPARATOR.join(samples) + "\n")
        return path

    def html(self, samples: list[str]) -> str:
        return "".join(f"<pre>{html.escape(t[:400])}</pre>" for t in samples)

    def log(self, experiment: Any, samples: list[str], step: int) -> None:
        if hasattr(experiment, "add_text"):  # TensorBoard renders markdown: a code block keeps the text as it is
            experiment.add_text("samples", "\n\n".join(f"```\n{t}\n```" for t in samples), step)


class TableMedia(Media):
    def _write(self, samples: Any, path: Path) -> Path:
        return write_table(samples, path)

    def html(self, samples: Any) -> str:
        return samples.head(20).to_html(index=False, na_rep="")

    def log(self, experiment: Any, samples: Any, step: int) -> None:
        TEXTS.log(experiment, [samples.to_string()], step)


IMAGES = Media("image", ".png")
TEXTS = TextMedia("text", ".txt", default_n=1, to_terminal=True)
TABLES = TableMedia("table", ".csv", default_n=100)


def png_tag(images: Any, scale: int = 2, nrow: int | None = None) -> str:
    """An <img> of `images` as one grid, each pixel `scale` wide, the PNG inline."""
    from PIL import Image

    grid = image_grid(images, nrow)
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return f"<img alt=samples src='data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}'>"


def write_table(frame: Any, path: str | Path) -> Path:
    """A DataFrame to .csv or .parquet (by the suffix), written whole then renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix.lower() in PARQUET_SUFFIXES:
        frame.to_parquet(tmp, index=False)
    else:
        frame.to_csv(tmp, index=False)
    tmp.replace(path)
    return path
