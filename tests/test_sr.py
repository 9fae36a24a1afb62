"""Super-resolution: trained on some photographs, it beats bicubic on others it never saw; upscaling names bad
inputs and keeps the good ones."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import genlab
from genlab.cli import app
from genlab.data import load_dataset
from genlab.models.sr_gan import SRGenerator
from genlab.serving import ServeConfig, serve_app

from .conftest import SR_TINY, running


@pytest.fixture(scope="module")
def sr_run(tmp_path_factory) -> genlab.Run:
    return genlab.fit(None, overrides=SR_TINY, out=tmp_path_factory.mktemp("sr") / "run")


def test_the_built_in_photos_hold_out_whole_photographs_for_test():
    from sklearn.datasets import load_sample_image

    from genlab.data.photos import BUILT_IN

    assert not set(BUILT_IN["test"]) & (set(BUILT_IN["train"]) | set(BUILT_IN["val"]))
    cfg = genlab.load_config(None, ["data.source=photos", "data.image_size=32", "data.channels=3"]).data
    data = load_dataset(cfg)
    assert data.test.names == ["flower", "chelsea", "coffee"]
    assert [tuple(x.shape) for x in data.test.x] == [(3, 424, 640), (3, 296, 448), (3, 400, 600)]
    flower = torch.from_numpy(load_sample_image("flower.jpg").copy()).permute(2, 0, 1).float() / 255 * 2 - 1
    assert torch.allclose(data.test.x[0], flower[:, :424, :640])
    assert len(data.train) == 4096 and len(data.val) == 64 and data.train.x.shape[1:] == (3, 32, 32)
    assert (data.train.x.flatten(2).std(-1).mean(1) / 2 >= 0.02).float().mean() > 0.95, "flat crops are drawn again"


def _tinted_photos(folder, n: int, size=(96, 80)) -> list[float]:
    """n photographs that each crop gives away: textured green and blue, a red level of their own."""
    folder.mkdir()
    rng, reds = np.random.default_rng(0), [round(20 + 20 * i) for i in range(n)]
    for i, red in enumerate(reds):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        pixels[..., 0] = red
        Image.fromarray(pixels).save(folder / f"photo{i}.png")
    return [r / 255 * 2 - 1 for r in reds]


def test_a_folder_of_the_users_photos_is_split_by_photograph(tmp_path):
    reds = _tinted_photos(tmp_path / "mine", 10)
    (tmp_path / "mine" / "notes.jpg").write_bytes(b"not a jpeg")
    over = ["data.source=photos", f"data.path={tmp_path / 'mine'}", "data.image_size=32", "data.channels=3",
            "data.limit=300"]
    data = load_dataset(genlab.load_config(None, over).data)
    def source(x: torch.Tensor) -> set[float]:  # the photographs its crops come from, by their red level
        return {min(reds, key=lambda r: abs(r - v)) for v in x[:, 0].flatten(1).mean(1).tolist()}
    train, val = source(data.train.x), source(data.val.x)
    test = {min(reds, key=lambda r: abs(r - float(x[0].mean()))) for x in data.test.x}
    assert len(test) == 1 and len(val) == 1 and len(train) == 8, (train, val, test)
    assert not (train & val) and not (train & test) and not (val & test)
    assert [tuple(x.shape) for x in data.test.x] == [(3, 80, 96)], "test photographs are whole (multiples of 8)"
    assert any("notes.jpg: not a readable image" in n for n in data.notes)
    assert len(data.train) == 300

    _tinted_photos(tmp_path / "two", 2)
    with pytest.raises(genlab.GenlabError, match=r"data.path: 2 photograph\(s\) .* needs at least 3"):
        load_dataset(genlab.load_config(None, [*over[:1], f"data.path={tmp_path / 'two'}", *over[2:]]).data)


def test_photographs_of_any_pixel_format_read_as_what_they_show(tmp_path):
    from genlab.data.photos import _read

    grey = np.full((40, 48), 0.5)
    files = {  # a photograph of a mid-grey left half and a white right half, saved in five formats
        "rgb.png": Image.fromarray(np.stack([(np.hstack([grey, grey * 2]) * 255).astype(np.uint8)] * 3, -1)),
        "sixteen_bit.png": Image.fromarray((np.hstack([grey, grey * 2]) * 65535).astype(np.uint16)),
        "grey_alpha.png": Image.fromarray((np.hstack([grey, grey * 2]) * 255).astype(np.uint8)).convert("LA"),
        "rgba.png": Image.fromarray(np.stack([(np.hstack([grey, grey * 2]) * 255).astype(np.uint8)] * 3, -1))
        .convert("RGBA"),
        "bilevel.png": Image.fromarray(np.hstack([grey * 0, grey * 2]) > 0.5),
    }
    dark = Image.fromarray(np.full((8, 8), 200, dtype=np.uint16))  # a 16-bit file whose values are all under 256
    dark.save(tmp_path / "dark16.png")
    assert torch.allclose(_read(tmp_path / "dark16.png", []), torch.tensor(200 / 65535))
    for name, im in files.items():
        im.save(tmp_path / name)
        notes: list[str] = []
        photo = _read(tmp_path / name, notes)
        assert photo.shape == (3, 40, 96) and not notes, name
        left = 0.0 if name == "bilevel.png" else 0.5
        assert torch.allclose(photo[:, :, :48], torch.tensor(left), atol=0.01), name
        assert torch.allclose(photo[:, :, 48:], torch.tensor(1.0), atol=0.01), name


def test_a_trained_model_beats_bicubic_on_every_unseen_photograph(sr_run):
    metrics = genlab.evaluate(sr_run)  # measured: +0.99 dB over torch's bicubic, the worst photograph +0.84
    assert metrics["psnr"] > metrics["psnr_bicubic"] + 0.4 and metrics["images_above_bicubic"] == 3
    assert [r["image"] for r in metrics["per_image"]] == ["flower", "chelsea", "coffee"]
    assert all(r["psnr_genlab"] > max(r["psnr_bicubic"], r["psnr_pillow"]) for r in metrics["per_image"])
    assert abs(metrics["psnr_pillow"] - metrics["psnr_bicubic"]) < 0.5, "two bicubics, close but not the same"
    assert metrics["sharpness_bicubic"] < metrics["sharpness"] < metrics["sharpness_original"]
    assert metrics["measured_on"] == "Y channel (BT.601)" and metrics["border_cropped"] == 2
    assert 0 < metrics["ssim_bicubic"] < 1 and metrics["split"] == "test" and metrics["image_size"] == [424, 640]
    assert "Pillow" in (sr_run.path / "report.html").read_text()


def test_upscale_in_python_and_the_folder_format(sr_run):
    model = sr_run.model
    out = model.upscale(torch.rand(2, 3, 10, 12))
    assert out.shape == (2, 3, 20, 24) and 0 <= out.min() and out.max() <= 1
    sizes = [o.shape for o in model.upscale([torch.rand(3, 8, 8), torch.rand(3, 5, 9)])]
    assert sizes == [(3, 16, 16), (3, 10, 18)]
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    hub = SRGenerator.from_pretrained(sr_run.path / "model")  # huggingface_hub's loader, no genlab code
    assert torch.equal(hub(x), model.generator(x))
    with pytest.raises(genlab.GenlabError, match=r"images: grey \(1 channel\), but this model upscales colour"):
        model.upscale(torch.rand(1, 1, 8, 8))
    with pytest.raises(genlab.GenlabError, match="3x2 pixels; inputs must be 4 to 2048"):
        model.upscale(torch.rand(1, 3, 2, 3))
    with pytest.raises(genlab.GenlabError, match="genlab upscale RUN IN"):
        sr_run.sample(4)


def test_the_cli_upscales_a_folder_and_names_each_bad_file(sr_run, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.full((12, 10, 3), 120, np.uint8)).save(folder / "good.png")
    Image.fromarray(np.full((12, 10), 80, np.uint8)).save(folder / "grey.png")
    (folder / "broken.png").write_bytes(b"not a png")
    result = CliRunner().invoke(app, ["upscale", str(sr_run.path), str(folder), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert "grey.png: grey (1 channel), but this model upscales colour" in result.output
    assert "broken.png: not a readable image" in result.output and "Traceback" not in result.output
    with Image.open(tmp_path / "out/good.png") as im:
        assert im.size == (20, 24) and im.mode == "RGB"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.png"]

    single = CliRunner().invoke(app, ["upscale", str(sr_run.path), str(folder / "good.png")])
    assert single.exit_code == 0 and (folder / "good_x2.png").is_file()


def test_upscaling_with_a_run_of_another_family_is_one_line(tiny_run, tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png")
    result = CliRunner().invoke(app, ["upscale", str(tiny_run.path), str(tmp_path / "a.png")])
    assert result.exit_code == 1 and "a diffusion run; upscale needs a sr_gan run" in result.output


def test_the_adversarial_stage_trains_both_networks(tmp_path):
    over = [*SR_TINY, "model.warmup_steps=3", "train.max_steps=6", "train.val_every=6", "train.log_every=1"]
    run = genlab.fit(None, overrides=over, out=tmp_path / "gan")
    ckpt = torch.load(run.paths.last_checkpoint, weights_only=True)
    steps = [int(next(iter(s["state"].values()))["step"]) for s in ckpt["optimizer_states"]]
    assert steps == [6, 3], "G every step, D from the end of the L1 warm-up"
    assert sorted((run.path / "samples").glob("*.png")), "rows of bicubic, upscaled, original"


def test_an_image_folder_is_refused_for_super_resolution_with_the_source_that_works(tmp_path):
    with pytest.raises(genlab.ConfigError, match="data.source: image_folder resizes each image whole .* use "
                                                 f"data.source: photos with data.path: {tmp_path}"):
        genlab.load_config("configs/photos-sr.yaml", ["data.source=image_folder", f"data.path={tmp_path}"])


def test_an_upscale_in_tiles_equals_one_call(sr_run):
    from genlab.models.sr_gan import CALL_BYTES

    model, x = sr_run.model, torch.rand(2, 3, 70, 90)
    side = 2 * (30 + 2 * model.generator.margin)  # output pixels a side of a tile of 30 input pixels and margins
    budget = CALL_BYTES + math.ceil(model.generator.bytes_per_pixel() * side**2)
    assert model.tile(70, 90, budget) == (24, 30), "3 x 3 even tiles: 30 input pixels at most, 24 and 30 made"
    assert model.tile(70, 90) == (70, 90), "one call when it fits the default budget"
    tiled, whole = model.upscale(x, tile_bytes=budget), model.upscale(x)
    assert tiled.shape == whole.shape == (2, 3, 140, 180)
    assert (tiled - whole).abs().max() < 1e-5, "each tile's margin covers what its cropped pixels depend on"
    assert model.peak_bytes(70, 90, budget) < model.peak_bytes(70, 90)


def _png_header(width: int, height: int) -> str:
    """A base64 PNG whose header promises `width` x `height` pixels, and holds none: decoding it fails."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return base64.b64encode(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IEND", b"")).decode()


