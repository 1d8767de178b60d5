"""Issue 35, class 5: every field read from one of clipag's own files is checked like a flag.
A CrossFlow file, a guide checkpoint or a Gaussian-mixture start whose metadata holds a
field of the wrong type or out of range, and a safetensors file whose header claims an
absurd length, end in one `error:` line naming the file and the field (exit 2, no
traceback), and the loaders raise a ClipagError: never a traceback, never a huge allocation."""

import json
from dataclasses import fields

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings, strategies as st
from safetensors.torch import load_file, save_file

from clipag.checkpoint import META_KEY, header_problem, read_meta
from clipag.cli.main import cli
from clipag.errors import ClipagError
from clipag.flow.crossflow import CrossFlow, FlowConfig, load_flow, save_flow, text_probe
from clipag.init import GaussianMixture, fit
from clipag.load import load_clipag_file
from bad_input import one_error_line

FAST = ["--steps", "2", "--views", "2", "--patch-views", "0", "--init-candidates", "4",
        "--device", "cpu", "-q"]
DROP = object()  # a metadata field taken out


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def rewrite(src, dst, change, tensors=None):
    """`src` written again as `dst` with its clipag metadata changed by `change(meta)` (and
    its tensors replaced by `tensors` where given)."""
    meta = read_meta(src)
    change(meta)
    save_file(tensors if tensors is not None else load_file(str(src)), str(dst),
              metadata={META_KEY: json.dumps(meta)})
    return dst


def setter(key, value, within=None):
    def change(meta):
        where = meta if within is None else meta[within]
        if value is DROP:
            where.pop(key, None)
        else:
            where[key] = value
    return change


@pytest.fixture
def flow(tmp_path, tiny_guide, tiny_checkpoint):
    with torch.no_grad():
        dim = tiny_guide.encode_texts(["x"]).shape[-1]
    cfg = FlowConfig(text_dim=dim, resolution=8, patch=2, width=16, depth=1, heads=2,
                     ve_hidden=16, embed_dim=8)
    return save_flow(tmp_path / "flow.safetensors", CrossFlow(cfg),
                     {"text_model": str(tiny_checkpoint),
                      "text_probe": text_probe(tiny_guide.encode_texts)})


