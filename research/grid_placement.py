"""Where the objects sit in a benchmark grid (`init-grid.png`, `pag-grid.png`): each tile is
read by the analytic judge, and each row reports the share of tiles with an object found,
the mean offset of the object's centroid (0 at the centre, 0.5 at the border) and the share
touching the border, as research/probe_corners.py does for the images it makes.

    python research/grid_placement.py work/chain/refined/init-grid.png --columns 32
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clipag.world.judge import read_image
from probe_corners import placement  # research/ is the script's own folder


def rows_of(grid: torch.Tensor, columns: int, side: int) -> list[list[torch.Tensor]]:
    """The grid's tiles, row by row, each averaged down to side x side."""
    tile = grid.shape[-1] // columns
    if tile % side:
        raise SystemExit(f"error: tiles of {tile} px do not reduce to {side} px")
    return [[F.avg_pool2d(grid[None, :, r:r + tile, c:c + tile], tile // side)[0]
             for c in range(0, columns * tile, tile)]
            for r in range(0, grid.shape[1] - tile + 1, tile)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid")
    parser.add_argument("--columns", type=int, default=32, help="tiles per row (the prompts)")
    parser.add_argument("--side", type=int, default=64, help="the images' own side")
    args = parser.parse_args()
    image = np.asarray(Image.open(args.grid).convert("RGB")).copy()
    grid = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    for k, row in enumerate(rows_of(grid, args.columns, args.side)):
        p = placement([read_image(t) for t in row])
        print(f"row {k}: found {p['found']:.2f}, offset {p['offset']:.3f}, "
              f"touches border {p['edge']:.2f}")


if __name__ == "__main__":
    main()
