import gzip

import numpy as np
import pytest
import torch

from trainlab.config import data_table
from trainlab.data import build
from trainlab.data.batches import BatchStream
from trainlab.data.images import random_affine
from trainlab.errors import UserError


def test_digits_split_is_fixed_disjoint_and_stratified():
    a, b = build(data_table(source="digits")), build(data_table(source="digits"))
    assert a.info["input_shape"] == [1, 8, 8] and a.info["num_classes"] == 10
    sizes = a.info["split_sizes"]
    assert sizes["train"] + sizes["val"] + sizes["test"] == 1797
    for s in ("train", "val", "test"):
        assert torch.equal(a.splits[s].x, b.splits[s].x)
    # Every class is in every split, in about its overall proportion.
    assert torch.bincount(a.splits["test"].y, minlength=10).min() >= 20
    # A different split seed gives a different split.
    c = build(data_table(source="digits", split_seed=1))
    assert not torch.equal(a.splits["test"].y, c.splits["test"].y)


def test_standardization_uses_training_statistics_only():
    d = build(data_table(source="breast_cancer"))
    x = d.splits["train"].x
    assert torch.allclose(x.mean(0), torch.zeros(30), atol=1e-4)
    assert torch.allclose(x.std(0, unbiased=False), torch.ones(30), atol=1e-3)
    assert len(d.info["x_mean"]) == 30


def test_regression_targets_standardized_with_stats_kept():
    d = build(data_table(source="diabetes"))
    assert d.info["task"] == "regression" and d.splits["train"].y.dtype == torch.float32
    assert abs(float(d.splits["train"].y.mean())) < 1e-4 and d.info["y_std"] > 1


def test_subset_keeps_only_n_training_examples():
    assert len(build(data_table(source="digits", subset=100)).splits["train"]) == 100


def write_csv(path, text):
    path.write_text(text)
    return str(path)


def test_csv_with_string_labels_and_chosen_target(tmp_path):
    rows = "\n".join(f"{i},{i * 0.5},{'cat' if i % 2 else 'dog'},{i % 3}" for i in range(40))
    p = write_csv(tmp_path / "a.csv", "f1,f2,animal,other\n" + rows + "\n")
    d = build(data_table(source="csv", path=p, target="animal"))
    assert d.info["task"] == "classification" and d.info["class_names"] == ["cat", "dog"]
    assert d.info["feature_names"] == ["f1", "f2", "other"] and d.info["input_shape"] == [3]


def test_csv_numeric_target_is_regression_when_continuous(tmp_path):
    rows = "\n".join(f"{i},{i * 1.37 + 0.1}" for i in range(60))
    d = build(data_table(source="csv", path=write_csv(tmp_path / "r.csv", "x,y\n" + rows)))
    assert d.info["task"] == "regression"


def test_csv_non_numeric_feature_names_column_and_row(tmp_path):
    p = write_csv(tmp_path / "b.csv", "a,b,y\n1,2,0\n3,hello,1\n")
    with pytest.raises(UserError, match=r"column 'b' .* not numeric: row 3 holds 'hello'"):
        build(data_table(source="csv", path=p))


def test_csv_missing_target_and_missing_file(tmp_path):
    p = write_csv(tmp_path / "c.csv", "a,b\n1,2\n")
    with pytest.raises(UserError, match="target column 'zz'"):
        build(data_table(source="csv", path=p, target="zz"))
    with pytest.raises(UserError, match="does not exist"):
        build(data_table(source="csv", path=str(tmp_path / "none.csv")))
    with pytest.raises(UserError, match="needs data.path"):
        build(data_table(source="csv"))


def test_csv_empty_dataset(tmp_path):
    with pytest.raises(UserError, match="no data rows"):
        build(data_table(source="csv", path=write_csv(tmp_path / "e.csv", "a,y\n")))


def test_csv_nan_features_are_an_error(tmp_path):
    rows = "\n".join(f"{'nan' if i == 5 else i},{i % 2}" for i in range(30))
    with pytest.raises(UserError, match="NaN or infinite"):
        build(data_table(source="csv", path=write_csv(tmp_path / "n.csv", "a,y\n" + rows)))


def test_label_outside_the_classes(tmp_path):
    rows = "\n".join(f"{i},{i % 3}" for i in range(30))
    p = write_csv(tmp_path / "l.csv", "a,y\n" + rows)
    with pytest.raises(UserError, match=r"label 2 .* outside the classes 0\.\.1"):
        build(data_table(source="csv", path=p, task="classification", num_classes=2))


