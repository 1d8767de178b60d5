import json

import pytest

from clipag.world import scenes as world
from clipag.errors import ClipagError


def test_world_is_deterministic():
    config = world.WorldConfig(seed=5, size=32)
    for i in (0, 7, 123):
        a_image, a_text, a_scene = world.sample(i, config)
        b_image, b_text, b_scene = world.sample(i, config)
        assert a_text == b_text and a_scene == b_scene
        assert a_image.tobytes() == b_image.tobytes()
    assert world.sample(0, config)[1] != world.sample(0, world.WorldConfig(seed=6))[1] or \
        world.sample(1, config)[1] != world.sample(1, world.WorldConfig(seed=6))[1]


def test_world_covers_its_attributes():
    scenes = [world.sample(i, world.WorldConfig(seed=0, digit_fraction=0.1))[2]
              for i in range(600)]
    shapes = [s for s in scenes if s.digit is None]
    assert {s.shape for s in shapes} == set(world.SHAPES)
    assert {s.color for s in shapes} == set(world.COLORS) and len(world.COLORS) >= 8
    assert {s.count for s in shapes} == {1, 2, 3}
    assert {s.position for s in shapes if s.count == 1} == set(world.POSITIONS)
    assert 20 < sum(s.digit is not None for s in scenes) < 120
    assert all(s.color != s.background for s in shapes)


def test_captions_name_true_attributes():
    for i in range(300):
        _, text, scene = world.sample(i, world.WorldConfig(seed=1))
        if scene.digit is not None:
            assert str(scene.digit) in text
            continue
        parsed = world.parse_prompt(text)
        assert parsed["shape"] == scene.shape
        for key in ("color", "background", "count", "position", "size"):
            if key in parsed:
                assert parsed[key] == getattr(scene, key), (text, key)
        full = world.parse_prompt(world.full_caption(scene))
        assert (full["color"], full["background"], full["count"]) == (
            scene.color, scene.background, scene.count)


def test_plural_captions_are_english():
    texts = [world.sample(i, world.WorldConfig(seed=2, digit_fraction=0.0))[1] for i in range(400)]
    assert any("crosses" in t for t in texts)
    assert not any("crosss" in t or "circless" in t for t in texts)
    assert world.parse_prompt("two red crosses on a blue background")["shape"] == "cross"
    assert world.parse_prompt("three squares")["shape"] == "square"


def test_judge_is_right_on_ground_truth():
    """The analytic judge must read true world images right >= 95% of the time."""
    from collections import defaultdict

    from clipag.world.judge import judge

    hits, totals = defaultdict(int), defaultdict(int)
    config = world.WorldConfig(seed=11, size=64, digit_fraction=0.0)
    for i in range(400):
        image, _, scene = world.sample(i, config)
        prompt = world.full_caption(scene)
        if scene.count == 1:
            where = "middle" if scene.position == "center" else scene.position
            prompt += f" on the {where}"
        for attribute, ok in judge(image, prompt).items():
            hits[attribute] += ok
            totals[attribute] += 1
    accuracy = {k: hits[k] / totals[k] for k in totals}
    assert set(accuracy) >= {"color", "background", "shape", "count", "position"}
    assert all(v >= 0.95 for v in accuracy.values()), accuracy


def test_judge_rejects_wrong_attributes():
    from clipag.world.judge import judge

    image, _, scene = world.sample(3, world.WorldConfig(seed=2, digit_fraction=0.0))
    wrong_color = next(c for c in world.COLORS if c not in (scene.color, scene.background))
    verdict = judge(image, f"a {wrong_color} {scene.shape} on a {scene.background} background")
    assert verdict["color"] is False and verdict["background"] is True


def test_siblings_differ_only_in_shape():
    config = world.WorldConfig(seed=4, size=32, digit_fraction=0.0, siblings=4)
    for group in range(6):
        members = [world.sample(group * 4 + m, config) for m in range(4)]
        scenes = [scene for _, _, scene in members]
        assert {s.shape for s in scenes} == set(world.SHAPES)
        rest = {(s.color, s.background, s.size, s.count, s.position, s.boxes) for s in scenes}
        assert len(rest) == 1
        # the same template: the captions differ only in the shape word
        words = [text.replace(world.plural(s.shape), "_").replace(s.shape, "_")
                 for (_, text, _), s in zip(members, scenes)]
        assert len(set(words)) == 1 and "_" in words[0]
        assert len({image.tobytes() for image, _, _ in members}) == 4
    firsts = {(s.color, s.background) for s in (world.sample(g * 4, config)[2] for g in range(6))}
    assert len(firsts) > 1  # the groups themselves differ


