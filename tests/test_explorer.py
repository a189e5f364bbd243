"""``keras-gates explore``: its API in process, its refusals, and its page in a real browser.

The model is the hand-wired quote model of tests/test_inspect_probe.py reading lines of code
(tests/quote_text.py): unit 0 is on exactly inside double quotes, so brushing one quoted string
must select unit 0 and list the other quoted strings. The browser test runs what a user runs: a
process writes the files, ``keras-gates explore --port 0`` serves them, and Debian's chromium
(driven by Playwright, with the real mouse) brushes a span, reads the matches, clicks one and
writes the screenshot the README shows (docs/explorer.png).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from keras_gates.cli import main
from keras_gates.inspect import explorer as explorer_module
from keras_gates.inspect import match, trace_model
from keras_gates.inspect.explorer import build_exploration, create_app, split_text
from tests import browser, quote_text
from tests.serving_models import ServerThread, stop_process
from tests.test_inspect_probe import STEPS, quote_model

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "docs" / "explorer.png"
SIGNALS = ["hidden", "cell", "input", "forget", "candidate", "output"]


@pytest.fixture(scope="module")
def model():
    return quote_model()


@contextlib.contextmanager
def served(data):
    """The explorer app of ``data`` on a real uvicorn (127.0.0.1, port 0), and an HTTP client."""
    with ServerThread(create_app(data)) as server, httpx.Client(base_url=server.url) as http:
        yield http


@pytest.fixture(scope="module")
def client(model):
    x, labels = quote_text.encode()
    with served(build_exploration(model, x, text=quote_text.text(), labels=labels)) as http:
        yield http


def test_layers_name_every_signal(client):
    info = client.get("/api/layers").json()
    assert info == {
        "batch": 3,
        "steps": STEPS,
        "layers": [{"key": "quotes", "signals": SIGNALS, "units": 4, "steps": STEPS}],
        "text": True,
        "concepts": True,
    }


def test_heatmap_is_the_trace_with_padding_left_out(client, model):
    x, _ = quote_text.encode()
    trace = trace_model(model, x)["quotes"]
    heat = client.get("/api/heatmap", params={"layer": "quotes", "signal": "cell", "sample": 2})
    heat = heat.json()
    z = np.array(heat["z"], dtype=float)  # None (padding) becomes NaN
    counted = len(quote_text.LINES[2])
    assert z.shape == (4, STEPS) and np.isnan(z[:, counted:]).all()
    np.testing.assert_allclose(z[:, :counted], trace["cell"][2, :counted].T, atol=1e-4)
    assert heat["mask"] == [True] * counted + [False] * (STEPS - counted)
    assert "".join(heat["text"]) == quote_text.text()[2 * STEPS :]
    assert heat["range"][0] <= trace["cell"][trace["mask"]].min() < heat["range"][1]


@pytest.mark.parametrize(
    "params, message",
    [
        ({"layer": "lstm"}, "Received layer='lstm': expected one of ['quotes']"),
        ({"layer": "quotes", "signal": "reset"}, "expected one of ['hidden', 'cell', 'input'"),
        ({"layer": "quotes", "sample": 3}, "Received sample=3: expected an index in [0, 3)"),
        ({"layer": "quotes", "sample": "x"}, "query.sample: Input should be a valid integer"),
    ],
)
def test_bad_heatmap_requests_say_what_is_expected(client, params, message):
    answer = client.get("/api/heatmap", params=params)
    assert answer.status_code == 400 and message in answer.json()["error"], answer.text


def test_match_answers_what_match_finds(client, model):
    x, _ = quote_text.encode()
    spans = quote_text.quoted_spans()
    sample, start, stop = spans[0]
    body = {"layer": "quotes", "signal": "hidden", "threshold": 0.5}
    found = client.post("/api/match", json={**body, "sample": sample, "start": start, "stop": stop})
    found = found.json()
    direct = match(model, x, span=spans[0], threshold=0.5, k=10)
    assert found["units"] == direct.units == [0]
    assert [(m["sample"], m["start"], m["stop"]) for m in found["matches"]] == [
        m[:3] for m in direct.matches
    ]
    assert sorted((m["sample"], m["start"], m["stop"]) for m in found["matches"]) == spans[1:]
    lines = quote_text.LINES
    assert all(m["text"] == lines[m["sample"]][m["start"] : m["stop"]] for m in found["matches"])


@pytest.mark.parametrize(
    "body, message",
    [
        ({"sample": 2, "start": 30, "stop": 36}, "covers padded (masked) steps"),
        ({"sample": 0, "start": 4}, "with stop missing or not a number"),
        ({"sample": 0, "start": 4.5, "stop": 7}, "with start missing or not a number"),
        ({"sample": 0, "start": 4, "stop": 7, "signal": "gates"}, "Received signal='gates'"),
    ],
)
def test_bad_match_requests_say_what_is_expected(client, body, message):
    answer = client.post("/api/match", json={"layer": "quotes", **body})
    assert answer.status_code == 400 and message in answer.json()["error"], answer.text


def test_concepts_rank_the_quote_unit_first(client, model):
    table = client.get("/api/concepts").json()["concepts"]
    assert table["in_quote"]["metric"] == "auc" and table["column"]["metric"] == "pearson"
    best = table["in_quote"]["top"][0]
    assert (best["layer"], best["unit"], best["score"]) == ("quotes", 0, 1.0)
    with served(build_exploration(model, quote_text.encode()[0])) as bare:
        answer = bare.get("/api/concepts")
    assert answer.status_code == 404 and "--labels LABELS.npz" in answer.json()["error"]


def test_page_and_plotly_are_served_locally(client):
    page = client.get("/")
    assert page.status_code == 200 and '<script src="static/plotly.min.js">' in page.text
    script = client.get("/static/plotly.min.js")
    assert script.status_code == 200 and script.text.startswith("/**\n* plotly.js")
    assert "plotly_selected" in client.get("/static/explorer.js").text


def test_unexpected_errors_answer_500_without_details(client, monkeypatch):
    def broken(*args):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(explorer_module, "heatmap", broken)
    answer = client.get("/api/heatmap", params={"layer": "quotes"})
    assert answer.status_code == 500 and "secret" not in answer.text


def test_text_must_have_one_character_per_step():
    assert split_text("abcdef", (2, 3)) == ["abc", "def"]
    with pytest.raises(ValueError, match=r"has 5 characters, expected .* 2 x 3 = 6"):
        split_text("abcde", (2, 3))


@pytest.fixture(scope="module")
def files(tmp_path_factory, model):
    folder = tmp_path_factory.mktemp("explore")
    x, labels = quote_text.encode()
    model.save(folder / "quotes.keras")
    np.save(folder / "x.npy", x)
    np.save(folder / "wide.npy", np.zeros((3, STEPS, 4), "float32"))
    np.savez(folder / "labels.npz", **labels)
    np.savez(folder / "short.npz", in_quote=labels["in_quote"][:, :-1])
    (folder / "text.txt").write_text(quote_text.text(), newline="")
    (folder / "short.txt").write_text(quote_text.text()[:-1], newline="")
    return folder


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--input", "nope.npy"], "--input 'nope.npy' does not exist"),
        (["--input", "wide.npy"], "Received input of shape (3, 40, 4), which does not fit"),
        (["--text", "nope.txt"], "--text 'nope.txt' does not exist"),
        (["--text", "short.txt"], "--text has 119 characters, expected batch x time steps"),
        (["--labels", "short.npz"], "Received labels of shape (3, 39) for concept 'in_quote'"),
        (["--labels", "x.npy"], "not a .npz archive"),
        (["--port", "70000"], "Received --port 70000: expected 0-65535"),
    ],
)
def test_cli_refuses_bad_input_before_serving(files, monkeypatch, capsys, flags, message):
    def served(*args):
        raise AssertionError("explore served despite bad input")

    monkeypatch.setattr(explorer_module, "serve", served)
    monkeypatch.chdir(files)
    given = dict(zip(flags[::2], flags[1::2], strict=True))
    args = {"--input": "x.npy", **given}
    argv = ["explore", "quotes.keras", *[part for pair in args.items() for part in pair]]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("keras-gates explore: error: ") and message in err, err


@pytest.fixture
def explore_url(files):
    """``keras-gates explore`` (the installed script, its own process) on the files this process
    wrote: its URL, read from its 'HTTP listening on URL' line."""
    from tests.serving_models import ChildOutput
    from tests.waiting import wait_until

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    program = str(Path(sys.executable).with_name("keras-gates"))
    given = ["--input", "x.npy", "--labels", "labels.npz", "--text", "text.txt"]
    command = [program, "explore", "quotes.keras", *given, "--port", "0"]
    proc = subprocess.Popen(
        command, cwd=files, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    output = ChildOutput(proc)
    try:
        line = wait_until(
            lambda: output.find(r"HTTP listening on (http://\S+)") or proc.poll() is not None,
            timeout=180,
            message=lambda: f"no 'HTTP listening on' line; output:\n{output.tail()}",
        )
        assert line is not True, f"explore exited with {proc.returncode}:\n{output.tail()}"
        yield line[1]
    finally:
        stop_process(proc, output)


@pytest.mark.slow  # a subprocess serving the page and a real browser
def test_brushing_a_quoted_string_lists_the_other_quoted_strings(explore_url):
    reason = browser.unavailable()
    if reason and os.environ.get("CI"):
        pytest.fail(f"CI must run the explorer in a real browser: {reason}")
    if reason:
        pytest.skip(f"no browser for the explorer test: {reason}")
    from playwright.sync_api import expect, sync_playwright

    spans = quote_text.quoted_spans()
    sample, start, stop = spans[0]
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(browser.CHROMIUM), timeout=120_000
        )
        try:
            page = chromium.new_page(viewport={"width": 1200, "height": 900})
            # These bound a hang on a loaded machine; every wait is on a DOM condition.
            page.set_default_timeout(60_000)
            expect.set_options(timeout=60_000)
            page.goto(explore_url)
            page.wait_for_selector("body[data-ready=true]", state="attached")
            heatmap = page.locator("#heatmap")
            expect(heatmap).to_have_attribute("data-shown", "quotes|hidden|0")
            expect(heatmap.locator("g.hm image")).to_have_count(1)  # the heatmap is drawn
            expect(heatmap.locator("g.textpoint")).to_have_count(STEPS)  # with the characters
            rows = page.locator("#concepts tbody tr")
            expect(rows.first).to_contain_text("in_quote")
            rows.filter(has_text="cell").first.click()  # in_quote's best cell unit: unit 0
            expect(heatmap).to_have_attribute("data-shown", "quotes|cell|0")
            page.select_option("#signal", "hidden")
            expect(heatmap).to_have_attribute("data-shown", "quotes|hidden|0")

            area = heatmap.locator(".nsewdrag").first.bounding_box()
            column = area["width"] / STEPS

            def centre(step: int) -> float:
                return area["x"] + (step + 0.5) * column

            middle = area["y"] + area["height"] / 2
            page.mouse.move(centre(start), middle)
            page.mouse.down()
            page.mouse.move(centre(stop - 1), middle, steps=8)
            page.mouse.up()

            matches = page.locator("#matches")
            expect(matches).to_have_attribute("data-span", f"{sample},{start},{stop},0.5")
            expect(page.locator("#units")).to_contain_text(
                f"sample {sample}, steps {start}–{stop - 1}: 1 unit (0)"
            )
            items = matches.locator("li")
            expect(items).to_have_count(len(spans) - 1)
            listed = [
                tuple(int(item.get_attribute(f"data-{key}")) for key in ("sample", "start", "stop"))
                for item in items.all()
            ]
            assert sorted(listed) == spans[1:]

            page.locator("#threshold").fill("0.77")  # above tanh(1): no unit is ever on
            expect(matches).to_have_attribute("data-span", f"{sample},{start},{stop},0.77")
            expect(items).to_have_count(0)
            page.locator("#threshold").fill("0.5")
            expect(items).to_have_count(len(spans) - 1)

            for wanted in (lambda s: s != sample, lambda s: s == sample):  # switch and back
                index = next(i for i, span in enumerate(listed) if wanted(span[0]))
                items.nth(index).click()
                shown = listed[index]
                expect(heatmap).to_have_attribute("data-match", ",".join(map(str, shown)))
                expect(heatmap).to_have_attribute("data-shown", f"quotes|hidden|{shown[0]}")
            expect(heatmap.locator("g.textpoint")).to_have_count(STEPS)
            page.mouse.move(1, 1)  # no tooltip in the screenshot
            page.evaluate("Plotly.Fx.unhover(document.getElementById('heatmap'))")
            expect(heatmap.locator("g.hovertext")).to_have_count(0)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            chromium.close()