def test_the_server_refuses_an_upscale_past_its_memory_limit_before_decoding(sr_run):
    from genlab.capabilities.upscale import request_bytes
    from genlab.serving.config import Limits

    model = sr_run.model
    one, two = request_bytes(model, [(1000, 1000)] * 2)
    most = (one + two) // 2  # the first image fits, the second does not (a body of 12 KB moves neither)
    app = serve_app([sr_run.path], ServeConfig(names=["sr"], limits=Limits(max_upscale_bytes=most)))
    with running(app) as url:
        started = time.perf_counter()
        refused = httpx.post(f"{url}/v1/images/upscale", json={"model": "sr", "images": [_png_header(1000, 1000)] * 2})
        seconds = time.perf_counter() - started
        message = refused.json()["error"]["message"]
        assert refused.status_code == 400 and message.startswith("images[1]: 1000x1000 pixels upscaled x2"), message
        need = int(re.search(r"to ([\d,]+) bytes", message).group(1).replace(",", ""))
        assert two < need < two + 100_000 and f"limits.max_upscale_bytes) is {most:,}" in message
        assert "for 8,000,000 output pixels" in message and seconds < 1.0, "from the headers: no pixel was decoded"

        alone = httpx.post(f"{url}/v1/images/upscale", json={"model": "sr", "images": [_png_header(1000, 1000)]})
        assert alone.status_code == 400 and "images[0]: not a base64-encoded PNG" in alone.text, "passed, then decoded"

        pixels, buffer = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8), io.BytesIO()
        Image.fromarray(pixels).save(buffer, "PNG")
        ok = httpx.post(f"{url}/v1/images/upscale", json={"model": "sr", "images": [
            base64.b64encode(buffer.getvalue()).decode()]}, timeout=30)
        assert ok.status_code == 200, ok.text
    want = model.upscale(torch.from_numpy(pixels).permute(2, 0, 1)[None] / 255)[0].permute(1, 2, 0)
    with Image.open(io.BytesIO(base64.b64decode(ok.json()["data"][0]["b64_json"]))) as im:
        assert im.size == (96, 80) and np.array_equal(np.asarray(im), (want * 255).round().byte().numpy())


