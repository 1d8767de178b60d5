"""The benchmark and GPU-check tooling in bench/: the speed benchmark's measurements on a tiny
model, its reports, the wheel list logic, the GPU scripts' dry runs, the bigger world ViT."""

import importlib.util
import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"clipag_bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def speed():
    return _load("speed")


@pytest.fixture(scope="module")
def wheels():
    return _load("wheels")


def _tiny_rows(speed, guide, views=2, patch_views=2, steps=1):
    settings = speed.BenchSettings(steps=steps, image_steps=10, views=views,
                                   patch_views=patch_views)
    return speed.bench_model("tiny", guide, (speed.FP32,), settings, "cpu")


def test_speed_benchmark_measures_one_step_of_the_tiny_model(speed, tiny_guide):
    (row,) = _tiny_rows(speed, tiny_guide)
    assert (row.model, row.image_size, row.views, row.batch, row.variant) == \
        ("tiny", 32, 4, 1, "fp32")
    for value in (row.s_step, row.s_image, row.views_per_s, row.best_step_s, row.model_s,
                  row.flops_step, row.flops_per_s):
        assert math.isfinite(value) and value > 0
    assert row.s_image == pytest.approx(10 * row.s_step)
    assert 0 < row.best_step_s <= row.s_step
    assert row.views_per_s == pytest.approx(4 / row.s_step)
    assert math.isfinite(row.outside_share) and row.outside_share < 1
    assert row.peak_flops is None and row.peak_share is None  # a CPU has no known peak


def test_seconds_per_image_count_every_image_of_a_step(speed, tiny_guide):
    settings = speed.BenchSettings(steps=1, image_steps=10, batch=4, views=2, patch_views=0)
    (row,) = speed.bench_model("tiny", tiny_guide, (speed.FP32,), settings, "cpu")
    assert row.batch == 4 and row.s_image == pytest.approx(10 * row.s_step / 4)
    assert row.views_per_s == pytest.approx(4 * 2 / row.s_step)


def test_step_flops_are_counted_exactly_and_grow_with_the_views(speed, tiny_guide):
    """The count is the model's work, not a timing: the same step counts the same, and twice
    the views is about twice the FLOPs (the per-image loss terms are tiny)."""
    (two,) = _tiny_rows(speed, tiny_guide, views=2, patch_views=0)
    (again,) = _tiny_rows(speed, tiny_guide, views=2, patch_views=0)
    (four,) = _tiny_rows(speed, tiny_guide, views=4, patch_views=0)
    assert two.flops_step == again.flops_step
    assert four.flops_step / two.flops_step == pytest.approx(2.0, rel=0.05)


def test_a_variant_that_cannot_run_is_reported_not_fatal(speed, tiny_guide):
    failures = []
    broken = speed.Variant("fp8 autocast", dtype="fp8")  # no such autocast dtype here
    settings = speed.BenchSettings(steps=1, image_steps=10, views=2, patch_views=0)
    rows = speed.bench_model("tiny", tiny_guide, (broken, speed.FP32), settings, "cpu",
                             failures=failures)
    assert [row.variant for row in rows] == ["fp32"]
    assert [(f["model"], f["variant"]) for f in failures] == [("tiny", "fp8 autocast")]
    assert failures[0]["error"].startswith("KeyError: ")  # the type and where it was raised
    assert " (at speed.py:" in failures[0]["error"]


def test_a_failure_without_a_message_still_says_what_and_where(speed):
    try:
        raise AssertionError()  # no message, as torch.compile raised on the H200
    except AssertionError as exc:
        line = speed.describe_failure(exc)
    assert line.startswith("AssertionError: no message (at test_bench.py:")


