from clipag import world


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