@pytest.fixture
def mixture(tmp_path):
    images = torch.rand(20, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    return fit(images, components=2, rank=2, seed=0).save(tmp_path / "mixture.safetensors")


# --- CrossFlow files --------------------------------------------------------------------------

FLOW_FIELDS = [
    ("resolution", "abc"), ("resolution", 2 ** 20), ("resolution", 0), ("resolution", True),
    ("resolution", 6.0), ("resolution", 12), ("resolution", 16), ("heads", 0), ("heads", 3),
    ("heads", None), ("width", -1), ("width", 10 ** 12), ("depth", 0), ("depth", "1"),
    ("depth", 2), ("patch", 0), ("text_dim", None), ("text_dim", 10 ** 9), ("ve_hidden", []),
    ("embed_dim", {}), ("text_len", -1), ("contrast", 5), ("contrast", "other"),
    ("net", None), ("net", "rnn"), ("text_input", "tokens"), ("condition", []),
    ("bogus", 1), ("text_dim", DROP)]


# fields of the right type and range that do not fit the others or the weights: the config
# (metadata 'flow') is named as a whole
INCONSISTENT = [("resolution", 12), ("resolution", 16), ("depth", 2), ("heads", 3),
                ("text_input", "tokens")]


@pytest.mark.parametrize("field, value", FLOW_FIELDS)
def test_a_bad_crossflow_config_field_is_named(tmp_path, flow, tiny_checkpoint, field, value):
    bad = rewrite(flow, tmp_path / "bad.safetensors", setter(field, value, "flow"))
    needle = "metadata field 'flow'" if (field, value) in INCONSISTENT else repr(field)
    with pytest.raises(ClipagError) as caught:
        load_flow(bad, torch.device("cpu"))
    assert str(bad) in str(caught.value) and needle in str(caught.value)
    out = tmp_path / "out"
    one_error_line(run("crossflow", "sample", "a red circle", "--flow", bad, "-d", out,
                       "--device", "cpu"), str(bad), needle)
    one_error_line(run("generate", "a red circle", "-c", tiny_checkpoint, "--init",
                       f"crossflow:{bad}", "-d", out, *FAST), str(bad), needle)
    assert not out.exists() or not list(out.iterdir())


@pytest.mark.parametrize("value", [[], None, 5, "abc"])
def test_a_crossflow_config_that_is_not_an_object_is_refused(tmp_path, flow, value):
    bad = rewrite(flow, tmp_path / "bad.safetensors", setter("flow", value))
    one_error_line(run("crossflow", "sample", "a red circle", "--flow", bad, "-d",
                       tmp_path / "out", "--device", "cpu"), str(bad), "flow")


@pytest.mark.parametrize("field, value", [
    ("text_model", None), ("text_model", 5), ("text_model", ["a"]), ("text_model", ""),
    ("text_model", DROP), ("text_probe", "abc"),
    ("text_probe", [1, "x"]), ("text_probe", {})])
def test_a_bad_crossflow_metadata_field_is_named(tmp_path, flow, field, value):
    bad = rewrite(flow, tmp_path / "bad.safetensors", setter(field, value))
    with pytest.raises(ClipagError, match=field):
        load_flow(bad, torch.device("cpu"))
    one_error_line(run("crossflow", "sample", "a red circle", "--flow", bad, "-d",
                       tmp_path / "out", "--device", "cpu"), str(bad), field)


@pytest.mark.parametrize("text_model, needle", [
    ("world-vanilla", "makes 64-d ones"), ("no-such-model", "no-such-model"),
    ("/no/such/file.safetensors", "not found")])
def test_a_text_model_that_does_not_fit_is_named(tmp_path, flow, text_model, needle):
    def change(meta):
        meta["text_model"] = text_model
        del meta["text_probe"]
    bad = rewrite(flow, tmp_path / "bad.safetensors", change)
    one_error_line(run("crossflow", "sample", "a red circle", "--flow", bad, "-d",
                       tmp_path / "out", "--device", "cpu"), "'text_model'", text_model, needle)


def test_a_good_crossflow_file_still_loads(flow):
    model, meta = load_flow(flow, torch.device("cpu"))
    assert model.cfg.resolution == 8 and meta["text_model"].endswith("tiny.safetensors")


def test_a_good_crossflow_file_still_samples(tmp_path, flow):
    result = run("crossflow", "sample", "a red circle", "--flow", flow, "-d", tmp_path / "out",
                 "--device", "cpu", "--steps", "1")
    assert result.exit_code == 0, result.output
    assert list((tmp_path / "out").glob("*.png"))


# --- guide checkpoints ------------------------------------------------------------------------

def tiny_config(**changes):
    config = {"embed_dim": 32,
              "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                             "head_width": 16},
              "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                           "layers": 1}}
    for key, value in changes.items():
        part, _, name = key.rpartition(".")
        (config[part] if part else config)[name] = value
    return config


@pytest.mark.parametrize("arch, needle", [
    ({}, "arch"), (5, "arch"), (None, "arch"), ([], "arch"), ("", "arch"),
    ("no-such-arch", "no-such-arch"), (tiny_config(embed_dim="abc"), "arch.embed_dim"),
    (tiny_config(embed_dim=0), "arch.embed_dim"), (tiny_config(embed_dim=64), "arch"),
    (tiny_config(vision_cfg=5), "arch.vision_cfg"),
    (tiny_config(**{"vision_cfg.width": -1}), "arch.vision_cfg.width"),
    (tiny_config(**{"vision_cfg.image_size": 2 ** 20}), "arch.vision_cfg.image_size"),
    (tiny_config(**{"vision_cfg.layers": 10 ** 6}), "arch.vision_cfg.layers"),
    (tiny_config(**{"text_cfg.layers": "x"}), "arch.text_cfg.layers"),
    (tiny_config(**{"text_cfg.heads": 3}), "arch"),
    (tiny_config(**{"text_cfg.vocab_size": 10 ** 9}), "arch.text_cfg.vocab_size"),
    (tiny_config(**{"vision_cfg.bogus": 1}), "arch"),
    (tiny_config(**{"vision_cfg.width": 16384, "vision_cfg.layers": 256}), "arch"),
    ({"embed_dim": 32}, "arch"), ("hf-hub:org/repo", "hf-hub:org/repo"), ("ViT-B-32", "arch"),
    (tiny_config(**{"text_cfg.hf_model_name": "bert-base-uncased"}), "arch"),
    ({"embed_dim": 32, "vision_cfg": {}, "text_cfg": {}}, "arch")])
def test_a_bad_guide_arch_is_named(tmp_path, tiny_checkpoint, arch, needle):
    bad = rewrite(tiny_checkpoint, tmp_path / "bad.safetensors", setter("arch", arch))
    with pytest.raises(ClipagError, match="arch") as caught:
        load_clipag_file(bad)
    assert str(bad) in str(caught.value) and needle in str(caught.value)
    out = tmp_path / "out"
    one_error_line(run("generate", "a red circle", "-c", bad, "-d", out, *FAST), str(bad), needle)
    assert not out.exists() or not list(out.iterdir())


def test_a_guide_with_a_dict_arch_still_loads(tmp_path, tiny_checkpoint):
    good = rewrite(tiny_checkpoint, tmp_path / "good.safetensors", setter("arch", tiny_config()))
    assert load_clipag_file(good).image_size == 32


def test_a_bad_guide_name_is_named(tmp_path, tiny_checkpoint):
    bad = rewrite(tiny_checkpoint, tmp_path / "bad.safetensors", setter("name", 5))
    with pytest.raises(ClipagError, match="name"):
        load_clipag_file(bad)


# --- Gaussian-mixture starts ------------------------------------------------------------------

def mixture_tensors(path, **changes):
    tensors = load_file(str(path))
    for key, value in changes.items():
        tensors[key] = value(tensors[key]).contiguous()
    return tensors


@pytest.mark.parametrize("change, tensors, needle", [
    (setter("resolution", DROP), {}, "resolution"),
    (setter("resolution", "abc"), {}, "resolution"),
    (setter("resolution", 2 ** 20), {}, "resolution"),
    (setter("resolution", 0), {}, "resolution"),
    (setter("resolution", None), {}, "resolution"),
    (setter("resolution", 8), {}, "shapes"),
    (lambda m: None, {"factors": lambda t: t[..., None]}, "shapes"),
    (lambda m: None, {"factors": lambda t: t[:, :5]}, "shapes"),
    (lambda m: None, {"weights": lambda t: t * float("nan")}, "weights"),
    (lambda m: None, {"weights": lambda t: t * 0}, "weights"),
    (lambda m: None, {"weights": lambda t: -t}, "weights"),
    (lambda m: None, {"means": lambda t: t + float("inf")}, "means"),
    (lambda m: None, {"diag": lambda t: -t - 1}, "diag")])
def test_a_bad_mixture_field_is_named(tmp_path, mixture, tiny_checkpoint, change, tensors,
                                      needle):
    bad = rewrite(mixture, tmp_path / "bad.safetensors", change,
                  mixture_tensors(mixture, **tensors))
    with pytest.raises(ClipagError, match=needle):
        GaussianMixture.load(bad)
    out = tmp_path / "out"
    one_error_line(run("generate", "a red circle", "-c", tiny_checkpoint, "--init", bad,
                       "-d", out, *FAST), str(bad), needle)


# --- absurd header lengths --------------------------------------------------------------------

def command_reading(kind: str, bad, out, guide) -> list:
    """The command that reads a file of this kind: a flow, a guide or a mixture."""
    return {"flow": ["crossflow", "sample", "a red circle", "--flow", bad, "-d", out,
                     "--device", "cpu"],
            "guide": ["generate", "a red circle", "-c", bad, "-d", out, *FAST],
            "mixture": ["generate", "a red circle", "-c", guide, "--init", bad, "-d", out,
                        *FAST]}[kind]


@pytest.mark.parametrize("claim", [64 * 2 ** 30, 2 ** 64 - 1, 99_000_000, 10 ** 9])
@pytest.mark.parametrize("kind", ["flow", "guide", "mixture"])
def test_an_absurd_header_length_is_refused_before_reading(tmp_path, flow, tiny_checkpoint,
                                                           mixture, claim, kind):
    src = {"flow": flow, "guide": tiny_checkpoint, "mixture": mixture}[kind]
    bad = tmp_path / "bad.safetensors"
    data = src.read_bytes()
    bad.write_bytes(claim.to_bytes(8, "little") + data[8:])
    assert header_problem(bad) is not None
    assert read_meta(bad) is None
    out = tmp_path / "out"
    args = command_reading(kind, bad, out, tiny_checkpoint)
    one_error_line(run(*args), str(bad), "header")


# --- any JSON value in any field: a ClipagError or a load, nothing else ----------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 40) | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8)
    | st.sampled_from(["latent", "projection", "unet", "transformer", "pooled", "tokens",
                       "mean", "none", "clipag-tiny"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                   max_size=3),
    max_leaves=6)
PROPERTY = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def loads_or_refuses(load):
    try:
        load()
    except ClipagError:
        pass


@PROPERTY
@given(field=st.sampled_from([f.name for f in fields(FlowConfig)] + ["flow", "text_model",
                                                                    "text_probe", "kind"]),
       value=JSON)
def test_any_value_in_a_crossflow_field_loads_or_is_refused(tmp_path, flow, field, value):
    within = None if field in ("flow", "text_model", "text_probe", "kind") else "flow"
    bad = rewrite(flow, tmp_path / "any.safetensors", setter(field, value, within))
    loads_or_refuses(lambda: load_flow(bad, torch.device("cpu")))


@PROPERTY
@given(field=st.sampled_from(["arch", "name", "embed_dim", "vision_cfg", "text_cfg",
                              *(f"vision_cfg.{k}" for k in ("image_size", "layers", "width",
                                                            "patch_size", "head_width",
                                                            "mlp_ratio")),
                              *(f"text_cfg.{k}" for k in ("context_length", "vocab_size",
                                                          "width", "heads", "layers"))]),
       value=JSON)
def test_any_value_in_a_guide_field_loads_or_is_refused(tmp_path, tiny_checkpoint, field, value):
    if field in ("arch", "name"):
        change = setter(field, value)
    else:
        change = setter("arch", tiny_config(**{field: value}))
    bad = rewrite(tiny_checkpoint, tmp_path / "any.safetensors", change)
    loads_or_refuses(lambda: load_clipag_file(bad))


@PROPERTY
@given(field=st.sampled_from(["resolution", "kind"]), value=JSON)
def test_any_value_in_a_mixture_field_loads_or_is_refused(tmp_path, mixture, field, value):
    bad = rewrite(mixture, tmp_path / "any.safetensors", setter(field, value))
    loads_or_refuses(lambda: GaussianMixture.load(bad))


def raw_file(path, header: dict, data: bytes = b"") -> None:
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)


@pytest.mark.parametrize("document", ["[1]", "5", "null", '"crossflow"', "{", "[]"])
@pytest.mark.parametrize("kind", ["flow", "guide", "mixture"])
def test_clipag_metadata_that_is_not_an_object_is_refused(tmp_path, tiny_checkpoint, document,
                                                          kind):
    bad = tmp_path / "bad.safetensors"
    raw_file(bad, {"__metadata__": {META_KEY: document},
                   "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)
    with pytest.raises(ClipagError, match="clipag metadata"):
        read_meta(bad)
    out = tmp_path / "out"
    args = command_reading(kind, bad, out, tiny_checkpoint)
    one_error_line(run(*args), str(bad), "clipag metadata")


@pytest.mark.parametrize("extra", [[], 5, "x", None, {META_KEY: 5}, {META_KEY: None}])
def test_an_odd_metadata_section_is_not_clipag_metadata(tmp_path, extra):
    odd = tmp_path / "odd.safetensors"
    raw_file(odd, {"__metadata__": extra,
                   "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)
    if isinstance(extra, dict) and extra[META_KEY] is not None:
        with pytest.raises(ClipagError, match="clipag metadata"):
            read_meta(odd)
    else:
        assert read_meta(odd) is None
    with pytest.raises(ClipagError, match=str(odd)):
        load_flow(odd, torch.device("cpu"))


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from([f.name for f in fields(FlowConfig)] + ["text_model",
                                                                    "text_probe"]),
       value=JSON)
def test_any_value_in_a_crossflow_field_samples_or_is_one_error_line(tmp_path, flow, field,
                                                                     value):
    within = None if field in ("text_model", "text_probe") else "flow"
    bad = rewrite(flow, tmp_path / "any.safetensors", setter(field, value, within))
    result = run("crossflow", "sample", "a red circle", "--flow", bad, "-d", tmp_path / "out",
                 "--device", "cpu", "--steps", "1", "--overwrite")
    if result.exit_code != 0:
        one_error_line(result)