def test_speed_results_are_written_as_json_and_markdown(speed, tiny_guide, tmp_path):
    rows = _tiny_rows(speed, tiny_guide)
    meta = {"date": "2026-01-01", "command": "python bench/speed.py", "device": "cpu",
            "device_name": "x86_64", "torch": "t", "threads": 1, "image_steps": 10,
            "prompt": speed.PROMPT}
    json_path, md_path = speed.write_results(rows, meta, tmp_path / "deep" / "speed-x.json")
    assert (json_path.name, md_path.name) == ("speed-x.json", "speed-x.md")
    payload = json.loads(json_path.read_text())
    assert payload["device"] == "cpu" and payload["rows"][0]["views"] == 4
    assert payload["rows"][0]["s_step"] == rows[0].s_step
    text = md_path.read_text()
    assert "| tiny | 32 | 1x4 | fp32 |" in text and "s/image = 10 steps" in text


def test_peak_table_knows_the_cards_and_not_a_cpu(speed):
    assert speed.peak_flops("NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(989.4e12)
    assert speed.peak_flops("NVIDIA H100 PCIe", "fp32") == pytest.approx(51.2e12)
    assert speed.peak_flops("NVIDIA H200", "fp16") == pytest.approx(989.4e12)
    assert speed.peak_flops("NVIDIA A100-SXM4-80GB", "fp32") == pytest.approx(19.5e12)
    assert speed.peak_flops("x86_64", "fp32") is None
    assert speed.peak_flops("NVIDIA GeForce RTX 4090", "fp16") is None


def test_preset_settings_apply_without_scales(speed):
    config = speed.bench_config("world-robust", 100, None, None, 0)
    assert (config.views.global_views, config.views.patch_views, config.scales) == (32, 0, ())
    assert config.tv_weight == 0.3 and config.init == "noise"
    plain = speed.bench_config("ViT-B-32", 100, None, None, 0)
    assert (plain.views.global_views, plain.views.patch_views) == (32, 32)
    assert speed.bench_config("ViT-B-32", 100, 8, 0, 0).views.global_views == 8


# ---- the wheel list for a GPU box with only torch ----

def _fake_wheel(folder: Path, filename: str, requires: list[str], files: dict[str, str] = None
                ) -> Path:
    name, version = filename.split("-")[:2]
    path = folder / filename
    with zipfile.ZipFile(path, "w") as archive:
        meta = "Metadata-Version: 2.1\nName: {}\nVersion: {}\n".format(name, version)
        meta += "".join(f"Requires-Dist: {r}\n" for r in requires)
        archive.writestr(f"{name}-{version}.dist-info/METADATA", meta)
        for member, text in (files or {}).items():
            archive.writestr(member, text)
    return path


def test_wheel_requirements_follow_markers_for_the_target_python(wheels, tmp_path):
    wheel = _fake_wheel(tmp_path, "demo-1.0-py3-none-any.whl", [
        "click>=8", "tomli; python_version < '3.11'", "pytest; extra == 'test'",
        "colorama; sys_platform == 'win32'", "hf-xet>=1; platform_machine == 'x86_64'"])
    names = [r.name for r in wheels.wheel_requirements(wheel, wheels.marker_environment("3.12"))]
    assert names == ["click", "hf-xet"]
    old = [r.name for r in wheels.wheel_requirements(wheel, wheels.marker_environment("3.10"))]
    assert "tomli" in old


def test_closure_fetches_each_name_once_and_skips_what_the_box_has(wheels, tmp_path):
    from packaging.requirements import Requirement

    made = {"a": ["b", "torch>=2", "c"], "b": ["c", "numpy"], "c": ["A"]}
    fetched = []

    def fetch(req):
        name = wheels.canonical(req.name)
        fetched.append(name)
        return _fake_wheel(tmp_path, f"{name}-1.0-py3-none-any.whl", made[name])

    got = wheels.closure([Requirement("a")], {"torch", "numpy"}, fetch,
                         wheels.marker_environment("3.12"))
    assert sorted(got) == ["a", "b", "c"] and sorted(fetched) == ["a", "b", "c"]
    assert got["b"][1] == "a" and got["c"][1] == "a"


def test_box_provides_follows_what_torch_requires(wheels):
    from packaging.requirements import Requirement

    tree = {"torch": ["filelock", "sympy"], "sympy": ["mpmath"]}

    def requires(name, env):
        return [Requirement(r) for r in tree.get(name, [])]

    assert wheels.box_provides({}, ("torch", "numpy"), requires) == \
        {"torch", "numpy", "filelock", "sympy", "mpmath"}


def test_wheel_names_and_which_python_runs_them(wheels):
    parse = wheels.WheelName.parse
    scipy = parse("scipy-1.17.1-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl")
    assert (scipy.name, scipy.version) == ("scipy", "1.17.1")
    assert wheels.runs_on(scipy, 3, 12) and not wheels.runs_on(scipy, 3, 11)
    abi3 = parse("safetensors-0.8.0-cp310-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.whl")
    assert wheels.runs_on(abi3, 3, 12) and not wheels.runs_on(abi3, 3, 9)
    pure = parse("chardet-4.0.0-py2.py3-none-any.whl")
    assert pure.name == "chardet" and wheels.runs_on(pure, 3, 11)
    assert not wheels.runs_on(parse("x-1-cp312-cp312-macosx_11_0_arm64.whl"), 3, 12)
    assert parse("Kornia_RS-0.2.0-cp312-cp312-manylinux_2_17_x86_64.whl").name == "kornia-rs"
    with pytest.raises(ValueError):
        parse("not-a-wheel.zip")


def test_install_takes_only_missing_wheels_and_refuses_the_wrong_python(wheels, tmp_path):
    have = tmp_path / "rich-15.0.0-py3-none-any.whl"
    need = tmp_path / "ftfy-6.3.1-py3-none-any.whl"
    compiled = tmp_path / "regex-1-cp312-cp312-manylinux2014_x86_64.whl"
    for path in (have, need):
        path.touch()
    assert wheels.to_install([have, need], lambda n: n == "rich", (3, 12)) == [need]
    compiled.touch()
    assert wheels.to_install([have, compiled], lambda n: n == "rich", (3, 12)) == [compiled]
    with pytest.raises(SystemExit, match="cannot run on Python 3.11.*gpu-wheels.sh 3.11"):
        wheels.to_install([compiled], lambda n: False, (3, 11))


def test_unpack_lays_a_wheel_out_for_import(wheels, tmp_path):
    wheel = _fake_wheel(tmp_path, "demo-1.0-py3-none-any.whl", [], {
        "demo/__init__.py": "VALUE = 7\n", "demo-1.0.data/purelib/extra.py": "X = 1\n",
        "demo-1.0.data/scripts/demo": "#!/bin/sh\n"})
    target = tmp_path / "site"
    wheels.unpack([wheel], target)
    assert (target / "demo" / "__init__.py").read_text() == "VALUE = 7\n"
    assert (target / "extra.py").is_file() and not (target / "demo-1.0.data").exists()
    assert (target / "demo-1.0.dist-info" / "METADATA").is_file()
    bad = _fake_wheel(tmp_path, "bad-1.0-py3-none-any.whl", [], {"../escape.py": ""})
    with pytest.raises(SystemExit, match="unsafe path"):
        wheels.unpack([bad], tmp_path / "site2")
    assert not (tmp_path / "escape.py").exists()


# ---- the GPU scripts ----

@pytest.mark.parametrize("script", ["gpu.sh", "gpu-wheels.sh", "gpu-world.sh", "gpu-crossflow.sh",
                                    "script-common.sh"])
def test_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(ROOT / "bench" / script)]).returncode == 0


