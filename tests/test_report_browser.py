"""report.html in headless Chromium, driven over the DevTools protocol: every image decodes, nothing is
fetched from the network, the console stays clean, the page fits the window and the screenshot is not blank.

The study is synthetic (recorded runs with made-up curves and predictions, no training), so the page
looks like a real 12-epoch study. Skipped without Chromium unless CIFARLAB_REQUIRE_BROWSER=1.
"""
from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cifarlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig, to_dict
from cifarlab.data import CLASSES
from cifarlab.store import RunRecord, Store

pytestmark = pytest.mark.browser

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium")) if p and os.access(p, os.X_OK)), None)
REQUIRED = os.environ.get("CIFARLAB_REQUIRE_BROWSER") == "1"
WIDTH, HEIGHT = 1280, 4000


@pytest.fixture(scope="module")
def chromium() -> str:
    if CHROMIUM is None:
        if REQUIRED:
            pytest.fail("CIFARLAB_REQUIRE_BROWSER=1 but /usr/bin/chromium is missing (apt-get install chromium)")
        pytest.skip("headless Chromium not installed (/usr/bin/chromium)")
    return CHROMIUM


# ---------------------------------------------------------------------------------------------
# A synthetic study: 3 experiments x 3 seeds x 12 epochs, validation split, predictions and test images

EXPERIMENTS = {  # name -> (model options, description, final test acc, final train acc)
    "baseline": ({"norm": "none"}, "no normalisation", 0.780, 0.930),
    "bn": ({}, "batch norm after every conv", 0.830, 0.900),
    "gn": ({"norm": "gn"}, "group norm, 4 groups", 0.815, 0.890),
}
SEEDS = (0, 1, 2)
EPOCHS = 12
N_TEST = 10  # test images per class


