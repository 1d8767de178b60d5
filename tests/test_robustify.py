import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from clipag.train.attacks import CosineLogits, ThreatModel, attack_logits, pgd
from clipag.checkpoint import read_meta
from clipag.train.data import BatchStream, open_dataset
from clipag.errors import ClipagError
from clipag.train.evaluate import zero_shot
from clipag.load import ModelSpec, load_spec as load_guide
from clipag.train.robustify import Objective, TrainConfig, add_noise, robustify
from clipag.train.common import lr_factor

CPU = torch.device("cpu")
TINY = ModelSpec(model="clipag-tiny", pretrained="none")


def _train(tmp_path, data, name="m", spec=TINY, **kw):
    logs = []
    settings = dict(steps=12, batch_size=16, lr=2e-3, log_every=1, seed=0)
    settings.update(kw)
    config = TrainConfig(data=str(data), out=str(tmp_path / f"{name}.safetensors"), **settings)
    path = robustify(config, spec, CPU, on_log=logs.append)
    return path, [log.loss for log in logs]


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_torchattacks_pgd_raises_loss_inside_the_ball(tiny_guide, norm, eps):
    images = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    texts = tiny_guide.encode_texts([f"class {i}" for i in range(4)]).detach()
    labels = torch.arange(8) % 4
    module = CosineLogits(tiny_guide.encode_images, texts, 50.0, tiny_guide.model)
    adv = attack_logits(module, images, labels, ThreatModel(norm, eps, 5))
    delta = (adv - images).flatten(1)
    size = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-5).all() and adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        assert F.cross_entropy(module(adv), labels) > F.cross_entropy(module(images), labels)


@pytest.mark.parametrize("norm,eps", [("linf", 4 / 255), ("l2", 0.5)])
def test_own_pgd_raises_embedding_distance_inside_the_ball(tiny_guide, norm, eps):
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        target = tiny_guide.model.encode_image(tiny_guide.normalize(images))

    def loss(x):
        return (tiny_guide.model.encode_image(tiny_guide.normalize(x)) - target).pow(2).sum(-1)

    adv = pgd(loss, images, ThreatModel(norm, eps, 5))
    delta = (adv - images).flatten(1)
    size = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-5).all() and adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        assert (loss(adv) > loss(images) + 1e-6).all()


def test_attack_leaves_an_eval_mode_model_in_eval_mode(tiny_guide):
    # torchattacks restores the module's own mode afterwards, recursively into the model
    model = tiny_guide.model.eval()
    texts = tiny_guide.encode_texts(["a", "b"]).detach()
    module = CosineLogits(tiny_guide.encode_images, texts, 50.0, model)
    attack_logits(module, torch.rand(2, 3, 32, 32), torch.arange(2), ThreatModel("l2", 0.5, 2))
    assert not model.training
    model.train()
    attack_logits(CosineLogits(tiny_guide.encode_images, texts, 50.0, model),
                  torch.rand(2, 3, 32, 32), torch.arange(2), ThreatModel("l2", 0.5, 2))
    assert model.training


def _batchnorm_stats(path):
    state = load_file(str(path))
    return {k: v for k, v in state.items() if k.endswith(("running_mean", "running_var"))}


@pytest.mark.parametrize("objective", ["contrastive", "fare"])
def test_adversarial_fine_tuning_keeps_batchnorm_statistics(tmp_path, world_captions,
                                                           objective):
    # plain training learns the running statistics; adversarial fine-tuning trains the
    # eval-mode function (the one that is attacked and that guides), so it keeps them
    rn = ModelSpec(model="clipag-tiny-rn", pretrained="none")
    vanilla, _ = _train(tmp_path, world_captions, "vanilla", spec=rn, steps=3, train_text=True,
                        threat=ThreatModel("l2", 0.0, 0))
    start = _batchnorm_stats(vanilla)
    assert start and any((v != 0).any() and (v != 1).any() for v in start.values())
    robust, _ = _train(tmp_path, world_captions, "robust", spec=ModelSpec(checkpoint=str(vanilla)),
                       objective=objective, steps=3, threat=ThreatModel("l2", 0.5, 2))
    after = _batchnorm_stats(robust)
    assert all(torch.equal(start[k], after[k]) for k in start)
    weights = load_file(str(vanilla)), load_file(str(robust))
    assert not torch.equal(weights[0]["visual.conv1.weight"], weights[1]["visual.conv1.weight"])