def test_object_scale_grows_every_object_and_keeps_the_rest():
    import numpy as np

    base, big = world.WorldConfig(seed=9, digit_fraction=0.0), world.WorldConfig(
        seed=9, digit_fraction=0.0, object_scale=1.6)
    counts = set()
    for i in range(60):
        (a, _, s), (b, _, t) = world.sample(i, base), world.sample(i, big)
        assert (s.shape, s.color, s.background, s.count) == (t.shape, t.color, t.background,
                                                              t.count)
        assert all(abs(bt[2] / bs[2] - 1.6) < 1e-9 for bs, bt in zip(s.boxes, t.boxes))
        background = np.array(world.COLORS[s.background])
        area = [(np.abs(np.asarray(x, int) - background).sum(-1) > 60).mean() for x in (a, b)]
        assert area[1] > 1.8 * area[0]  # 1.6x the extent: about 2.6x the area
        counts.add(t.count)
    assert counts == {1, 2, 3}  # three big objects still fit side by side
    assert world.sample(5, world.WorldConfig(seed=9, object_scale=1.0))[1] == \
        world.sample(5, world.WorldConfig(seed=9))[1]


@pytest.mark.parametrize("scale", [0.4, 1.7])
def test_object_scale_is_validated(tmp_path, scale):
    with pytest.raises(ClipagError, match=r"--object-scale must be in \[0.5, 1.6\]"):
        world.export(tmp_path / "x", 4, world.WorldConfig(object_scale=scale))


def test_siblings_are_validated(tmp_path):
    with pytest.raises(ClipagError, match="--siblings must be >= 1"):
        world.export(tmp_path, 4, world.WorldConfig(siblings=0))


def test_classes_layout_names_folders_by_the_chosen_attributes(tmp_path):
    config = world.WorldConfig(seed=2, size=16, digit_fraction=0.2)
    out = world.export(tmp_path / "cs", 40, config, layout="classes",
                       class_by=("shape", "color"))
    truth = [json.loads(line) for line in (out / "scenes.jsonl").read_text().splitlines()]
    for row in truth:
        expected = (f"digit_{row['digit']}" if row["digit"] is not None
                    else f"{row['color']}_{row['shape']}")
        assert (out / expected / f"{row['key']}.png").is_file()
    assert any(row["digit"] is not None for row in truth)
    scene = next(world.sample(i, config)[2] for i in range(40)
                 if world.sample(i, config)[2].digit is None)
    assert world.class_label(scene) == scene.shape
    assert (world.class_label(scene, ("background", "color", "shape"))
            == f"{scene.color} {scene.shape} on a {scene.background} background")


@pytest.mark.parametrize("by", [(), ("colour",), ("shape", "size")])
def test_class_by_is_validated(tmp_path, by):
    with pytest.raises(ClipagError, match="--class-by takes a comma-separated subset"):
        world.export(tmp_path / "x", 4, world.WorldConfig(), layout="classes", class_by=by)
    assert not (tmp_path / "x").exists()


def test_confusion_counts_what_the_judge_read_per_prompted_value():
    from clipag.world.benchmark import confusion
    prompts = ["a red circle", "two blue circles", "a green triangle on a white background",
               "a pink background"]
    reads = [{"shape": "square"}, {"shape": "circle"}, {"shape": "square"}, {"shape": "circle"}]
    assert confusion(prompts, reads) == {"circle": {"square": 1, "circle": 1},
                                         "triangle": {"square": 1}}
    assert confusion(prompts, reads, "color")["red"] == {"None": 1}


def test_export_never_mixes_into_or_replaces_an_existing_dataset(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "mine.png").write_bytes(b"the user's")
    with pytest.raises(ClipagError, match="exists and is not empty"):
        world.export(out, 4, world.WorldConfig(size=16))
    assert [p.name for p in out.iterdir()] == ["mine.png"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert len(list(world.export(empty, 4, world.WorldConfig(size=16)).glob("*.png"))) == 4


def test_an_interrupted_export_leaves_nothing_and_stale_ones_are_cleaned(tmp_path, monkeypatch):
    import os
    import time
    out = tmp_path / "data"
    stale = tmp_path / ".data.abc123.part"
    stale.mkdir()
    (stale / "0000000.png").write_bytes(b"half")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    calls = []

    def boom(index, config):
        calls.append(index)
        if index == 2:
            raise KeyboardInterrupt
        return real(index, config)

    real = world.sample
    monkeypatch.setattr(world, "sample", boom)
    with pytest.raises(KeyboardInterrupt):
        world.export(out, 4, world.WorldConfig(size=16))
    assert not out.exists() and list(tmp_path.iterdir()) == []  # and the stale one is gone
    monkeypatch.setattr(world, "sample", real)
    assert (world.export(out, 4, world.WorldConfig(size=16)) / "scenes.jsonl").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


@pytest.mark.parametrize("n,config,message", [
    (0, world.WorldConfig(), "--n must be"), (6, world.WorldConfig(siblings=4), "multiple"),
    (4, world.WorldConfig(size=0), "--size must be"),
    (4, world.WorldConfig(digit_fraction=float("nan")), "--digit-fraction"),
    (4, world.WorldConfig(object_scale=float("nan")), "--object-scale")])
def test_export_numbers_are_validated(tmp_path, n, config, message):
    with pytest.raises(ClipagError, match=message):
        world.export(tmp_path / "x", n, config)
    assert not (tmp_path / "x").exists()
