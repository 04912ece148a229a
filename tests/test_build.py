"""Model building: every encoder x LM pair builds, saves, reloads without VerboVision, and generates."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from verbovision.config.model import ConnectorSpec, LanguageSpec, ModelSpec, VisionSpec
from verbovision.data.image_tokens import ImageTokens
from verbovision.errors import ConfigError
from verbovision.files import PARTIAL
from verbovision.model.build import build_vlm, save_model
from verbovision.model.store import check_model_out

from .helpers import BLOCK_VERBOVISION, TINY_SCRATCH

# Run in a fresh interpreter where importing verbovision is impossible, so the checkpoint must stand on its own.
LOAD_WITHOUT_VERBOVISION = BLOCK_VERBOVISION + textwrap.dedent(
    """
    import json
    try:
        import verbovision
        raise SystemExit("verbovision importable")
    except ImportError:
        pass
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor
    model = AutoModelForImageTextToText.from_pretrained(sys.argv[1]).eval()
    processor = AutoProcessor.from_pretrained(sys.argv[1])
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[Image.new("RGB", (40, 30), "red")], text=[text], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    print(json.dumps({"class": type(model).__name__, "logits": logits[0, -1, :5].tolist(),
                      "new_tokens": out.shape[1] - inputs["input_ids"].shape[1]}))
    """
)

PAIRS = [(v, lm, "mlp") for v in ("siglip", "clip", "vit") for lm in ("qwen2", "llama", "gpt2")]
PAIRS += [("siglip", "qwen2", "linear"), ("siglip", "llama", "pixel_shuffle"), ("siglip", "gpt2", "pixel_shuffle")]


def _spec(tiny_vision, tiny_lm, vision, lm, connector):
    act = "silu" if connector == "pixel_shuffle" else "gelu"
    return ModelSpec(
        vision=VisionSpec(name=tiny_vision[vision]),
        language=LanguageSpec(name=tiny_lm[lm]),
        connector=ConnectorSpec(type=connector, act=act, factor=2),
        image_token="<|image_pad|>" if lm == "qwen2" else "<image>",
    )


def test_a_save_killed_midway_leaves_no_model_and_the_next_one_fills_the_same_folder(tmp_path, tiny_vision,
                                                                                     tiny_lm, monkeypatch):
    """`verbo build/merge --out DIR` killed while saving left DIR with config.json and weights but no tokenizer: a
    model to every later command, which failed to load it. An existing folder (a mount point, the working directory)
    is written into, not swapped."""
    import verbovision.model.build as build

    model, processor = build_vlm(_spec(tiny_vision, tiny_lm, "siglip", "qwen2", "mlp"))
    out = tmp_path / "out"
    out.mkdir()
    inode = out.stat().st_ino

    def killed(*_):
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(build, "save_processor", killed)
        with pytest.raises(KeyboardInterrupt):
            save_model(model, processor, out)
    assert list(out.iterdir()) == []
    save_model(model, processor, out)
    assert out.stat().st_ino == inode and (out / "config.json").exists() and not (out / PARTIAL).exists()
    check_model_out(out, {})


def _probe(processor):
    text = processor.image_token + "\nDescribe."
    return processor(images=[Image.new("RGB", (40, 30), "red")], text=[text], return_tensors="pt")


@pytest.mark.parametrize("vision,lm,connector", PAIRS)
def test_build_save_reload_generate(tmp_path, tiny_vision, tiny_lm, vision, lm, connector):
    model, processor = build_vlm(_spec(tiny_vision, tiny_lm, vision, lm, connector))
    model.eval()
    save_model(model, processor, tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    inputs = _probe(processor)
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == len(ImageTokens(processor).fixed)
    with torch.no_grad():
        expected = model(**inputs).logits[0, -1, :5]
    result = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_VERBOVISION, str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["class"] == type(model).__name__
    assert loaded["new_tokens"] >= 1
    # The same prompt rendered through the chat template differs from our probe, so compare a model-level forward.
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(**_probe(AutoProcessor.from_pretrained(tmp_path))).logits[0, -1, :5], expected,
                              atol=1e-5)


def test_pretrained_weights_are_copied(tiny_vision, tiny_lm):
    from transformers import AutoModel, AutoModelForCausalLM

    model, _ = build_vlm(_spec(tiny_vision, tiny_lm, "clip", "llama", "mlp"))
    vision = AutoModel.from_pretrained(tiny_vision["clip"])
    lm = AutoModelForCausalLM.from_pretrained(tiny_lm["llama"])
    for name, value in vision.state_dict().items():
        assert torch.equal(model.model.vision_tower.state_dict()[name], value), name
    # embeddings grew by the added image token; the original rows are unchanged
    rows = lm.get_input_embeddings().weight.shape[0]
    assert torch.equal(model.get_input_embeddings().weight[:rows], lm.get_input_embeddings().weight)


def test_pixel_shuffle_compresses_tokens(tiny_vision, tiny_lm):
    _, plain = build_vlm(_spec(tiny_vision, tiny_lm, "siglip", "qwen2", "mlp"))
    _, shuffled = build_vlm(_spec(tiny_vision, tiny_lm, "siglip", "qwen2", "pixel_shuffle"))
    assert len(ImageTokens(plain).fixed) == 16 and len(ImageTokens(shuffled).fixed) == 4


def test_linear_connector_starts_as_one_linear_map(tiny_vision, tiny_lm):
    model, _ = build_vlm(_spec(tiny_vision, tiny_lm, "siglip", "qwen2", "linear"))
    projector = model.model.multi_modal_projector
    x = torch.randn(3, projector.linear_1.in_features)
    assert torch.allclose(projector(x), projector.linear_1(x), atol=1e-6)


@pytest.mark.parametrize("vision,connector,act,message", [
    ("clip", "pixel_shuffle", "silu", "CLS token"),
    ("siglip", "pixel_shuffle", "gelu", "connector.act: silu"),
    ("siglip", "conv", "gelu", "connector.type"),
])
def test_unmappable_connectors_are_refused_at_build_time(tiny_vision, tiny_lm, vision, connector, act, message):
    spec = _spec(tiny_vision, tiny_lm, vision, "qwen2", "mlp")
    spec.connector = ConnectorSpec(type=connector, act=act)
    with pytest.raises(ConfigError, match=message):
        build_vlm(spec)


@pytest.mark.parametrize("arch", ["siglip", "clip", "vit"])
def test_from_scratch_sizes(arch, tiny_tokenizer_texts):
    from verbovision.data.tokenizer import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(tiny_tokenizer_texts, "<image>", vocab_size=280)
    spec = ModelSpec(vision=VisionSpec(arch=arch, hidden_size=32, layers=1, heads=2, image_size=32),
                     language=LanguageSpec(arch="llama", hidden_size=32, layers=1, heads=2))
    model, processor = build_vlm(spec, tokenizer)
    with torch.no_grad():
        out = model.generate(**_probe(processor), max_new_tokens=2, do_sample=False)
    assert out.shape[0] == 1


@pytest.mark.parametrize("version, said", [
    ("5.17.0", r"loads image processors only where torchvision is installed.*>=5\.18"),
    ("5.25.0", r"its processor needs torchvision in transformers 5\.25\.0: pip install the torchvision release"),
])
def test_missing_torchvision_is_one_line(tmp_path, tiny_vision, monkeypatch, version, said):
    """transformers 5.17 (our floor) cannot build image processors without torchvision, later ones some processor
    classes (Mistral3's): the user is told what to install, not shown transformers' notice."""
    import transformers

    from verbovision.errors import VerboError
    from verbovision.model.store import load_processor

    def needs_torchvision(*args, **kwargs):
        raise ImportError("\nAutoImageProcessor requires the Torchvision library but it was not found in your "
                          "environment. Check out the instructions on the\ninstallation page")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", needs_torchvision)
    monkeypatch.setattr(transformers.AutoImageProcessor, "from_pretrained", needs_torchvision)
    monkeypatch.setattr(transformers, "__version__", version)
    with pytest.raises(VerboError, match=said):
        load_processor(tiny_vision["siglip"])


def test_verbovision_json_records_only_what_is_true_of_the_model(tmp_path, tiny_vision, tiny_lm, lora_run, capsys):
    from verbovision.cli import main


    # Pretrained components: their names, not the from-scratch sizes the specs default to.
    assert main(["build", "--vision", tiny_vision["siglip"], "--language", tiny_lm["qwen2"], "--out",
                 str(tmp_path / "built")]) == 0
    spec = json.loads((tmp_path / "built/verbovision.json").read_text())["model_spec"]
    assert spec == {"vision": {"name": tiny_vision["siglip"], "feature_layer": -1},
                    "language": {"name": tiny_lm["qwen2"]}, "connector": {"type": "mlp", "act": "gelu"},
                    "image_token": "<image>"}
    # From scratch (a run's init/): the sizes it was built with; the connector without pixel shuffle's fields.
    spec = json.loads((lora_run / "init/verbovision.json").read_text())["model_spec"]
    assert {k: spec["vision"][k] for k in TINY_SCRATCH["vision"]} == TINY_SCRATCH["vision"]
    assert {k: spec["language"][k] for k in TINY_SCRATCH["language"]} == TINY_SCRATCH["language"]
    assert spec["connector"] == TINY_SCRATCH["connector"] and "quantize" not in spec and "from" not in spec


def test_build_refuses_connector_flags_the_connector_does_not_use(tmp_path, tiny_vision, tiny_lm, capsys):
    from verbovision.cli import main

    base = ["build", "--vision", tiny_vision["siglip"], "--language", tiny_lm["qwen2"], "--out", str(tmp_path / "m")]
    for flags, unused in ((["--connector", "linear", "--act", "silu"], "--act"),
                          (["--connector", "mlp", "--factor", "4"], "--factor")):
        assert main([*base, *flags]) == 2
        connector = flags[1]
        assert capsys.readouterr().err == f"verbo: error: {unused}: the {connector} connector has no such setting\n"
    assert not (tmp_path / "m").exists()
    assert main([*base, "--connector", "pixel_shuffle", "--factor", "2"]) == 0  # SiLU, its only activation
    spec = json.loads((tmp_path / "m/verbovision.json").read_text())["model_spec"]
    assert spec["connector"]["act"] == "silu" and spec["connector"]["factor"] == 2


@pytest.mark.parametrize("flags, message", [
    (["--connector", "pixel_shuffle", "--factor", "0"],
     "connector.factor 0: give an integer >= 1 (factor x factor patches become one image token)"),
    (["--feature-layer", "5"], "vision.feature_layer 5: the siglip_vision_model encoder has 2 layers; give -1 (its "
                               "last) down to -3 (its embeddings), or 1..2"),
    (["--feature-layer", "0"], "vision.feature_layer 0: the siglip_vision_model encoder has 2 layers"),
    (["--image-token", ""], "image_token is empty; give the text token that stands for an image, e.g. <image>"),
    (["--image-token", "the"], "image_token 'the' would stand for an image wherever a text has it"),
    (["--language", "{vision}"], "language model {vision}: a siglip_vision_model model, not a causal LM"),
    (["--vision", "{lm}"], "vision encoder {lm}: a qwen2 model, not a vision encoder"),
])
def test_build_flags_no_model_can_have_are_one_line_errors(tmp_path, tiny_vision, tiny_lm, capsys, flags, message):
    """Each was a traceback (ZeroDivisionError, IndexError, a tokenizer's or config's error) before."""
    from verbovision.cli import main

    names = {"vision": tiny_vision["siglip"], "lm": tiny_lm["qwen2"]}
    flags = [flag.format(**names) for flag in flags]
    given = dict(zip(flags[::2], flags[1::2]))
    args = {"--vision": tiny_vision["siglip"], "--language": tiny_lm["qwen2"], **given, "--out": str(tmp_path / "m")}
    assert main(["build", *[item for pair in args.items() for item in pair]]) == 2
    assert capsys.readouterr().err.startswith(f"verbo: error: {message.format(**names)}")
    assert not (tmp_path / "m").exists()


def test_every_feature_layer_the_encoder_has_builds(tmp_path, tiny_vision, tiny_lm):
    from verbovision.cli import main

    for layer in ("-3", "2"):  # the embeddings, the last layer counted from the first
        out = tmp_path / layer
        assert main(["build", "--vision", tiny_vision["siglip"], "--language", tiny_lm["qwen2"], "--feature-layer",
                     layer, "--out", str(out)]) == 0
        assert json.loads((out / "config.json").read_text())["vision_feature_layer"] == int(layer)
