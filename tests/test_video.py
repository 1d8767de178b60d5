"""--video writes an H.264 MP4 of the run that decodes back frame for frame; --preview keeps
a PNG of the image being made."""

from __future__ import annotations

import imageio_ffmpeg
import torch
from click.testing import CliRunner
from PIL import Image

from clipag.output import save_video


def read_back(path):
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    frames = list(reader)
    return meta, frames


def test_save_video_is_h264_yuv420p_with_every_frame(tmp_path):
    frames = [torch.full((3, 33, 47), i / 10) for i in range(7)]  # odd sides
    path = save_video(tmp_path / "run.mp4", frames, min_side=64)
    meta, decoded = read_back(path)
    assert meta["codec"].startswith("h264") and meta["pix_fmt"].startswith("yuv420p")
    w, h = meta["size"]
    assert w % 2 == 0 and h % 2 == 0 and min(w, h) >= 64
    assert len(decoded) == 7
    # the frames are in order: grey levels rise
    means = [sum(f) / len(f) for f in decoded]
    assert all(a < b for a, b in zip(means, means[1:]))
    assert [p.name for p in tmp_path.iterdir()] == ["run.mp4"]  # no temporary left


def test_generate_video_and_preview(tmp_path, monkeypatch):
    from clipag.cli.main import cli

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["generate", "a red circle", "--steps", "12", "--views", "2",
                                      "--patch-views", "0", "--init-candidates", "4",
                                      "--save-every", "4", "--video", "--preview", "now.png",
                                      "-o", "x.png", "-q"], standalone_mode=True)
    assert result.exit_code == 0, result.output
    meta, decoded = read_back(tmp_path / "x.mp4")
    assert len(decoded) == 12 // 4 + 1  # every 4th step, then the kept image
    assert not (tmp_path / "x.gif").exists()
    with Image.open(tmp_path / "now.png") as preview:
        assert preview.size == (64, 64)


def test_style_video_has_every_saved_frame_of_an_rgba_run(tmp_path, monkeypatch):
    from clipag.cli.main import cli

    monkeypatch.chdir(tmp_path)
    Image.new("RGBA", (40, 30), (200, 30, 30, 100)).save("c.png")
    result = CliRunner().invoke(cli, ["style", "c.png", "a blue square", "--steps", "6",
                                      "--views", "2", "--save-every", "2", "--video",
                                      "--preview", "now.png", "-o", "s.png", "-q"])
    assert result.exit_code == 0, result.output
    meta, decoded = read_back(tmp_path / "s.mp4")
    assert len(decoded) == 6 // 2 + 1 and meta["codec"].startswith("h264")
    with Image.open(tmp_path / "s.png") as out, Image.open(tmp_path / "now.png") as preview:
        assert out.mode == "RGBA" and out.size == (40, 30) and preview.size == (40, 30)