def test_the_memory_budget_lets_jobs_in_by_arrival_and_never_past_its_total():
    import threading

    from genlab.serving.guard import MemoryBudget

    budget, order, used = MemoryBudget(10), [], []
    done = {name: threading.Event() for name in ("first", "big", "small")}

    def job(name: str, need: int) -> None:
        with budget.hold(need):
            order.append(name)
            used.append(budget.used)
            done[name].wait(5)

    threads = []
    for name, need in (("first", 6), ("big", 8), ("small", 3)):  # big waits: 6 + 8 > 10; small comes after it
        threads.append(threading.Thread(target=job, args=(name, need)))
        threads[-1].start()
        time.sleep(0.1)
    assert order == ["first"], "small would fit beside first, and big came earlier"
    done["first"].set()
    time.sleep(0.1)
    assert order == ["first", "big"] and budget.used == 8, "small does not fit beside big"
    done["big"].set()
    time.sleep(0.1)
    assert order == ["first", "big", "small"]
    done["small"].set()
    for thread in threads:
        thread.join(5)
    assert budget.used == 0 and max(used) <= 10
    with pytest.raises(ValueError), budget.hold(10):
        raise ValueError("a job that fails gives its share back")
    assert budget.used == 0


def test_large_upscales_to_two_models_take_turns_within_the_servers_memory(sr_run, monkeypatch):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from genlab.capabilities.upscale import ServedUpscaler, request_bytes
    from genlab.serving.config import Limits

    pixels, buffer = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8), io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    need = request_bytes(sr_run.model, [(200, 200)], 2 * len(image) + len(buffer.getvalue()))[-1]
    assert need > 2**20
    met: list[bool] = []
    upscale_one = ServedUpscaler.upscale_one

    def meeting(self, raw, field):  # both upscales meet here only if the server runs them at once
        try:
            met.append(barrier.wait(timeout=2) >= 0)
        except threading.BrokenBarrierError:
            met.append(False)
        return upscale_one(self, raw, field)

    monkeypatch.setattr(ServedUpscaler, "upscale_one", meeting)

    def together(memory: int) -> list[bool]:
        nonlocal barrier
        met.clear()
        barrier = threading.Barrier(2)
        limits = Limits(max_upscale_bytes=memory, max_memory_bytes=memory)
        app = serve_app([sr_run.path, sr_run.path], ServeConfig(names=["a", "b"], limits=limits))
        with running(app) as url, ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda name: httpx.post(f"{url}/v1/images/upscale", timeout=60, json={
                "model": name, "images": [image]}), ["a", "b"]))
            assert [r.status_code for r in answers] == [200, 200], answers[0].text
            assert app.state.server.memory.used == 0, "each job gave its share back"
        return met

    barrier = threading.Barrier(2)
    assert together(need * 3 // 2) == [False, False], "room for one: the second model's job waits for the first's"
    assert together(need * 3) == [True, True], "room for both: they run at once"


def test_a_serve_config_whose_one_request_could_never_run_is_refused(tmp_path):
    from genlab.errors import ConfigError
    from genlab.serving.config import load_serve_config

    (tmp_path / "serve.yaml").write_text("limits: {max_memory_bytes: 536870912}\n")  # under one request's 1 GiB
    with pytest.raises(ConfigError, match=r"limits: .*max_upscale_bytes \(1,073,741,824\) exceeds max_memory_bytes"):
        load_serve_config(tmp_path / "serve.yaml")


_MEASURE = """
import ctypes, gc, json, sys
from pathlib import Path
import numpy as np, torch
from PIL import Image
import genlab
from genlab.capabilities.upscale import request_bytes, upscale_files
from genlab.media.images import read_image

def memory(key):
    return int(Path("/proc/self/status").read_text().split(key + ":")[1].split()[0]) * 1024

run, folder = genlab.load(sys.argv[1]), Path(sys.argv[2])
Image.fromarray(np.random.default_rng(1).integers(0, 256, (384, 384, 3), dtype=np.uint8)).save(folder / "a.png")
model = run.model
model.upscale(torch.rand(1, 3, 16, 16))  # the weights in, oneDNN's first call made
gc.collect()
ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed memory back to the system: what is used again is counted
Path("/proc/self/clear_refs").write_text("5")  # the peak from here on
base = memory("VmRSS")
assert upscale_files(run, folder / "a.png", folder / "b.png")[0] == [folder / "b.png"]
tiled = memory("VmHWM") - base
with torch.no_grad():  # one call of the generator on the whole image: how upscale_files did it
    model.generator(read_image(folder / "a.png")[None] * 2 - 1)
print(json.dumps([tiled, request_bytes(model, [(384, 384)])[0], memory("VmHWM") - base]))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="measures the peak through Linux's /proc")
def test_a_large_upscale_stays_within_the_memory_the_server_counts(sr_run, tmp_path):
    # in a process of its own: the peak of a test worker also holds whatever its other tests' threads allocate
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(sr_run.path), str(tmp_path)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    tiled, bound, untiled = json.loads(done.stdout.strip().splitlines()[-1])
    assert tiled < bound < untiled, (tiled, bound, untiled)  # measured: 112 MB < 183 MB < 346 MB
