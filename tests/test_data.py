"""Finding, verifying, caching and loading CIFAR-10; validation split; normalisation; batch augmentation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import cifarlab.data as data_mod
from cifarlab.data import (CACHE_NAME, CLASSES, Cifar10, alternating_flips, augment_batch, crop_batch, find_root,
                           flip_batch, load_cifar10, make_splits)
from cifarlab.errors import DataError

from conftest import random_image, save_png, write_batches

pytestmark = pytest.mark.usefixtures("single_thread")


def _refuse_decoding(path):
    raise AssertionError(f"decoded {path} although the cache is valid")


# ---------------------------------------------------------------------------------------------
# Image folders


def test_tiny_folder_loads_with_shapes_labels_and_official_class_order(tiny_folder):
    ds = load_cifar10(tiny_folder.root)
    assert ds.classes == CLASSES
    assert ds.train_x.shape == (60, 32, 32, 3) and ds.train_x.dtype == np.uint8
    assert ds.test_x.shape == (20, 32, 32, 3) and ds.test_x.dtype == np.uint8
    assert ds.train_y.dtype == np.int64
    # Classes in CIFAR-10's order (airplane = 0 ... truck = 9), files in name order within a class.
    assert ds.train_y.tolist() == [label for label in range(10) for _ in range(6)]
    assert ds.test_y.tolist() == [label for label in range(10) for _ in range(2)]


def test_pixels_are_the_png_pixels(tiny_folder):
    ds = load_cifar10(tiny_folder.root)
    truck_1 = np.asarray(Image.open(tiny_folder.image("train", "truck", 1)))
    assert np.array_equal(ds.train_x[9 * 6 + 1], truck_1)
    airplane_0 = np.asarray(Image.open(tiny_folder.image("test", "airplane", 0)))
    assert np.array_equal(ds.test_x[0], airplane_0)


def test_first_load_writes_the_cache_and_the_second_load_uses_it(tiny_folder, monkeypatch):
    first = load_cifar10(tiny_folder.root)
    assert (tiny_folder.root / CACHE_NAME).is_file()
    monkeypatch.setattr(data_mod, "_decode_png", _refuse_decoding)
    second = load_cifar10(tiny_folder.root)
    assert np.array_equal(first.train_x, second.train_x) and np.array_equal(first.test_y, second.test_y)
    assert second.classes == CLASSES


def test_adding_an_image_invalidates_the_cache(tiny_folder):
    load_cifar10(tiny_folder.root)
    save_png(tiny_folder.image("train", "cat", 99), random_image(np.random.default_rng(5), 3))
    ds = load_cifar10(tiny_folder.root)
    assert len(ds.train_y) == 61
    assert np.bincount(ds.train_y).tolist() == [6, 6, 6, 7, 6, 6, 6, 6, 6, 6]


def test_replacing_an_image_invalidates_the_cache(tiny_folder):
    load_cifar10(tiny_folder.root)
    new = np.full((32, 32, 3), 7, dtype=np.uint8)
    path = tiny_folder.image("train", "airplane", 0)
    save_png(path, new)
    import os
    os.utime(path, ns=(1, 1))  # a different mtime even on file systems with coarse timestamps
    assert np.array_equal(load_cifar10(tiny_folder.root).train_x[0], new)


def test_a_corrupt_cache_is_rebuilt(tiny_folder):
    expected = load_cifar10(tiny_folder.root)
    (tiny_folder.root / CACHE_NAME).write_bytes(b"not an npz")
    again = load_cifar10(tiny_folder.root)
    assert np.array_equal(expected.train_x, again.train_x)


def test_broken_folder_is_a_data_error_naming_the_problem(broken_folder):
    folder, names = broken_folder
    with pytest.raises(DataError) as exc:
        load_cifar10(folder.root)
    message = str(exc.value)
    assert names in message
    assert "\n" not in message
    assert not (folder.root / CACHE_NAME).exists()  # nothing half-verified is cached


def test_missing_test_folder_is_a_data_error(tiny_folder):
    import shutil

    shutil.rmtree(tiny_folder.root / "test")
    with pytest.raises(DataError, match="test"):
        load_cifar10(tiny_folder.root)


def test_empty_class_folder_is_a_data_error(tiny_folder):
    for p in (tiny_folder.root / "test" / "deer").iterdir():
        p.unlink()
    with pytest.raises(DataError, match="deer.*no .png images"):
        load_cifar10(tiny_folder.root)


def test_an_unexpected_class_folder_is_a_data_error(tiny_folder):
    (tiny_folder.root / "train" / "unicorn").mkdir()
    with pytest.raises(DataError, match="unicorn"):
        load_cifar10(tiny_folder.root)


def test_folder_without_cifar_is_a_data_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds neither"):
        load_cifar10(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------
# The official python batches


def test_official_python_batches_load(tmp_path):
    train_x, train_y = write_batches(tmp_path, per_batch=4, n_test=6)
    ds = load_cifar10(tmp_path)
    assert ds.classes == CLASSES
    assert ds.train_x.shape == (20, 32, 32, 3) and ds.test_x.shape == (6, 32, 32, 3)
    assert np.array_equal(ds.train_x, train_x)  # channel-major rows turned into (H, W, C) images
    assert ds.train_y.tolist() == train_y.tolist()
    assert (tmp_path / "cifar-10-batches-py" / CACHE_NAME).is_file()


def test_a_missing_batch_file_is_a_data_error(tmp_path):
    write_batches(tmp_path, per_batch=2, n_test=2)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        load_cifar10(tmp_path)


def test_a_corrupt_batch_file_is_a_data_error(tmp_path):
    write_batches(tmp_path, per_batch=2, n_test=2)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"garbage")
    with pytest.raises(DataError, match="test_batch"):
        load_cifar10(tmp_path)


# ---------------------------------------------------------------------------------------------
# Where the data is looked for: --data, then $CIFARLAB_DATA, then ./data


@pytest.fixture
def three_folders(make_folder, tmp_path, monkeypatch):
    """Folders with 1, 2 and 3 train images per class: explicit, $CIFARLAB_DATA, and ./data."""
    explicit = make_folder("explicit", n_train=1, n_test=1).root
    env = make_folder("env", n_train=2, n_test=1).root
    cwd = tmp_path / "cwd"
    make_folder("cwd/data", n_train=3, n_test=1)
    monkeypatch.chdir(cwd)
    return explicit, env


def test_explicit_root_comes_first(three_folders, monkeypatch):
    explicit, env = three_folders
    monkeypatch.setenv("CIFARLAB_DATA", str(env))
    assert find_root(explicit) == explicit
    assert len(load_cifar10(explicit).train_y) == 10


def test_environment_variable_comes_before_the_local_data_folder(three_folders, monkeypatch):
    _, env = three_folders
    monkeypatch.setenv("CIFARLAB_DATA", str(env))
    assert find_root() == env
    assert len(load_cifar10().train_y) == 20


def test_local_data_folder_is_the_last_resort(three_folders):
    assert find_root().resolve() == (three_folders[0].parent / "cwd" / "data").resolve()
    assert len(load_cifar10().train_y) == 30


def test_nothing_found_is_a_data_error_saying_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_root() is None
    with pytest.raises(DataError, match="CIFAR-10 not found.*--data.*CIFARLAB_DATA"):
        load_cifar10()


def test_missing_explicit_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="'.*nowhere' does not exist"):
        load_cifar10(tmp_path / "nowhere")


def test_environment_variable_pointing_nowhere_is_a_data_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CIFARLAB_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="CIFARLAB_DATA.*does not exist"):
        load_cifar10()


# ---------------------------------------------------------------------------------------------
# Splits and normalisation


def numbered(n_per_class: int = 50, n_test: int = 20) -> Cifar10:
    """A synthetic dataset whose image i carries its index in pixel (0, 0) channels 0-1, labels i % 10."""
    n = 10 * n_per_class
    rng = np.random.default_rng(0)
    train_x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    train_x[:, 0, 0, 0] = np.arange(n) % 256
    train_x[:, 0, 0, 1] = np.arange(n) // 256
    test_x = rng.integers(0, 256, size=(10 * n_test, 32, 32, 3), dtype=np.uint8)
    return Cifar10(train_x, np.arange(n) % 10, test_x, np.arange(10 * n_test) % 10, CLASSES, "synthetic")


def indices(split, splits) -> np.ndarray:
    """Recover the image indices of a normalised split from the numbered pixel."""
    mean = torch.tensor(splits.mean).view(1, 3, 1, 1)
    std = torch.tensor(splits.std).view(1, 3, 1, 1)
    u8 = ((split.x * std + mean) * 255).round().to(torch.int64)
    return (u8[:, 0, 0, 0] + 256 * u8[:, 1, 0, 0]).numpy()


def test_validation_split_is_stratified_seeded_and_disjoint():
    ds = numbered()
    splits = make_splits(ds, val=100, seed=3)
    train_idx, val_idx = indices(splits.train, splits), indices(splits.val, splits)
    assert len(val_idx) == 100 and len(train_idx) == 400
    assert np.bincount(splits.val.y.numpy(), minlength=10).tolist() == [10] * 10  # stratified
    assert set(train_idx).isdisjoint(val_idx) and set(train_idx) | set(val_idx) == set(range(500))
    assert np.array_equal(splits.val.y.numpy(), ds.train_y[val_idx])  # labels travel with their images
    again = make_splits(ds, val=100, seed=3)
    assert np.array_equal(indices(again.val, again), val_idx)  # seeded
    other = make_splits(ds, val=100, seed=4)
    assert not np.array_equal(indices(other.val, other), val_idx)


def test_uneven_validation_size_spreads_the_remainder_over_classes():
    counts = np.bincount(make_splits(numbered(), val=13).val.y.numpy(), minlength=10)
    assert counts.sum() == 13 and counts.max() - counts.min() <= 1


def test_subset_keeps_that_many_stratified_images_outside_the_validation_split():
    ds = numbered()
    splits = make_splits(ds, val=50, subset=120, seed=1)
    assert len(splits.train) == 120 and len(splits.val) == 50
    assert np.bincount(splits.train.y.numpy(), minlength=10).tolist() == [12] * 10
    assert set(indices(splits.train, splits)).isdisjoint(indices(splits.val, splits))
    assert len(splits.test) == 200  # the test set is never subset


def test_no_validation_split_by_default():
    splits = make_splits(numbered())
    assert splits.val is None and len(splits.train) == 500


@pytest.mark.parametrize("kwargs,match", [
    ({"val": 500}, "--val 500 leaves no training images"),
    ({"val": 100, "subset": 401}, "--subset 401 is more than the 400"),
])
def test_impossible_split_sizes_are_data_errors(kwargs, match):
    with pytest.raises(DataError, match=match):
        make_splits(numbered(), **kwargs)


def test_normalisation_uses_the_training_statistics():
    ds = numbered()
    splits = make_splits(ds, val=100, subset=200)
    x = splits.train.x.double()
    assert x.shape == (200, 3, 32, 32) and splits.train.x.dtype == torch.float32
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(x.std(dim=(0, 2, 3), unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-4)
    # Test images are normalised with the same (training) mean and std, not their own.
    mean, std = np.asarray(splits.mean), np.asarray(splits.std)
    expected = (ds.test_x / 255.0 - mean) / std
    assert np.allclose(splits.test.x.permute(0, 2, 3, 1).numpy(), expected, atol=1e-5)
    assert splits.test.y.dtype == torch.int64
    assert np.array_equal(splits.test_images, ds.test_x)


# ---------------------------------------------------------------------------------------------
# Augmentation


def batch(n: int = 64) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_flip_batch_flips_exactly_the_masked_images():
    x = batch()
    out = flip_batch(x, seeded(1))
    mask = torch.rand(x.shape[0], generator=seeded(1)) < 0.5  # the mask flip_batch draws first
    assert 0 < mask.sum() < x.shape[0]
    assert torch.equal(out[mask], x.flip(3)[mask])
    assert torch.equal(out[~mask], x[~mask])


def test_crop_batch_returns_32x32_windows_of_the_reflect_padded_input():
    x = batch(32)
    out = crop_batch(x, seeded(2))
    assert out.shape == x.shape
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    offsets = []
    for i in range(x.shape[0]):
        found = [(dy, dx) for dy in range(9) for dx in range(9)
                 if torch.equal(out[i], padded[i, :, dy:dy + 32, dx:dx + 32])]
        assert found, f"image {i} is not a window of its padded input"
        offsets.append(found[0])
    assert len(set(offsets)) > 5  # the translation differs from image to image


@pytest.mark.parametrize("fn", [flip_batch, crop_batch, lambda x, g: augment_batch(x, "crop", g)],
                         ids=["flip", "crop", "crop+flip"])
def test_augmentation_is_deterministic_for_a_seeded_generator(fn):
    x = batch()
    assert torch.equal(fn(x, seeded(7)), fn(x, seeded(7)))
    assert not torch.equal(fn(x, seeded(7)), fn(x, seeded(8)))


def test_a_given_flip_mask_is_used_exactly():
    x = batch(8)
    mask = torch.tensor([True, False] * 4)
    out = augment_batch(x, "flip", seeded(), mask)
    assert torch.equal(out[mask], x.flip(3)[mask]) and torch.equal(out[~mask], x[~mask])


def test_alternating_flips_mirror_every_image_in_every_other_epoch():
    bits = torch.rand(100, generator=seeded(3)) < 0.5
    idx = torch.randperm(100, generator=seeded(4))[:40]
    e1, e2, e3 = (alternating_flips(bits, idx, e) for e in (1, 2, 3))
    assert torch.equal(e1, ~e2) and torch.equal(e1, e3)  # opposite in consecutive epochs
    assert torch.equal(e2, bits[idx])
    assert 0 < int(e1.sum()) < 40  # the starting side is random per image


@pytest.mark.parametrize("kind,alternating", [("crop", False), ("crop", True), ("flip", False), ("none", False)])
@pytest.mark.parametrize("chunk", [1, 3, 5])
def test_an_epoch_drawn_up_front_and_augmented_in_chunks_equals_batch_by_batch(kind, alternating, chunk):
    from cifarlab.data import augment, draw_augment

    batches, bs = 5, 8
    x = batch(batches * bs)
    flips = torch.rand(batches * bs, generator=seeded(9)) < 0.5 if alternating else None
    # Batch by batch with the primitives, as the trainer augmented before issue 11: crop, then flip.
    per_batch = {"none": lambda xb, g, m: xb, "flip": flip_batch,
                 "crop": lambda xb, g, m: flip_batch(crop_batch(xb, g), g, m)}[kind]
    gen = seeded(3)
    expected = torch.cat([per_batch(x[b * bs:(b + 1) * bs], gen, None if flips is None else flips[b * bs:(b + 1) * bs])
                          for b in range(batches)])
    after_batches = torch.rand(1, generator=gen)  # the generator's state after the per-batch draws

    gen = seeded(3)
    draws = draw_augment(kind, batches, bs, gen, "cpu", flips)
    parts = [augment(x[i * bs:(i + chunk) * bs], draws[i * bs:(i + chunk) * bs]) for i in range(0, batches, chunk)]
    assert torch.equal(torch.cat(parts), expected)
    assert torch.equal(torch.rand(1, generator=gen), after_batches)  # same numbers drawn, no more, no fewer
    if kind != "none":
        assert not torch.equal(expected, x)


def test_augment_none_returns_the_batch_unchanged():
    x = batch(4)
    assert torch.equal(augment_batch(x, "none", seeded()), x)


# ---------------------------------------------------------------------------------------------
# The real copy


@pytest.mark.realdata
def test_real_copy_has_50000_train_and_10000_test_images(real_cifar):
    assert real_cifar.classes == CLASSES
    assert real_cifar.train_x.shape == (50_000, 32, 32, 3)
    assert real_cifar.test_x.shape == (10_000, 32, 32, 3)
    assert np.bincount(real_cifar.train_y, minlength=10).tolist() == [5_000] * 10
    assert np.bincount(real_cifar.test_y, minlength=10).tolist() == [1_000] * 10


@pytest.mark.realdata
def test_real_copy_training_mean_and_std(real_cifar):
    # Exact moments from each channel's 256-bin histogram (a float64 copy of 153M values takes ~10 s).
    levels = np.arange(256) / 255.0
    hist = np.stack([np.bincount(real_cifar.train_x[..., c].ravel(), minlength=256) for c in range(3)])
    mean = hist @ levels / hist.sum(1)
    std = np.sqrt(hist @ levels**2 / hist.sum(1) - mean**2)
    assert np.round(mean, 4).tolist() == [0.4914, 0.4822, 0.4465]
    assert np.round(std, 4).tolist() == [0.2470, 0.2435, 0.2616]
