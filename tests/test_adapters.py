"""LoRA through PEFT: per-architecture targets, and adapter folders that load with one call each
(AutoModelForImageClassification, PeftModel, pipeline) with the trained logits and the real labels."""

import json
import os
import warnings

import pytest
import torch
from packaging import version
from PIL import Image

from hf_transfer.config import arguments_from_dict
from hf_transfer.errors import TransferConfigError
from hf_transfer.models.adapters import (
    ADAPTER_INFO,
    NotPortableWarning,
    default_target_modules,
    load_adapter_model,
    resolve_target_modules,
)
from hf_transfer.models.backbones import load_backbone
from hf_transfer.models.export import export_model
from hf_transfer.training.run import run_transfer

from conftest import tiny_args

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def make_base(folder, labels=DIGITS) -> str:
    torch.manual_seed(0)
    export_model(load_backbone("test_resnet", labels, image_size=32, crop_pct=1.0), str(folder))
    return str(folder)


def lora_args(backbone, out, **overrides) -> dict:
    return tiny_args(
        out,
        **{
            "mode": "task",
            "method": "lora",
            "backbone": backbone,
            "output_dir": str(out),
            "max_steps": 3,
            "max_train_samples": 48,
            "max_eval_samples": 16,
            "learning_rate": 0.1,
            "lora_r": 4,
            **overrides,
        },
    )


def reference(out):
    """(an image, the trained model's probabilities on it) as written by the run."""
    ref = json.load(open(os.path.join(out, "reference_predictions.json")))[0]
    image = Image.open(os.path.join(out, ref["file"])).convert("RGB")
    return image, torch.tensor([ref["scores"][name] for name in DIGITS])


def pixel_values(base, image):
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(base)(image, return_tensors="pt")["pixel_values"]


def test_default_targets_per_architecture():
    from transformers import ConvNextConfig, ConvNextForImageClassification, ViTConfig, ViTForImageClassification

    def targets(model, head):
        return default_target_modules(model, head)

    vit = load_backbone("test_vit", ["a", "b"])
    names, rule = targets(vit.model, vit.head_name)
    assert {n.rsplit(".", 1)[-1] for n in names} == {"qkv", "proj"} and all(".attn." in n for n in names)
    cnx = load_backbone("test_convnext", ["a", "b"])
    names, rule = targets(cnx.model, cnx.head_name)
    assert names and {n.rsplit(".", 1)[-1] for n in names} <= {"fc1", "fc2"} and "ConvNeXt" in rule
    res = load_backbone("test_resnet", ["a", "b"])
    names, _ = targets(res.model, res.head_name)
    assert names and all(isinstance(res.model.get_submodule(n), torch.nn.Conv2d) for n in names)
    hf_vit = ViTForImageClassification(
        ViTConfig(
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=16,
            image_size=16,
            patch_size=8,
            num_labels=2,
        )
    )
    names, _ = targets(hf_vit, "classifier")
    assert {n.rsplit(".", 1)[-1] for n in names} == {"q_proj", "v_proj"}
    hf_cnx = ConvNextForImageClassification(
        ConvNextConfig(num_stages=2, depths=[1, 1], hidden_sizes=[8, 16], num_labels=2)
    )
    names, _ = targets(hf_cnx, "classifier")
    assert {n.rsplit(".", 1)[-1] for n in names} == {"pwconv1", "pwconv2"}
    # overridable; a name that matches nothing is an error; the head is never a target
    names, rule = resolve_target_modules(vit.model, vit.head_name, "qkv")
    assert all(n.endswith(".qkv") for n in names) and rule == "user: qkv"
    assert resolve_target_modules(hf_vit, "classifier", "re:.*layers\\.0\\..*q_proj")[0] == [
        "vit.layers.0.attention.q_proj"
    ]
    with pytest.raises(TransferConfigError, match="matches no Linear/Conv"):
        resolve_target_modules(vit.model, vit.head_name, "query_key")
    with pytest.raises(TransferConfigError, match="matches no Linear/Conv"):
        resolve_target_modules(res.model, res.head_name, "fc")