def test_gpu_wheels_needs_a_python_version():
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu-wheels.sh")], capture_output=True,
                            text=True)
    assert result.returncode == 2 and "usage" in result.stderr


def test_gpu_check_dry_run_lists_every_stage_in_the_summary(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("REHEARSE", "TOTAL_S", "SITE")}
    env.update(DRY_RUN="1", OUT=str(tmp_path), SRC=str(tmp_path / "src"))
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh")], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    (summary,) = tmp_path.glob("gpu-*.md")
    text = summary.read_text()
    for stage in ("install missing wheels", "CUDA tests", "generate, default model",
                  "generate, ViT-B-32 random weights, fp16", "speed benchmark",
                  "speed benchmark, 8 images a step", "robustify throughput"):
        assert f"| {stage} | dry run |" in text
    assert "DRY RUN" in text and "--pretrained none --device cuda" in text
    assert not (tmp_path / "src").exists()  # a dry run lays nothing out


def test_gpu_check_never_clears_a_folder_it_did_not_make(tmp_path):
    mine = tmp_path / "src"
    (mine / "keep").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("REHEARSE", "DRY_RUN")}
    env.update(OUT=str(tmp_path / "out"), SRC=str(mine), PYTHON=sys.executable)
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh")], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 1
    assert "was not made by bench/gpu.sh" in result.stderr
    assert (mine / "keep").is_dir()



