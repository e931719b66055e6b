"""``hf-transfer app``: the page's predictions are pipeline()'s, a domain-adaptation run is shown beside its
source-only run, an adapter folder loads as its card says, bad input is named on the page, and (in a real browser)
what the page shows equals pipeline() to 4 decimals.

The browser test is marked ``browser`` (and ``slow``): ``pytest -m "not browser"`` keeps it out of a fast run; it
skips, naming what to install, where Chromium or its driver is missing."""

import json
import os
import shutil
import warnings
from pathlib import Path

import pytest

from hf_transfer.errors import TransferConfigError

from conftest import tiny_args

PRINTED = "builtin:digits-printed"
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("HF_TRANSFER_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))


@pytest.fixture(scope="module")
def da_runs(tmp_path_factory):
    """A tiny domain-adaptation pair laid out as the demo's: ``seed0/source_only`` beside ``seed0/dann``."""
    from hf_transfer.config import arguments_from_dict
    from hf_transfer.training.run import run_transfer

    root = tmp_path_factory.mktemp("demo") / "seed0"
    runs = {}
    for method in ("source_only", "dann"):
        out = root / method
        args = tiny_args(root, mode="domain", method=method, source=PRINTED, output_dir=str(out))
        run_transfer(*arguments_from_dict(args))
        runs[method] = out
    return runs


def _pipeline_top(folder, image, k, **kwargs):
    from transformers import pipeline

    classify = pipeline("image-classification", model=str(folder), **kwargs)
    return [(p["label"], round(float(p["score"]), 4)) for p in classify(image, top_k=k)]


def test_the_page_predicts_what_pipeline_predicts(da_runs):
    from hf_transfer.app.page import load_model

    model = load_model(str(da_runs["dann"]))
    assert model.label_names == DIGITS and model.examples and model.plots
    assert (
        "## Results" in model.story and "![" not in model.story and not model.story.startswith("# ")
    )  # the card's table; the page shows the plots
    for image in model.examples:
        got = [(p["label"], round(p["score"], 4)) for p in model.predict(image, 10)]
        assert got == _pipeline_top(da_runs["dann"], image, 10)
    assert len(model.predict(model.examples[0], 3)) == 3


def test_a_domain_run_is_shown_beside_its_source_only_run(da_runs, tmp_path):
    from hf_transfer.app.models import page_models

    models = page_models(str(da_runs["dann"]))
    assert [m.folder for m in models] == [da_runs["dann"], da_runs["source_only"].resolve()]
    assert models[0].name.startswith("dann: domain/dann, target test accuracy ")
    assert models[1].name.startswith("source_only: domain/source_only") and models[1].name.endswith("baseline)")
    assert [m.folder for m in page_models(str(da_runs["source_only"]))] == [da_runs["source_only"]]  # the baseline
    alone = tmp_path / "dann"
    shutil.copytree(da_runs["dann"], alone)  # no source-only run beside it: nothing locates the baseline
    with pytest.raises(TransferConfigError, match="no folder locates that baseline.*MODEL_B.*--single"):
        page_models(str(alone))
    assert len(page_models(str(alone), single=True)) == 1
    assert [m.folder for m in page_models(str(alone), str(da_runs["source_only"]))][1] == da_runs["source_only"]


def test_a_lora_adapter_folder_predicts_as_its_card_loads_it(tmp_path):
    """``--publish adapter`` on a base with other labels: the card's stock pipeline() call needs the run's image
    processor and label kwargs; the page passes the same ones, and shows the run's class names."""
    import torch

    from hf_transfer.app.page import load_model
    from hf_transfer.config import arguments_from_dict
    from hf_transfer.models.adapters import stock_pipeline_kwargs
    from hf_transfer.models.backbones import load_backbone
    from hf_transfer.models.export import export_model
    from hf_transfer.training.run import run_transfer

    base = tmp_path / "base"
    torch.manual_seed(0)
    export_model(load_backbone("test_resnet", ["a", "b", "c"], image_size=32, crop_pct=1.0), str(base))
    out = tmp_path / "adapter"
    args = tiny_args(
        tmp_path, mode="task", method="lora", backbone=str(base), output_dir=str(out), max_steps=2, publish="adapter"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the local base is not portable: beside the point here
        run_transfer(*arguments_from_dict(args))
    assert (out / "adapter_config.json").is_file() and not (out / "config.json").exists()
    model = load_model(str(out))
    assert model.label_names == DIGITS
    for image in model.examples[:3]:
        got = [(p["label"], round(p["score"], 4)) for p in model.predict(image, 5)]
        assert got == _pipeline_top(out, image, 5, **stock_pipeline_kwargs(str(out)))


def test_what_cannot_be_shown_is_named(da_runs, tmp_path, capsys):
    from hf_transfer.app.models import load
    from hf_transfer.app.page import load_model, predict_all
    from hf_transfer.cli.main import main

    text_model = tmp_path / "bert"
    text_model.mkdir()
    (text_model / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    with pytest.raises(TransferConfigError, match=r"not an image classifier.*BertModel"):
        load(str(text_model))
    with pytest.raises(TransferConfigError, match="holds no model"):
        load(str(tmp_path))
    assert main(["app", str(text_model)]) == 2
    assert "not an image classifier" in capsys.readouterr().err

    model = load_model(str(da_runs["source_only"]))
    broken = tmp_path / "broken.png"
    broken.write_bytes(Path(model.examples[0]).read_bytes()[:40])  # a PNG cut short
    for cut in (40, 200):  # unidentifiable; identified but broken
        broken.write_bytes(Path(model.examples[0]).read_bytes()[:cut])
        outputs, message = predict_all([model, None], str(broken), 5)
        assert outputs == [None, "", None, ""] and "Could not read `broken.png` as an image" in message
    outputs, message = predict_all([model, None], model.examples[0], 5)  # and the next image is served
    assert message == "" and len(outputs[0]) == 5 and '<td class="score">' in outputs[1]


# --- in a real browser ------------------------------------------------------------------------------------


def _browser():
    """A headless Chromium driven by selenium, or a skip naming what to install."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed: pip install selenium (in the test extra)")
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.skip(f"{' and '.join(missing)} missing: apt-get install chromium chromium-driver (Debian)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1200",
    ):
        options.add_argument(arg)
    # an explicit driver: selenium-manager never looks for (or downloads) one
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def _page_scores(driver, slot):
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, f"#scores-{slot} tr")
    out = []
    for row in rows[1:]:
        label, score = (c.text for c in row.find_elements(By.TAG_NAME, "td"))
        out.append((label, float(score)))
    return out


@pytest.mark.slow
@pytest.mark.browser
def test_in_a_browser_the_page_shows_pipelines_predictions_side_by_side(da_runs, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from hf_transfer.app.models import load, page_models
    from hf_transfer.app.serve import serve

    driver = _browser()
    models = page_models(str(da_runs["dann"]))
    page, url = serve(models, title="dann vs source_only", loader=load)
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 120)
        upload = (By.CSS_SELECTOR, "#image input[type=file]")
        wait.until(lambda d: d.find_elements(*upload))
        image = models[0].examples[0]
        driver.find_element(*upload).send_keys(image)
        wait.until(lambda d: len(_page_scores(d, "a")) == 5 and len(_page_scores(d, "b")) == 5)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "app_side_by_side.png"))
        for slot, folder in zip("ab", (da_runs["dann"], da_runs["source_only"]), strict=True):
            assert _page_scores(driver, slot) == _pipeline_top(folder, image, 5)

        # an unreadable file: named on the page, and the server keeps serving
        broken = tmp_path / "broken.png"
        broken.write_bytes(Path(image).read_bytes()[:40])
        driver.find_element(By.CSS_SELECTOR, "#image button[aria-label='Remove Image']").click()
        driver.find_element(*upload).send_keys(str(broken))
        message = (By.CSS_SELECTOR, "#message")
        wait.until(lambda d: "Could not read" in d.find_element(*message).text)
        assert _page_scores(driver, "a") == []
        # a model that is not an image classifier, loaded on the page: named there too
        text_model = tmp_path / "bert"
        text_model.mkdir()
        (text_model / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
        driver.find_element(By.CSS_SELECTOR, "#compare button").click()  # open the accordion
        box = (By.CSS_SELECTOR, "#other textarea, #other input")
        wait.until(lambda d: d.find_elements(*box))
        driver.find_element(*box).send_keys(str(text_model))
        driver.find_element(By.CSS_SELECTOR, "#load").click()
        wait.until(lambda d: "not an image classifier" in d.find_element(*message).text)
        driver.find_element(By.CSS_SELECTOR, "#image button[aria-label='Remove Image']").click()
        other = models[0].examples[1]
        driver.find_element(*upload).send_keys(other)
        wait.until(lambda d: len(_page_scores(d, "a")) == 5)
        assert _page_scores(driver, "a") == _pipeline_top(da_runs["dann"], other, 5)
    finally:
        driver.quit()
        page.close()