def test_lora_adapter_round_trip_three_loaders_and_handler(tmp_path):
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForImageClassification, pipeline

    base = make_base(tmp_path / "base")
    out = str(tmp_path / "adapter")
    with pytest.warns(NotPortableWarning, match="local folder"):
        results = run_transfer(*arguments_from_dict(lora_args(base, out, publish="adapter", k_shot=3)))
    info = json.load(open(os.path.join(out, ADAPTER_INFO)))
    config = json.load(open(os.path.join(out, "adapter_config.json")))
    assert config["base_model_name_or_path"] == os.path.abspath(base)  # absolute, never relative
    assert info["self_sufficient"] is True and info["label_names"] == DIGITS and not info["portable"]
    assert info["stock_loading"]["needs_label_kwargs"] is False  # one call, no kwargs
    stock = stock_processor(out, info)(Image.new("RGB", (40, 30)), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(stock, pixel_values(base, Image.new("RGB", (40, 30))))
    assert results["adapter"]["adapter_bytes"] == os.path.getsize(os.path.join(out, "adapter_model.safetensors"))
    assert results["strategies"]["k_shot"] == 3 and results["trainable_parameters"] < results["total_parameters"]
    assert not os.path.exists(os.path.join(out, "config.json"))  # it would make loaders look for full weights here
    with safe_open(os.path.join(out, "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any("lora_A" in k for k in keys) and any(k.endswith("timm_model.fc.weight") for k in keys)  # head saved

    image, probs = reference(out)
    x = pixel_values(base, image)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auto = AutoModelForImageClassification.from_pretrained(out).eval()
        peft = PeftModel.from_pretrained(AutoModelForImageClassification.from_pretrained(base), out).eval()
        pipe = pipeline("image-classification", model=out, top_k=10)
    with torch.no_grad():
        logits = {name: m(pixel_values=x).logits[0] for name, m in [("auto", auto), ("peft", peft)]}
    for name, value in logits.items():
        torch.testing.assert_close(value.softmax(-1), probs, atol=1e-5, rtol=1e-4, msg=name)
    torch.testing.assert_close(logits["auto"], logits["peft"])
    assert auto.config.id2label[3] == "three"
    scores = {r["label"]: r["score"] for r in pipe(image)}
    assert set(scores) == set(DIGITS)
    torch.testing.assert_close(torch.tensor([scores[n] for n in DIGITS]), probs, atol=1e-5, rtol=1e-4)
    # the Endpoints custom-handler convention: handler.py + requirements.txt, sorted [{label, score}]
    assert open(os.path.join(out, "requirements.txt")).read().split() == ["peft>=0.15.1", "timm"]
    answer = endpoint_handler(out)({"inputs": image, "parameters": {"top_k": 10}})
    assert [r["score"] for r in answer] == sorted((r["score"] for r in answer), reverse=True)
    torch.testing.assert_close(torch.tensor([{r["label"]: r["score"] for r in answer}[n] for n in DIGITS]), probs)
    from hf_transfer.hub.round_trip import RoundTripError, check_round_trip, published_forms

    assert published_forms(out) == ["adapter", "endpoint handler"]
    check_round_trip(out)
    handler = os.path.join(out, "handler.py")  # a handler that answers other scores is caught before any upload
    source = open(handler).read()
    open(handler, "w").write(source.replace("softmax(-1)[0]", "softmax(-1)[0] * 0.5"))
    with pytest.raises(RoundTripError, match="handler.py"):
        check_round_trip(out)


def endpoint_handler(folder):
    """``handler.py`` of ``folder`` imported as the Endpoints toolkit does, then ``EndpointHandler(folder)``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("handler", os.path.join(folder, "handler.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EndpointHandler(folder)


@pytest.mark.parametrize("publish", ["both", "merged"])
def test_default_publish_is_the_merged_model_at_the_root_and_the_adapter_in_a_subfolder(tmp_path, publish):
    """--publish both (the default): the root is exactly what export_model writes for a full model (so every
    stock loader and the Endpoints' default handler serve it with no arguments) and adapter/ holds the adapter;
    --publish merged: the root only. Both reproduce the trained model; the round-trip check checks each form."""
    from transformers import AutoModelForImageClassification, pipeline

    from hf_transfer.hub.round_trip import RoundTripError, check_round_trip, published_forms
    from hf_transfer.models.adapters import ADAPTER_SUBDIR

    base = make_base(tmp_path / "base", labels=["x", "y", "z"])  # other labels: the usual Hub case
    out = str(tmp_path / "run")
    overrides = {} if publish == "both" else {"publish": publish}
    with pytest.warns(NotPortableWarning):
        results = run_transfer(*arguments_from_dict(lora_args(base, out, max_steps=2, image_size=28, **overrides)))
    root = set(os.listdir(out))
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "results.json"} <= root
    assert (ADAPTER_SUBDIR in root) == (publish == "both")
    assert not os.path.exists(os.path.join(out, "adapter_config.json"))
    assert not os.path.exists(os.path.join(out, "handler.py"))
    assert results["adapter"]["publish"] == publish
    image, probs = reference(out)
    pipe = pipeline("image-classification", model=out, top_k=10)  # no arguments
    scores = {r["label"]: r["score"] for r in pipe(image)}
    torch.testing.assert_close(torch.tensor([scores[n] for n in DIGITS]), probs, atol=1e-5, rtol=1e-4)
    assert AutoModelForImageClassification.from_pretrained(out).config.id2label[9] == "nine"
    if publish == "both":
        sub = os.path.join(out, ADAPTER_SUBDIR)
        assert sorted(os.listdir(sub)) == [
            "adapter_config.json",
            "adapter_model.safetensors",
            ADAPTER_INFO,
            "preprocessor_config.json",
        ]
        info = json.load(open(os.path.join(sub, ADAPTER_INFO)))
        assert info["subfolder"] == ADAPTER_SUBDIR and info["stock_loading"]["needs_label_kwargs"] is True
        model = load_adapter_model(out, subfolder=ADAPTER_SUBDIR).eval()
        x = stock_processor(sub, info)(image, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            torch.testing.assert_close(model(pixel_values=x).logits[0].softmax(-1), probs, atol=1e-5, rtol=1e-4)
        assert published_forms(out) == ["model", "adapter/"]
    else:
        assert not os.path.exists(os.path.join(out, ADAPTER_SUBDIR)) and published_forms(out) == ["model"]
    check_round_trip(out)
    if publish == "both":  # the check covers the subfolder too: a broken adapter/ is caught before any upload
        os.remove(os.path.join(out, ADAPTER_SUBDIR, "adapter_model.safetensors"))
        with pytest.raises(RoundTripError, match="^adapter/: could not load"):
            check_round_trip(out)


def test_lora_hub_base_records_hub_id(tmp_path, hub_server):
    from huggingface_hub import HfApi
    from transformers import AutoModelForImageClassification, pipeline

    base = make_base(tmp_path / "base")
    HfApi().create_repo("user/digits-base")
    HfApi().upload_folder(folder_path=base, repo_id="user/digits-base")
    out = str(tmp_path / "adapter")
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotPortableWarning)
        run_transfer(*arguments_from_dict(lora_args("user/digits-base", out, max_steps=2, publish="adapter")))
    assert json.load(open(os.path.join(out, "adapter_config.json")))["base_model_name_or_path"] == "user/digits-base"
    image, probs = reference(out)
    model = AutoModelForImageClassification.from_pretrained(out).eval()
    with torch.no_grad():
        got = model(pixel_values=pixel_values("user/digits-base", image)).logits[0].softmax(-1)
    torch.testing.assert_close(got, probs, atol=1e-5, rtol=1e-4)
    top = pipeline("image-classification", model=out)(image)[0]
    assert top["label"] == DIGITS[int(probs.argmax())]


#: runs every python block of a pushed card's usage section in a fresh interpreter (empty cache) and
#: prints, per block, what each loader it built gives on the card's first example image
CARD_CODE_CHECK = """
import json, re, sys
import torch
from huggingface_hub import hf_hub_download
from PIL import Image

repo = sys.argv[1]
card = open(hf_hub_download(repo, "README.md")).read()
usage = card.split("<!-- hf-transfer:begin usage -->")[1].split("<!-- hf-transfer:end usage -->")[0]
blocks = re.findall(r"```python\\n(.*?)```", usage, re.S)
ref = json.load(open(hf_hub_download(repo, "reference_predictions.json")))[0]
image = Image.open(hf_hub_download(repo, ref["file"])).convert("RGB")
names = list(ref["scores"])
expected = torch.tensor([ref["scores"][n] for n in names])
report = []
for i, code in enumerate(blocks):
    scope = {}
    exec(compile(code, f"card block {i}", "exec"), scope)
    checks = []
    if "classifier" in scope:
        got = {d["label"]: d["score"] for d in scope["classifier"](image, top_k=len(names))}
        worst = max(abs(got.get(n, 9) - ref["scores"][n]) for n in names)
        checks.append(("pipeline", sorted(got) == sorted(names), worst))
    model = scope.get("model")
    if model is not None and "processor" in scope:
        with torch.no_grad():
            p = model.eval()(**scope["processor"](image, return_tensors="pt")).logits[0].softmax(-1)
        got_names = [model.config.id2label[j] for j in range(len(names))]
        checks.append((type(model).__name__, got_names == names, float((p - expected).abs().max())))
    if model is not None and "transform" in scope:  # timm
        with torch.no_grad():
            p = model.eval()(scope["transform"](image).unsqueeze(0)).softmax(-1)[0]
        got_names = list(model.pretrained_cfg["label_names"])
        checks.append(("timm", got_names == names, float((p - expected).abs().max())))
    report.append({"block": i, "peft": "PeftModel.from_pretrained" in code, "subfolder": "subfolder=" in code,
                   "checks": checks})
print("REPORT" + json.dumps(report))
"""


def run_card_code(run_with_hub, repo: str) -> list[dict]:
    proc = run_with_hub(CARD_CODE_CHECK, args=[repo], timeout=300)
    return json.loads(proc.stdout.split("REPORT")[-1])


@pytest.mark.parametrize("publish", ["both", "merged", "adapter"])
def test_pushed_lora_card_code_runs_for_every_publish_form(tmp_path, hub_server, run_with_hub, publish):
    """The usual Hub case end to end: a Hub base whose head has other labels (and another input size), the
    run pushed by --push_to_hub with each --publish form; in a fresh interpreter with an empty cache, every
    python block of the pushed card runs, and each loader it builds gives the trained probabilities and the
    real class names. The repo holds what the form says; a form that pipeline() cannot load with no
    arguments says so in the card."""
    from huggingface_hub import HfApi, ModelCard

    base = make_base(tmp_path / "base", labels=["x", "y", "z"])
    HfApi().create_repo("user/xyz-base")
    HfApi().upload_folder(folder_path=base, repo_id="user/xyz-base")
    out = str(tmp_path / "run")
    repo = f"user/digits-lora-{publish}"
    run_transfer(
        *arguments_from_dict(
            lora_args(
                "user/xyz-base", out, max_steps=2, image_size=28, push_to_hub=True, hub_model_id=repo, publish=publish
            )
        )
    )
    files = hub_server.files(repo)
    card = files["README.md"].decode()
    meta = ModelCard(card).data
    assert meta.base_model == "user/xyz-base" and "lora" in meta.tags
    usage = card.split("hf-transfer:begin usage")[1]
    if publish == "adapter":
        assert {"adapter_model.safetensors", "handler.py", "requirements.txt"} <= set(files)
        assert "config.json" not in files and meta.library_name == "peft" and meta.base_model_relation == "adapter"
        assert "**does not work**" in usage and "handler.py" in usage  # documented, not silently broken
    else:
        assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= set(files)
        assert "adapter_config.json" not in files and "handler.py" not in files
        assert meta.library_name == "transformers" and meta.base_model_relation == "finetune"
        assert ("adapter/adapter_model.safetensors" in files) == (publish == "both")
        assert "default handler serves the model at the root" in usage
    report = run_card_code(run_with_hub, repo)
    checks = [c for block in report for c in block["checks"]]
    assert checks and all(names_ok and worst < 1e-4 for _, names_ok, worst in checks), report
    kinds = {kind for kind, _, _ in checks}
    if publish == "adapter":  # stock loaders (pipeline, AutoModel, PeftModel) + hf-transfer's one call
        assert len(report) == 2 and {"pipeline", "PeftModel"} <= kinds, report
    else:  # pipeline, AutoModel (+ timm) on the root; PeftModel with subfolder= for both
        assert {"pipeline", "TimmWrapperForImageClassification", "timm"} <= kinds, report
        assert any(b["peft"] and b["subfolder"] for b in report) == (publish == "both"), report


def stock_processor(folder, info):
    """The adapter's own preprocessing, read back by the stock class its info names."""
    import transformers

    proc = info["stock_loading"]["processor"]
    return getattr(transformers, proc["class"]).from_pretrained(folder, **proc["kwargs"])


def test_base_with_other_labels_and_preprocessing_loads_with_recorded_kwargs(tmp_path, caplog):
    """The usual Hub case: the base's head has other labels (and here another input size). Stock loaders
    read the base's config, so they need the recorded label kwargs; with them all three loaders, and the
    adapter's own image processor, reproduce the trained model exactly, with the real class names."""
    from peft import PeftModel
    from transformers import AutoModelForImageClassification, pipeline

    base = make_base(tmp_path / "base", labels=["x", "y", "z"])
    out = str(tmp_path / "adapter")
    with pytest.warns(NotPortableWarning):
        run_transfer(*arguments_from_dict(lora_args(base, out, max_steps=2, image_size=28, publish="adapter")))
    info = json.load(open(os.path.join(out, ADAPTER_INFO)))
    assert info["self_sufficient"] is False and "labels" in info["reasons"][0] and "preprocessing" in info["reasons"][1]
    assert "stock_loading" in caplog.text
    assert info["stock_loading"]["needs_label_kwargs"] is True
    labels = info["label_names"]  # as the model card's code does it, with stock code only
    kwargs = dict(
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
        ignore_mismatched_sizes=True,
    )
    image, probs = reference(out)
    processor = stock_processor(out, info)
    x = processor(image, return_tensors="pt")["pixel_values"]
    assert x.shape[-1] == 28 and pixel_values(base, image).shape[-1] == 32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = {
            "auto": AutoModelForImageClassification.from_pretrained(out, **kwargs),
            "peft": PeftModel.from_pretrained(AutoModelForImageClassification.from_pretrained(base, **kwargs), out),
            "helper": load_adapter_model(out),
        }
        pipe = pipeline("image-classification", model=out, image_processor=processor, model_kwargs=kwargs, top_k=10)
    for name, model in models.items():
        with torch.no_grad():
            got = model.eval()(pixel_values=x).logits[0].softmax(-1)
        torch.testing.assert_close(got, probs, atol=1e-5, rtol=1e-4, msg=name)
        assert model.config.id2label[9] == "nine", name
    scores = {r["label"]: r["score"] for r in pipe(image)}
    torch.testing.assert_close(torch.tensor([scores[n] for n in DIGITS]), probs, atol=1e-5, rtol=1e-4)
    # without the kwargs the stock loader cannot restore the head (why they are recorded)
    with pytest.raises(RuntimeError, match="mismatch"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        AutoModelForImageClassification.from_pretrained(out)


def test_lora_needs_pretrained_base_and_excludes_other_strategies(tmp_path):
    with pytest.raises(TransferConfigError, match="random-init"):
        run_transfer(*arguments_from_dict(lora_args("test_resnet", tmp_path / "o")))
    base = make_base(tmp_path / "base")
    # refused when the arguments are built, before anything loads
    with pytest.raises(TransferConfigError, match="regularizer='l2sp' has no effect with mode=task method=lora"):
        run_transfer(*arguments_from_dict(lora_args(base, tmp_path / "o", regularizer="l2sp")))


def _peft_pair_compatible() -> bool:
    import peft
    from transformers.integrations.peft import MIN_PEFT_VERSION

    return version.parse(peft.__version__) >= version.parse(MIN_PEFT_VERSION)


def test_transformers_peft_integration_apis(tmp_path):
    """The transformers-side adapter APIs on an auto-loaded adapter check MIN_PEFT_VERSION: they work with
    a compatible transformers/peft pair (transformers 5.23 + peft 0.21.2) and raise with transformers 5.24 +
    peft 0.21.2; loading, PeftModel and pipeline (tested above) work with both."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageClassification

    base = make_base(tmp_path / "base")
    model = AutoModelForImageClassification.from_pretrained(base)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["conv2"], modules_to_save=["fc"]))
    peft_model.save_pretrained(tmp_path / "ad")
    auto = AutoModelForImageClassification.from_pretrained(tmp_path / "ad")
    if not _peft_pair_compatible():
        with pytest.raises(ValueError, match="version of PEFT"):
            auto.active_adapters()
        pytest.xfail("installed transformers asks for a newer peft (MIN_PEFT_VERSION): pin transformers<5.24")
    assert auto.active_adapters() == ["default"]
    auto.set_adapter("default")
    auto.save_pretrained(tmp_path / "again")