@pytest.mark.parametrize("objective,data_fixture,kw", [
    ("contrastive", "world_captions", {"train_text": True}),
    ("tecoa", "world_classes", {}),
    ("fare", "world_captions", {}),
])
def test_each_objective_lowers_its_loss(request, tmp_path, objective, data_fixture, kw):
    data = request.getfixturevalue(data_fixture)
    path, losses = _train(tmp_path, data, objective=objective, steps=20,
                          threat=ThreatModel("l2", 0.5, 2), **kw)
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first, losses
    meta = read_meta(path)
    assert meta["objective"] == objective and meta["eps"] == 0.5 and meta["norm"] == "l2"
    assert meta["arch"] == "clipag-tiny" and len(meta["data_fingerprint"]) == 16
    assert load_guide(ModelSpec(checkpoint=str(path)), CPU).image_size == 32


@pytest.mark.parametrize("objective,data_fixture", [
    ("contrastive", "world_captions"), ("tecoa", "world_classes"), ("fare", "world_captions")])
def test_logged_clean_loss_is_below_the_adversarial_loss(request, tmp_path, objective,
                                                         data_fixture):
    logs = []
    config = TrainConfig(data=str(request.getfixturevalue(data_fixture)),
                         out=str(tmp_path / "m.safetensors"), objective=objective, steps=4,
                         batch_size=16, lr=1e-3, log_every=2,
                         threat=ThreatModel("l2", 1.0, 3, random_start=False))
    robustify(config, TINY, CPU, on_log=logs.append)
    assert [log.step for log in logs] == [2, 4]
    assert all(log.clean_loss < log.loss for log in logs), logs


