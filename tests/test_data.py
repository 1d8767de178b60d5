import csv
import json
import shutil
import tarfile

import pytest
import torch

from clipag.train.data import (DEFAULT_TEMPLATE, BatchStream, in_holdout, load_all,
                               open_dataset, split)
from clipag.errors import ClipagError


def test_caption_folder(world_captions):
    ds = open_dataset(world_captions)
    assert len(ds) == 96 and not ds.streamed
    assert ds.records[0].caption == (world_captions / "0000000.txt").read_text().strip()


def test_manifests(tmp_path, world_captions):
    files = sorted(p.name for p in world_captions.glob("*.png"))[:5]
    with open(tmp_path / "captions.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "caption"])
        for name in files:
            shutil.copy(world_captions / name, tmp_path / name)
            writer.writerow([name, f"caption of {name}"])
    ds = open_dataset(tmp_path)
    assert [r.caption for r in ds.records] == [f"caption of {n}" for n in files]
    (tmp_path / "captions.csv").unlink()
    (tmp_path / "captions.jsonl").write_text(
        "\n".join(json.dumps({"file": n, "caption": n}) for n in files))
    assert len(open_dataset(tmp_path)) == 5


def test_class_folders(world_classes):
    ds = open_dataset(world_classes, template=DEFAULT_TEMPLATE)
    assert ds.classes == ["circle", "cross", "square", "triangle"]
    assert ds.class_prompts()[0] == "a photo of a circle"
    assert {r.label for r in ds.records} == {0, 1, 2, 3}


def test_tar_shards_stream(tmp_path, world_captions):
    shard = tmp_path / "shard-0.tar"
    with tarfile.open(shard, "w") as tar:
        for png in sorted(world_captions.glob("*.png"))[:10]:
            tar.add(png, arcname=png.name)
            tar.add(png.with_suffix(".txt"), arcname=png.with_suffix(".txt").name)
    ds = open_dataset(tmp_path)
    assert ds.streamed
    images, captions, _ = next(iter(BatchStream(ds, 4, 32)))
    assert images.shape == (4, 3, 32, 32) and len(captions) == 4
    all_images, _, _, skipped = load_all(ds, 32)
    assert len(all_images) == 10 and skipped == 0


def test_corrupt_images_are_skipped_and_counted(tmp_path, world_captions):
    for png in sorted(world_captions.glob("*.png"))[:6]:
        shutil.copy(png, tmp_path / png.name)
        shutil.copy(png.with_suffix(".txt"), tmp_path / png.with_suffix(".txt").name)
    (tmp_path / "0000002.png").write_bytes(b"broken")
    stream = BatchStream(open_dataset(tmp_path), 6, 32)
    images, captions, _ = next(iter(stream))
    assert len(images) == 5 and stream.stats.skipped == 1


def test_holdout_split_is_disjoint_and_stable(world_captions):
    ds = open_dataset(world_captions)
    train, held = split(ds, 0.25, "train"), split(ds, 0.25, "eval")
    keys_train, keys_held = {r.key for r in train.records}, {r.key for r in held.records}
    assert keys_train.isdisjoint(keys_held) and len(keys_train | keys_held) == 96
    assert 5 < len(keys_held) < 45
    assert all(in_holdout(k, 0.25) for k in keys_held)


def test_stream_resumes_from_position_and_shards_by_rank(world_captions):
    ds = open_dataset(world_captions)
    straight = iter(BatchStream(ds, 8, 32, seed=3))
    batches = [next(straight) for _ in range(14)]  # crosses an epoch boundary (96 / 8 = 12)
    resumed = iter(BatchStream(ds, 8, 32, seed=3, position=5 * 8))
    for want in batches[5:]:
        got = next(resumed)
        assert torch.equal(got[0], want[0]) and got[1] == want[1]
    halves = [next(iter(BatchStream(ds, 8, 32, seed=3, rank=r, world=2))) for r in (0, 1)]
    assert halves[0][1] + halves[1][1] != batches[0][1]  # interleaved, not concatenated
    assert sorted(halves[0][1] + halves[1][1]) == sorted(batches[0][1])


def test_bad_datasets(tmp_path):
    with pytest.raises(ClipagError, match="no dataset"):
        open_dataset(tmp_path / "missing")
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(ClipagError, match="no captions"):
        open_dataset(tmp_path)
    (tmp_path / "a.txt").write_text("a caption")
    with pytest.raises(ClipagError, match="divisible"):
        BatchStream(open_dataset(tmp_path), 3, 32, world=2)


def test_groups_stay_whole_in_batches_and_ranks(tmp_path):
    from clipag.world import scenes as world
    root = world.export(tmp_path / "sib", 48, world.WorldConfig(seed=2, size=16, siblings=4,
                                                                        digit_fraction=0.0))
    ds = open_dataset(root)
    stream = iter(BatchStream(ds, 8, 16, seed=1, group=4))
    keys = {r.caption: r.key.split(".")[0] for r in ds.records}
    assert len(keys) == 48  # every caption unique here: it names the item
    seen = []
    for _ in range(8):  # crosses an epoch boundary (48 / 8 = 6)
        _, captions, _ = next(stream)
        indices = [int(keys[c]) for c in captions]
        for start in range(0, 8, 4):
            unit = indices[start:start + 4]
            assert unit == list(range(unit[0], unit[0] + 4)) and unit[0] % 4 == 0
        seen.append(indices)
    groups = [i // 4 for batch in seen[:6] for i in batch[::4]]
    assert sorted(groups) == list(range(12)) and groups != sorted(groups)  # shuffled as units
    again = iter(BatchStream(ds, 8, 16, seed=1, group=4))
    assert [int(keys[c]) for c in next(again)[1]] == seen[0]
    halves = [next(iter(BatchStream(ds, 8, 16, seed=1, group=4, rank=r, world=2)))[1]
              for r in (0, 1)]
    assert [int(keys[c]) for c in halves[0]] == seen[0][:4]
    assert [int(keys[c]) for c in halves[1]] == seen[0][4:]


def test_group_errors(tmp_path, world_captions):
    ds = open_dataset(world_captions)
    with pytest.raises(ClipagError, match="divisible by 1 processes x groups of 4"):
        BatchStream(ds, 6, 32, group=4)
    with pytest.raises(ClipagError, match="96 items do not split into groups of 5"):
        BatchStream(ds, 10, 32, group=5)
    with pytest.raises(ClipagError, match="--group must be >= 1"):
        BatchStream(ds, 8, 32, group=0)


def test_batches_from_cached_and_decoded_images_are_the_same_floats():
    from clipag.train.data import as_unit_floats

    cached = [torch.randint(0, 256, (3, 4, 4), dtype=torch.uint8) for _ in range(3)]
    expected = torch.stack([c.float() / 255 for c in cached])
    batch = as_unit_floats(cached)
    assert batch.dtype == torch.float32 and torch.equal(batch, expected)
    decoded = torch.rand(3, 4, 4)  # an image decoded without the cache: floats already
    mixed = as_unit_floats([cached[0], decoded, cached[2]])
    assert torch.equal(mixed[1], decoded)
    assert torch.equal(mixed[[0, 2]], expected[[0, 2]])
