"""nbclust.data.datasets: names, file formats, search order, validation and verified offline download."""

import bz2
import functools
import gzip
import hashlib
import http.server
import struct
import sys
import threading
import zlib

import numpy as np
import pytest

from nbclust.data import datasets


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No real data folders: HOME, $NBCLUST_DATA and the system folders point nowhere."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("NBCLUST_DATA", raising=False)
    monkeypatch.delenv("NBCLUST_MIRROR", raising=False)
    monkeypatch.setattr(datasets, "SYSTEM_DIRS", ())
    monkeypatch.setattr(datasets, "MIRROR", None)


def idx_bytes(a):
    a = np.asarray(a, dtype=np.uint8)
    return struct.pack(">BBBB", 0, 0, 8, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def write_idx_pair(folder, part, x, y):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{part}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(x)))
    (folder / f"{part}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(y)))


def png_bytes(img):
    """8-bit gray (H, W) or RGB (H, W, 3) PNG, using filter type ``row % 5`` on each row."""
    img = np.asarray(img, dtype=np.uint8)
    h, w = img.shape[:2]
    ch = 1 if img.ndim == 2 else 3
    rows = img.reshape(h, w * ch).astype(np.int32)
    raw = b""
    for r in range(h):
        cur = rows[r]
        up = rows[r - 1] if r else np.zeros_like(cur)
        left = np.concatenate([np.zeros(ch, np.int32), cur[:-ch]])
        ul = np.concatenate([np.zeros(ch, np.int32), up[:-ch]])
        f = r % 5
        if f == 0:
            pred = 0
        elif f == 1:
            pred = left
        elif f == 2:
            pred = up
        elif f == 3:
            pred = (left + up) // 2
        else:
            p = left + up - ul
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - ul)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, ul))
        raw += bytes([f]) + ((cur - pred) & 255).astype(np.uint8).tobytes()

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    head = struct.pack(">IIBBBBB", w, h, 8, 0 if ch == 1 else 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_digits_uint8():
    x, y = datasets.load("digits")
    assert x.shape == (1797, 8, 8) and x.dtype == np.uint8 and x.max() == 255
    assert y.shape == (1797,) and set(np.unique(y)) == set(range(10))


def test_npz_npy_roundtrip(tmp_path, rng):
    x = rng.integers(0, 256, (6, 5, 7), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(6))
    np.save(tmp_path / "d.npy", x.astype(np.float32))
    xa, ya = datasets.load(tmp_path / "d.npz")
    np.testing.assert_array_equal(xa, x)
    np.testing.assert_array_equal(ya, np.arange(6))
    xb, yb = datasets.load(str(tmp_path / "d.npy"))
    assert isinstance(xb, np.memmap) and yb is None and xb.dtype == np.float32


@pytest.mark.parametrize(
    "x, y, match",
    [
        (np.zeros(10), None, "1-D"),
        (np.zeros((2, 1, 1, 4, 4)), None, "5-D"),
        (np.zeros((0, 8, 8)), None, "empty"),
        (np.full((3, 4, 4), np.nan), None, "NaN or Inf"),
        (np.zeros((3, 4, 4), np.uint8), np.arange(2), "2 labels for 3 images"),
        (np.zeros((3, 4, 4), np.uint8), np.array([0.0, np.nan, 1.0]), r"bad.npz: labels must be integers, label 1 is nan"),
        (np.zeros((3, 4, 4), np.uint8), np.array([0.0, 0.5, 1.5]), r"label 1 is 0.5 \(2 non-integer labels\)"),
        (np.zeros((3, 4, 4), np.uint8), np.array(["a", "b", "a"]), r"labels must be integers, got dtype <U1"),
        (np.zeros((3, 8, 8, 3), np.uint8), None, r"bad.npz: images of shape \(3, 8, 8, 3\) look channels-last"),
        (np.zeros((3, 28, 28, 1), np.uint8), None, "look channels-last"),
        (np.array([np.zeros((4, 4)), np.zeros((4, 4))], dtype=object), None, "array 'x' holds Python objects"),
    ],
)
def test_bad_arrays(tmp_path, x, y, match):
    arrays = {"x": x} if y is None else {"x": x, "y": y}
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        datasets.load(tmp_path / "bad.npz")


def test_corrupt_files(tmp_path, rng):
    np.savez(tmp_path / "t.npz", x=rng.integers(0, 256, (50, 8, 8), dtype=np.uint8))
    data = (tmp_path / "t.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt .npz"):
        datasets.load(tmp_path / "t.npz")
    np.savez(tmp_path / "nox.npz", images=np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="no array 'x'"):
        datasets.load(tmp_path / "nox.npz")
    (tmp_path / "t.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match="corrupt .npy"):
        datasets.load(tmp_path / "t.npy")
    with pytest.raises(ValueError, match="no such file"):
        datasets.load(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
        datasets.load("cifar")


def test_idx_files(tmp_path, rng):
    x = rng.integers(0, 256, (7, 6, 5), dtype=np.uint8)
    y = rng.integers(0, 3, 7).astype(np.uint8)
    write_idx_pair(tmp_path, "train", x, y)
    xa, ya = datasets.load(tmp_path / "train-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(xa, x)
    np.testing.assert_array_equal(ya, y)
    (tmp_path / "raw-idx").write_bytes(idx_bytes(x))
    np.testing.assert_array_equal(datasets.load(tmp_path / "raw-idx")[0], x)
    full = idx_bytes(x)
    for name, data, match in [
        ("short.gz", gzip.compress(full[:-10]), "header says"),
        ("cut.gz", gzip.compress(full)[:30], "truncated or corrupt gzip"),
        ("magic", b"\x01\x02" + full[2:], "bad magic"),
        ("head", full[:9], "truncated IDX header"),
    ]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=match):
            datasets.read_idx(tmp_path / name)


def test_png_folder(tmp_path, rng):
    gray = [rng.integers(0, 256, (9, 7), dtype=np.uint8) for _ in range(4)]
    for k, img in enumerate(gray):
        cls = tmp_path / "classes" / f"c{k % 2}"
        cls.mkdir(parents=True, exist_ok=True)
        (cls / f"{k}.png").write_bytes(png_bytes(img))
    x, y = datasets.load(tmp_path / "classes")
    np.testing.assert_array_equal(x, np.stack([gray[0], gray[2], gray[1], gray[3]]))
    np.testing.assert_array_equal(y, [0, 0, 1, 1])
    rgb = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(png_bytes(rgb))
    x, y = datasets.load(tmp_path / "flat")
    assert y is None
    np.testing.assert_array_equal(x[0], rgb.transpose(2, 0, 1))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .png images"):
        datasets.load(tmp_path / "empty")


def test_integer_valued_float_labels_become_int64(tmp_path):
    np.savez(tmp_path / "f.npz", x=np.zeros((3, 4, 4), np.uint8), y=np.array([2.0, 0.0, 1.0]))
    _, y = datasets.load(tmp_path / "f.npz")
    assert y.dtype == np.int64 and y.tolist() == [2, 0, 1]


def test_png_folder_never_drops_images_silently(tmp_path, rng):
    img = png_bytes(rng.integers(0, 256, (9, 7), dtype=np.uint8))
    (tmp_path / "mixed" / "cat").mkdir(parents=True)
    (tmp_path / "mixed" / "cat" / "a.png").write_bytes(img)
    (tmp_path / "mixed" / "top.png").write_bytes(img)
    with pytest.raises(ValueError, match=r"mixed: 1 .png images at the top level beside 1 class sub-folders \(cat\)"):
        datasets.load(tmp_path / "mixed")
    (tmp_path / "nested" / "cat" / "kittens").mkdir(parents=True)
    (tmp_path / "nested" / "cat" / "kittens" / "a.png").write_bytes(img)
    with pytest.raises(ValueError, match=r"nested/cat: a class folder holds sub-folders \(kittens\)"):
        datasets.load(tmp_path / "nested")
    (tmp_path / "case" / ".thumbnails").mkdir(parents=True)  # hidden entries are not images of the set
    (tmp_path / "case" / "A.PNG").write_bytes(img)
    (tmp_path / "case" / "b.png").write_bytes(img)
    assert datasets.load(tmp_path / "case")[0].shape == (2, 9, 7)


@pytest.mark.parametrize("matplotlib", [True, False])
def test_corrupt_png_names_the_file(tmp_path, rng, monkeypatch, matplotlib):
    if matplotlib:
        pytest.importorskip("matplotlib")
    else:
        monkeypatch.setitem(sys.modules, "matplotlib", None)
        monkeypatch.setitem(sys.modules, "matplotlib.image", None)
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "a.png").write_bytes(png_bytes(rng.integers(0, 256, (9, 7), dtype=np.uint8)))
    (tmp_path / "f" / "b.png").write_bytes(b"GIF89a not a png at all")
    with pytest.raises(ValueError, match=f"{tmp_path / 'f' / 'b.png'}: not a readable PNG image|{tmp_path / 'f' / 'b.png'}: not a PNG"):
        datasets.load(tmp_path / "f")
    (tmp_path / "f" / "b.png").write_bytes(png_bytes(rng.integers(0, 256, (9, 7), dtype=np.uint8))[:40])
    with pytest.raises(ValueError, match=str(tmp_path / "f" / "b.png")):
        datasets.load(tmp_path / "f")


def test_content_digest_sees_every_pixel(rng):
    x = rng.integers(0, 256, (100, 8, 8), dtype=np.uint8)
    changed = x.copy()
    changed[57, 3, 3] ^= 1
    assert datasets.content_digest(x) == datasets.content_digest(x.copy())
    assert datasets.content_digest(changed) != datasets.content_digest(x)
    assert datasets.content_digest(x.astype(np.int16)) != datasets.content_digest(x)
    assert datasets.content_digest(x.reshape(100, 1, 8, 8)) != datasets.content_digest(x)


def test_named_sets_search_order(tmp_path, rng, monkeypatch):
    x = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    home = tmp_path / "mine"
    home.mkdir()
    np.savez(home / "mnist_test.npz", x=x, y=np.arange(5))
    xa, ya = datasets.load("mnist-test", data_home=home)
    np.testing.assert_array_equal(xa, x)
    env = tmp_path / "env"
    write_idx_pair(env / "mnist", "t10k", x[:3], np.arange(3))
    monkeypatch.setenv("NBCLUST_DATA", str(env))
    assert len(datasets.load("mnist-test")[0]) == 3  # found in $NBCLUST_DATA/mnist
    assert len(datasets.load("mnist-test", data_home=home)[0]) == 5  # data_home searched first
    write_idx_pair(env / "fashion-mnist", "train", x[:4], np.arange(4))
    write_idx_pair(env / "fashion-mnist", "t10k", x[:2], np.arange(2))
    assert len(datasets.load("fashion-mnist")[0]) == 6
    assert len(datasets.load("fashion-mnist-test")[1]) == 2
    np.savez(env / "yaleb32.npz", x=x[:, :4, :4], y=np.zeros(5))
    assert datasets.load("yaleb")[0].shape == (5, 4, 4)


def test_usps_and_coil(tmp_path, rng):
    lines = []
    for label in (1, 10):
        vals = rng.uniform(-1, 1, 256)
        lines.append(f"{label} " + " ".join(f"{i + 1}:{v:.6f}" for i, v in enumerate(vals) if i % 3))
    (tmp_path / "usps").mkdir()
    for name in ("usps.bz2", "usps.t.bz2"):
        (tmp_path / "usps" / name).write_bytes(bz2.compress("\n".join(lines).encode()))
    x, y = datasets.load("usps", data_home=tmp_path)
    assert x.shape == (4, 16, 16) and x.dtype == np.uint8
    np.testing.assert_array_equal(y, [0, 9, 0, 9])
    assert x[0, 0, 0] == 128  # value 0 (absent) maps to mid-gray
    coil = tmp_path / "coil-20-proc"
    coil.mkdir()
    for obj in (1, 2, 10):
        for i in range(2):
            (coil / f"obj{obj}__{i}.png").write_bytes(png_bytes(rng.integers(0, 256, (8, 8), dtype=np.uint8)))
    x, y = datasets.load("coil20", data_home=tmp_path)
    assert x.shape == (6, 8, 8)
    np.testing.assert_array_equal(y, [0, 0, 1, 1, 9, 9])


def test_missing_named_set_message(tmp_path):
    with pytest.raises(ValueError, match="apt-get install dataset-fashion-mnist"):
        datasets.load("fashion-mnist")
    with pytest.raises(ValueError, match="mnist_train.npz"):
        datasets.load("mnist", data_home=tmp_path)


@pytest.fixture
def server(tmp_path):
    """A local HTTP server on 127.0.0.1 (random port) serving tmp_path/www, in a thread."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    thread.join(timeout=5)
    httpd.server_close()


def test_download_verified_offline(tmp_path, rng, server, monkeypatch):
    root, url = server
    x = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    y = np.arange(4, dtype=np.uint8)
    write_idx_pair(root / "mnist", "t10k", x, y)
    table = dict(datasets.FILES)
    for kind in ("images-idx3", "labels-idx1"):
        name = f"t10k-{kind}-ubyte.gz"
        digest = hashlib.sha256((root / "mnist" / name).read_bytes()).hexdigest()
        table[("mnist", name)] = ("unused/", "sha256", digest)
    monkeypatch.setattr(datasets, "FILES", table)
    monkeypatch.setenv("NBCLUST_MIRROR", url)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="--download"):
        datasets.load("mnist-test", data_home=cache)
    xa, ya = datasets.load("mnist-test", data_home=cache, download=True)
    np.testing.assert_array_equal(xa, x)
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    # a corrupted file on the server: sha256 mismatch, nothing left in the cache
    (root / "mnist" / "t10k-images-idx3-ubyte.gz").write_bytes(b"evil")
    other = tmp_path / "cache2"
    with pytest.raises(ValueError, match="sha256 mismatch"):
        datasets.load("mnist-test", data_home=other, download=True)
    assert list((other / "mnist").iterdir()) == []
    monkeypatch.setattr(datasets, "MIRROR", url + "/nothing-here")
    with pytest.raises(ValueError, match="download of .* failed"):
        datasets.load("mnist-test", data_home=tmp_path / "cache3", download=True)