def test_resume_equals_uninterrupted(tmp_path, world_captions):
    common = dict(steps=6, save_every=2, threat=ThreatModel("l2", 0.5, 2), train_text=True)
    straight, _ = _train(tmp_path, world_captions, "straight", **common)

    def crash(step):
        if step == 3:
            raise KeyboardInterrupt

    config = TrainConfig(data=str(world_captions), out=str(tmp_path / "resumed.safetensors"),
                         batch_size=16, lr=2e-3, seed=0, **common)
    with pytest.raises(KeyboardInterrupt):
        robustify(config, TINY, CPU, on_step=crash)
    assert (tmp_path / "resumed.safetensors.state.pt").is_file()
    assert not (tmp_path / "resumed.safetensors").exists()
    config.resume = True
    resumed = robustify(config, TINY, CPU)
    a, b = load_file(str(straight)), load_file(str(resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "resumed.safetensors.state.pt").exists()


def test_robustified_model_is_more_robust(tmp_path, world_classes):
    clean, _ = _train(tmp_path, world_classes, "clean", objective="tecoa", steps=800,
                      batch_size=32, lr=3e-3, warmup=50, train_text=True, log_every=100,
                      threat=ThreatModel("linf", 0.0, 0))
    robust, _ = _train(tmp_path, world_classes, "robust", spec=ModelSpec(checkpoint=str(clean)),
                       objective="tecoa", steps=100, batch_size=32, lr=1e-3,
                       threat=ThreatModel("linf", 8 / 255, 3))
    dataset = open_dataset(world_classes)
    attack = ThreatModel("linf", 4 / 255, 10, random_start=False)
    before = zero_shot(load_guide(ModelSpec(checkpoint=str(clean)), CPU), dataset, attack)
    after = zero_shot(load_guide(ModelSpec(checkpoint=str(robust)), CPU), dataset, attack)
    assert before.clean_accuracy > 0.9  # the starting point learned the task
    assert after.robust_accuracy > before.robust_accuracy + 0.1, (before, after)


def test_ddp_two_processes_match_one(tmp_path, world_captions):
    args = ["robustify", str(world_captions), "--model", "clipag-tiny", "--pretrained", "none",
            "--steps", "3", "--batch-size", "16", "--lr", "2e-3", "--train-text", "--eps", "0.5",
            "--attack-steps", "2", "--no-random-start", "--seed", "0", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    one = subprocess.run([sys.executable, "-m", "clipag", *args, "-o", str(tmp_path / "one.st")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node", "2", "-m", "clipag", *args,
                          "-o", str(tmp_path / "two.st")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    # Compare what the models compute: parameters whose true gradient is zero (attention key
    # biases) get float-noise gradients that Adam turns into +-lr steps, differently per run.
    from clipag.train.data import load_all

    images, captions, _, _ = load_all(open_dataset(world_captions), 32)
    one_p, two_p, start = (load_guide(s, CPU) for s in (
        ModelSpec(checkpoint=str(tmp_path / "one.st")),
        ModelSpec(checkpoint=str(tmp_path / "two.st")), TINY))
    with torch.no_grad():
        e1, e2, e0 = (g.encode_images(images) for g in (one_p, two_p, start))
        t1, t2 = (g.encode_texts(captions) for g in (one_p, two_p))
    assert (e1 - e2).abs().max() < 1e-4 and (t1 - t2).abs().max() < 1e-4
    assert (e1 - e0).abs().max() > 0.1  # and training did move the model


def test_bad_training_settings(tmp_path, world_captions):
    with pytest.raises(ClipagError, match="tecoa needs labelled"):
        _train(tmp_path, world_captions, objective="tecoa")
    with pytest.raises(ClipagError, match="steps"):
        _train(tmp_path, world_captions, "b", steps=0)
    with pytest.raises(ClipagError, match="norm"):
        ThreatModel("l3", 1.0, 1)
    path, _ = _train(tmp_path, world_captions, "c", steps=1)
    with pytest.raises(ClipagError, match="exists"):
        _train(tmp_path, world_captions, "c", steps=1)


def test_schedule_warms_up_then_decays():
    values = [lr_factor(s, 10, 100) for s in range(100)]
    assert values[0] == 0.1 and values[9] == 1.0
    assert all(a >= b for a, b in zip(values[10:], values[11:])) and values[-1] < 0.01


def test_clean_weight_adds_the_clean_loss(tiny_guide, world_captions):
    ds = open_dataset(world_captions)
    images, captions, labels = next(iter(BatchStream(ds, 8, tiny_guide.image_size)))
    threat = ThreatModel("l2", 1.0, 2, random_start=False)  # a deterministic attack
    base = TrainConfig(data="d", out="o", threat=threat)
    adv, clean = Objective(base, tiny_guide, ds)(images, captions, labels, measure_clean=True)
    mixed, clean2 = Objective(replace(base, clean_weight=2.0), tiny_guide, ds)(
        images, captions, labels)
    assert clean < adv
    assert torch.allclose(clean2, clean, atol=1e-5)
    assert torch.allclose(mixed, adv + 2 * clean, atol=1e-5)


def test_clean_weight_is_validated(tmp_path, world_captions):
    with pytest.raises(ClipagError, match="--clean-weight must be >= 0"):
        _train(tmp_path, world_captions, clean_weight=-1.0)
    with pytest.raises(ClipagError, match="contrastive and tecoa"):
        _train(tmp_path, world_captions, objective="fare", clean_weight=1.0)


def test_add_noise_has_the_asked_std_and_stays_in_range():
    grey = torch.full((4, 3, 32, 32), 0.5)
    noisy = add_noise(grey, 0.1)
    assert noisy.min() >= 0 and noisy.max() <= 1
    assert abs((noisy - grey).std().item() - 0.1) < 0.005
    assert abs(noisy.mean().item() - 0.5) < 0.005


def test_noise_training_sees_noisy_images(tiny_guide, world_captions):
    ds = open_dataset(world_captions)
    images, captions, labels = next(iter(BatchStream(ds, 8, tiny_guide.image_size)))
    base = TrainConfig(data="d", out="o", threat=ThreatModel("l2", 0.0, 0))
    clean, _ = Objective(base, tiny_guide, ds)(images, captions, labels)
    torch.manual_seed(0)
    noisy, _ = Objective(replace(base, noise=0.3), tiny_guide, ds)(images, captions, labels)
    torch.manual_seed(0)
    expected = Objective(base, tiny_guide, ds)(add_noise(images, 0.3), captions, labels)[0]
    assert not torch.allclose(noisy, clean)
    assert torch.allclose(noisy, expected, atol=1e-6)


def test_noise_is_validated_and_recorded(tmp_path, world_captions):
    with pytest.raises(ClipagError, match="--noise must be >= 0"):
        _train(tmp_path, world_captions, noise=-0.1)
    path, _ = _train(tmp_path, world_captions, steps=2, noise=0.2,
                     threat=ThreatModel("l2", 0.0, 0))
    assert read_meta(path)["noise"] == 0.2


def _siblings(n=8, size=32):
    from clipag.images import image_to_tensor
    from clipag.world.scenes import WorldConfig, sample
    config = WorldConfig(seed=4, size=size, digit_fraction=0.0, siblings=4)
    items = [sample(i, config) for i in range(n)]
    images = torch.stack([image_to_tensor(image, size) for image, _, _ in items])
    return images, [text for _, text, _ in items]


def test_sibling_alignment_is_the_cosine_of_gradient_and_step(tiny_guide):
    from clipag.train.robustify import sibling_alignment
    images, captions = _siblings()
    model = tiny_guide.model.eval()

    def encode(x):
        return F.normalize(model.visual(tiny_guide.normalize(x)).float(), dim=-1)

    got = sibling_alignment(tiny_guide, encode, images, captions, 4, shift=1)
    # by hand, image 5 (second group, member 1) against its sibling 6's caption
    x = images[5:6].clone().requires_grad_(True)
    text = tiny_guide.encode_texts([captions[6]])
    (encode(x) * text).sum().backward()
    expected = F.cosine_similarity(x.grad.flatten(), (images[6] - images[5]).flatten(), dim=0)
    assert got.shape == (8,)
    assert torch.allclose(got[5], expected, atol=1e-5)
    with pytest.raises(ClipagError, match="does not hold whole groups of 4"):
        sibling_alignment(tiny_guide, encode, images[:6], captions[:6], 4, shift=1)


def test_pag_weight_training_aligns_the_gradients(tiny_guide):
    from clipag.train.robustify import sibling_alignment
    images, captions = _siblings()
    config = TrainConfig(data="d", out="o", threat=ThreatModel("l2", 0.0, 0), group=4,
                         pag_weight=1.0)
    objective = Objective(config, tiny_guide, None)
    model = tiny_guide.model.eval()

    def alignment():
        return torch.stack([sibling_alignment(tiny_guide, objective._encode, images, captions,
                                              4, shift) for shift in (1, 2, 3)]).mean().item()

    before = alignment()
    optimizer = torch.optim.Adam(model.visual.parameters(), lr=1e-3)
    torch.manual_seed(0)
    for _ in range(40):
        optimizer.zero_grad()
        objective.alignment_loss(images, captions).backward()
        optimizer.step()
    after = alignment()
    assert after > before + 0.2, (before, after)


def test_pag_weight_is_validated(tmp_path, world_captions):
    with pytest.raises(ClipagError, match="--pag-weight must be >= 0"):
        _train(tmp_path, world_captions, pag_weight=-1.0, group=4)
    with pytest.raises(ClipagError, match="--pag-weight needs sibling groups"):
        _train(tmp_path, world_captions, pag_weight=1.0)