def test_too_few_examples_for_the_split(tmp_path):
    with pytest.raises(UserError, match="too few"):
        build(data_table(source="csv", path=write_csv(tmp_path / "s.csv", "a,y\n1,0\n2,1\n")))


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("circle", "square"):
        (tmp_path / cls).mkdir()
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (12, 10), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "square" / "notes.txt").write_text("ignored")
    d = build(data_table(source="image_folder", path=str(tmp_path), image_size=8))
    assert d.info["class_names"] == ["circle", "square"] and d.info["input_shape"] == [1, 8, 8]
    assert sum(d.info["split_sizes"].values()) == 20
    rgb = build(data_table(source="image_folder", path=str(tmp_path), image_size=8, grayscale=False))
    assert rgb.info["input_shape"] == [3, 8, 8]


def test_image_folder_unreadable_and_empty(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(UserError, match="holds no images"):
        build(data_table(source="image_folder", path=str(tmp_path)))
    (tmp_path / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="cannot read image"):
        build(data_table(source="image_folder", path=str(tmp_path)))


def write_idx(path, array, gz=False):
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)
    return str(path)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_files(tmp_path, gz):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (40, 6, 6), dtype=np.uint8)
    y = (np.arange(40) % 4).astype(np.uint8)
    suffix = ".gz" if gz else ""
    d = build(data_table(source="idx", path=write_idx(tmp_path / f"x.idx{suffix}", x, gz),
                         labels_path=write_idx(tmp_path / f"y.idx{suffix}", y, gz)))
    assert d.info["input_shape"] == [1, 6, 6] and d.info["num_classes"] == 4


def test_idx_bad_inputs(tmp_path):
    x = np.zeros((10, 4, 4), np.uint8)
    xp = write_idx(tmp_path / "x.idx", x)
    with pytest.raises(UserError, match="10 images but .* 9 labels"):
        build(data_table(source="idx", path=xp, labels_path=write_idx(tmp_path / "y.idx", np.zeros(9, np.uint8))))
    (tmp_path / "junk.idx").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(UserError, match="bad magic"):
        build(data_table(source="idx", path=str(tmp_path / "junk.idx"), labels_path=xp))
    with pytest.raises(UserError, match="truncated"):
        (tmp_path / "t.idx").write_bytes(open(xp, "rb").read()[:-5])
        build(data_table(source="idx", path=str(tmp_path / "t.idx"), labels_path=xp))
    labels = write_idx(tmp_path / "l.idx", np.full(10, 7, np.uint8))
    with pytest.raises(UserError, match="outside the classes"):
        build(data_table(source="idx", path=xp, labels_path=labels, num_classes=5))


def test_batch_stream_resumes_exactly_mid_epoch():
    d = build(data_table(source="digits", batch_size=100, augment=True))
    a = d.train_batches(seed=3)
    for _ in range(15):  # into the second epoch
        next(a)
    b = d.train_batches(seed=3)
    b.load_state_dict(a.state_dict())
    for _ in range(5):
        x, y = next(a), next(b)
        assert torch.equal(x["x"], y["x"]) and torch.equal(x["y"], y["y"])
    assert a.epoch == 1


def test_every_epoch_is_a_permutation_of_the_training_split():
    d = build(data_table(source="digits", batch_size=64))
    s = d.train_batches(seed=0)
    ys = torch.cat([next(s)["y"] for _ in range(s.batches_per_epoch)])
    n = s.batches_per_epoch * 64
    assert len(ys) == n and n > len(d.splits["train"]) - 64


def test_augmentation_moves_pixels_and_is_seeded():
    x = torch.zeros(4, 1, 8, 8)
    x[:, :, 2:6, 3:5] = 1.0
    a = random_affine(x, torch.Generator().manual_seed(0), 1.0, 10.0)
    b = random_affine(x, torch.Generator().manual_seed(0), 1.0, 10.0)
    assert a.shape == x.shape and torch.equal(a, b) and not torch.allclose(a, x)
    assert torch.allclose(random_affine(x, torch.Generator(), 0.0, 0.0), x, atol=1e-5)  # no-op at zero


@pytest.mark.parametrize("n, chars, size", [
    (0, "0 characters", "0 B"), (812, "812 characters", "812 B"), (47_100, "47.1 K characters", "47.1 KB"),
    (999_960, "1.0 M characters", "1.0 MB"), (3_200_000, "3.2 M characters", "3.2 MB"),
    (1_100_000_000, "1.1 G characters", "1.1 GB"),
])
def test_sizes_are_shown_in_the_unit_that_fits(n, chars, size):
    from trainlab.data.text import human_size

    assert human_size(n, "characters") == chars and human_size(n) == size


def test_text_banner_counts_47_kb_as_thousands_of_characters(tmp_path, capsys):
    from trainlab.data.text import TextData

    (tmp_path / "a.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 1070)  # 47,080 characters
    TextData(data_table(source="text", path=str(tmp_path / "a.txt"), tokenizer="char", split="tail", block_size=16,
                        cache_dir=str(tmp_path / "cache")))
    assert "(47.1 K characters)" in capsys.readouterr().out