def make_image_folder(root: Path) -> Path:
    rng = np.random.default_rng(1)
    for split, n in (("train", 2), ("test", N_TEST)):
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            tint = np.array([label * 25, 255 - label * 25, (label * 70) % 256], dtype=np.float64)
            for i in range(n):
                img = np.clip(tint + rng.normal(0, 50, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(root / split / name / f"{i:03d}.png")
    return root


def _history(rng, test: float, train: float, tta: bool) -> list[dict]:
    rows = []
    for e in range(1, EPOCHS + 1):
        f = 1 - np.exp(-e / 3.5)  # saturating learning curve
        te = 0.1 + (test - 0.1) * f + rng.normal(0, 0.004)
        tr = 0.1 + (train - 0.1) * f + rng.normal(0, 0.003)
        row = {"epoch": e, "train_loss": 2.3 * (1 - tr) + 0.05, "train_acc": tr, "val_loss": 2.3 * (1 - te) + 0.1,
               "val_acc": te + rng.normal(0, 0.004), "test_loss": 2.3 * (1 - te) + 0.12, "test_acc": te,
               "lr": 0.05, "seconds": 9.5 + rng.normal(0, 0.2)}
        if tta:
            row["test_acc_tta"] = te + 0.006
        rows.append(row)
    return rows


def _predictions(rng, acc: float) -> tuple[np.ndarray, np.ndarray]:
    labels = np.repeat(np.arange(10), N_TEST).astype(np.int8)  # image-folder order: class by class
    logits = rng.normal(0, 1.0, (len(labels), 10))
    logits[np.arange(len(labels)), labels] += 1.2 + 3.5 * acc
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs.astype(np.float16), labels


def build_synthetic_study(folder: Path, data_root: Path) -> Path:
    rng = np.random.default_rng(0)
    with Store(folder) as store:
        for exp, (options, _, test, train) in EXPERIMENTS.items():
            for seed in SEEDS:
                cfg = RunConfig(data=DataConfig(root=str(data_root), val=5000),
                                model=ModelConfig("s8-net", options), train=TrainConfig(epochs=EPOCHS, seed=seed))
                history = _history(rng, test + rng.normal(0, 0.004), train, tta=exp == "bn")
                run_dir = f"{exp}/seed-{seed}"
                (folder / run_dir).mkdir(parents=True)
                probs, labels = _predictions(rng, history[-1]["test_acc"])
                np.savez_compressed(folder / run_dir / "predictions.npz", probs=probs, labels=labels)
                params = 47_504 if options.get("norm") == "none" else 47_960
                store.record(RunRecord(exp, seed, run_dir, "s8-net", params, EPOCHS, sum(r["seconds"] for r in history),
                                       0.0, "NVIDIA H100 80GB HBM3", to_dict(cfg), history))
        store.set_meta(name="norm-study", experiments=list(EXPERIMENTS), baseline="baseline",
                       descriptions={k: v[1] for k, v in EXPERIMENTS.items()},
                       spec='[study]\nname = "norm-study"\nseeds = [0, 1, 2]\n',
                       budget={"max_params": 50_000, "max_epochs": 12}, val=5000)
    return folder


@pytest.fixture(scope="module")
def report_html(tmp_path_factory) -> Path:
    from cifarlab.report import write_report

    data_root = make_image_folder(tmp_path_factory.mktemp("data"))
    study = build_synthetic_study(tmp_path_factory.mktemp("study"), data_root)
    html_path, _ = write_report(study, data_root=str(data_root))
    return html_path


# ---------------------------------------------------------------------------------------------
# A minimal DevTools client over a stdlib websocket (text frames only)


class DevTools:
    def __init__(self, ws_url: str) -> None:
        m = re.match(r"ws://([^:/]+):(\d+)(/.*)", ws_url)
        assert m, ws_url
        self.sock = socket.create_connection((m.group(1), int(m.group(2))), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {m.group(3)} HTTP/1.1\r\nHost: {m.group(1)}:{m.group(2)}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        self.next_id = 0
        self.events: list[dict] = []

    def _read(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("DevTools connection closed")
            buf += chunk
        return buf

    def _recv(self) -> dict:
        payload = b""
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            payload += self._read(n)
            if b0 & 0x80:  # FIN
                return json.loads(payload)

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        data = json.dumps({"id": self.next_id, "method": method, "params": params}).encode()
        mask = os.urandom(4)
        n = len(data)
        header = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else
                                  bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536 else
                                  bytes([0x80 | 127]) + struct.pack(">Q", n))
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))
        while True:
            msg = self._recv()
            if msg.get("id") == self.next_id:
                assert "error" not in msg, msg
                return msg["result"]
            self.events.append(msg)

    def wait_for(self, method: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in self.events:
                if e.get("method") == method:
                    return e
            self.events.append(self._recv())
        raise TimeoutError(method)


@pytest.fixture(scope="module")
def page(chromium, report_html, tmp_path_factory):
    """(DevTools client on a tab that loaded report.html, events seen while loading)."""
    tmp = tmp_path_factory.mktemp("chromium")
    log = (tmp / "stderr.log").open("w")
    proc = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                             "--no-first-run", "--disable-background-networking", "--disable-component-update",
                             "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'profile'}",
                             "--remote-debugging-port=0", f"--window-size={WIDTH},{HEIGHT}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    try:
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline and proc.poll() is None:
            m = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", (tmp / "stderr.log").read_text())
            port = m and int(m.group(1))
            time.sleep(0.1)
        assert port, f"Chromium did not start: {(tmp / 'stderr.log').read_text()[-2000:]}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            target = next(t for t in json.load(resp) if t["type"] == "page")
        tools = DevTools(target["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log", "Network"):
            tools.call(f"{domain}.enable")
        tools.call("Emulation.setDeviceMetricsOverride", width=WIDTH, height=HEIGHT, deviceScaleFactor=1, mobile=False)
        tools.call("Page.navigate", url=report_html.as_uri())
        tools.wait_for("Page.loadEventFired")
        yield tools
        tools.sock.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the browser we started and its helper processes
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _evaluate(page: DevTools, expression: str):
    result = page.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
    assert "exceptionDetails" not in result, result
    return result["result"]["value"]


# ---------------------------------------------------------------------------------------------


def test_every_image_renders(page):
    images = _evaluate(page, "Promise.all(Array.from(document.images).map(i => i.decode().then("
                              "() => [i.naturalWidth, i.naturalHeight, i.getBoundingClientRect().width])))")
    assert len(images) == 1 + 3 * len(EXPERIMENTS)  # overlay + per experiment: curves, confusion, mistakes
    for natural_w, natural_h, shown_w in images:
        assert natural_w > 0 and natural_h > 0 and shown_w > 0


def test_nothing_but_the_file_and_data_uris_is_fetched(page, report_html):
    urls = [e["params"]["request"]["url"] for e in page.events if e.get("method") == "Network.requestWillBeSent"]
    assert report_html.as_uri() in urls
    assert all(u.startswith(("file:", "data:")) for u in urls), urls


def test_console_stays_clean(page):
    errors = [e for e in page.events
              if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
    assert errors == []


def test_page_fits_the_window_and_shows_the_comparison_first(page):
    layout = _evaluate(page, "(() => { const t = document.querySelector('main table'); return {"
                             "scroll: document.documentElement.scrollWidth, width: window.innerWidth, "
                             "table: t.scrollWidth, room: t.parentElement.clientWidth, "
                             "first: document.querySelector('main h2').textContent, "
                             "rows: t.tBodies[0].rows.length}; })()")
    assert layout["scroll"] <= layout["width"]  # no horizontal scrolling at 1280 px
    assert layout["table"] <= layout["room"]  # the comparison table fits without its own scrollbar
    assert layout["first"] == "Comparison" and layout["rows"] == len(EXPERIMENTS)


def test_screenshot_is_not_blank(page, tmp_path):
    shot = base64.b64decode(page.call("Page.captureScreenshot", format="png")["data"])
    keep = os.environ.get("CIFARLAB_SCREENSHOT")  # optional path to keep the screenshot for a look
    if keep:
        Path(keep).write_bytes(shot)
    pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("L"), dtype=np.float64)
    assert pixels.shape == (HEIGHT, WIDTH)
    assert pixels.std() > 20  # text, tables and figures, not a flat page
    assert (pixels < 200).mean() > 0.03  # a real share of non-white pixels