def test_stage_scripts_run_the_clipag_gpu_sh_laid_out_from_the_checkout_root(tmp_path):
    """On a box, gpu.sh lays clipag out in SRC (with cli/ as clipag.cli); gpu-world.sh and
    gpu-crossflow.sh, run from the checkout's root, must import that one, not the checkout's
    clipag/ folder (which has no clipag.cli): this failed on the first GPU run."""
    src = tmp_path / "src"
    (src / "clipag").mkdir(parents=True)
    (src / ".made-by-gpu-sh").touch()
    for entry in (ROOT / "clipag").iterdir():
        (src / "clipag" / entry.name).symlink_to(entry)
    (src / "clipag" / "cli").symlink_to(ROOT / "cli")
    probe = ("source bench/script-common.sh; "
             "$py -c 'import clipag, clipag.cli; print(clipag.__path__[0])'")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONSAFEPATH", "PYTHONPATH")}
    # On the box clipag's own requirements live only in gpu.sh's SITE (on PYTHONPATH): keep
    # every entry of the path but a clipag layout (this failed on the H200, 2026-11-27)
    site = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
            if p and not (Path(p) / "clipag").exists()]
    env.update(SRC=str(src), SITE=os.pathsep.join(site) or str(tmp_path / "site"),
               PYTHON=sys.executable)
    result = subprocess.run(["bash", "-c", probe], cwd=ROOT, capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(src / "clipag")
    (src / ".made-by-gpu-sh").unlink()  # a folder gpu.sh did not make is never used
    result = subprocess.run(["bash", "-c", probe], cwd=ROOT, capture_output=True, text=True,
                            env=env, timeout=60)
    assert result.stdout.strip() != str(src / "clipag")


# ---- the bigger world ViT of bench/gpu-world.sh ----

def test_wider_world_vit_checkpoint_carries_its_architecture(tmp_path):
    from clipag.load import load_model
    from clipag.models import ARCH_CONFIGS

    world = _load("world_arch")
    arch = world.WorldArch(width=64, layers=5, head_width=32, text_width=32, text_layers=1,
                           embed_dim=48)
    path = world.write_init(tmp_path / "init.safetensors", arch, seed=0)
    guide = load_model(str(path))
    assert guide.image_size == ARCH_CONFIGS["world-vit"]["vision_cfg"]["image_size"]
    assert len(guide.model.visual.transformer.resblocks) == 5
    assert guide.encode_texts(["a red circle"]).shape == (1, 48)
    big = world.WorldArch().config()["vision_cfg"]
    small = ARCH_CONFIGS["world-vit"]["vision_cfg"]
    assert big["width"] > small["width"] and big["layers"] > small["layers"]


def test_steps_fit_the_time_budget_within_bounds():
    world = _load("world_arch")
    assert world.steps_for(100, 1280, 128, 4, 3000) == 850  # 0.85 * 100 s * 10 steps/s
    assert world.steps_for(100, 1e6, 128, 4, 3000) == 3000
    assert world.steps_for(1, 1, 128, 4, 3000) == 4
