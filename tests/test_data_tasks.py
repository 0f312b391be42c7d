"""Real-data tasks on tiny fixtures the tests write themselves: MNIST IDX files,
text files, parquet/CSV/JSONL tables; ListOps against an independent evaluator.

No test touches the network: ``datasets`` is replaced by a stub module whose
``load_dataset`` either fails like an offline hub or returns in-memory splits.
"""

from __future__ import annotations

import gzip
import math
import os
import random
import statistics
import struct
import sys
import types

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import baselines
import tasks
import tasks.data as data
from baselines.models import ModelOutput
from suite.errors import UserError
from tasks import listops as lo
from tasks.sentiment import tokenize

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """Fresh cache folder, no data directory, and a ``datasets`` stub that acts offline."""
    monkeypatch.setenv(data.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.setenv(data.ENV_DATA, "")  # empty means unset; teardown restores the real value
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(data, "_memo", {})
    monkeypatch.setattr(data, "_hub_failures", {})
    calls: list[tuple] = []

    def load_dataset(path, name=None, **kw):
        calls.append((path, name, kw))
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub (offline in tests)")

    stub = types.SimpleNamespace(load_dataset=load_dataset, calls=calls)
    monkeypatch.setitem(sys.modules, "datasets", stub)
    return stub


@pytest.fixture
def data_dir(monkeypatch, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv(data.ENV_DATA, str(root))
    return root


# -- MNIST ------------------------------------------------------------------------


def write_idx(path, array: np.ndarray) -> None:
    """LeCun's IDX format, written independently of the reader under test."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(payload)


def write_mnist(folder, n_train=30, n_test=12, seed=0, gz=False):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test)}
    for name, arr in arrays.items():
        write_idx(folder / (name + (".gz" if gz else "")), arr)
    return {k: v.astype(np.uint8) for k, v in arrays.items()}


def rows(task, split):
    """All of a split's inputs (N, T, k) and labels, through eval_batches."""
    batches = list(task.eval_batches(split, 7, CPU))
    return torch.cat([b.x for b in batches]), torch.cat([b.y for b in batches])


def test_creating_a_task_loads_no_data():
    """Validation and labels build tasks without data (none exists here)."""
    from suite.spec import make_spec

    for name in ("pixel-mnist", "permuted-mnist", "char-lm", "sentiment", "listops"):
        spec = make_spec(name, {}, "rnn", {}, {}, 0, "cpu")
        assert spec.label().startswith(name)


def test_pixel_mnist_shapes_order_and_splits(data_dir):
    arrays = write_mnist(data_dir)
    task = tasks.create("pixel-mnist", n_val=10)
    assert (task.seq_len, task.input_size, task.output_size) == (784, 1, 10)
    x, y = rows(task, "test")
    assert x.shape == (12, 784, 1)
    images = torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float()
    # step t of image i is pixel (t // 28, t % 28): scan-line order, scaled by 1/255
    for t in (0, 27, 28, 29, 400, 783):
        torch.testing.assert_close(x[:, t, 0], images[:, t // 28, t % 28] / 255)
    assert torch.equal(y, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())
    assert 0.0 <= x.min() and x.max() <= 1.0
    b = task.train_batch(5, torch.Generator().manual_seed(0), CPU)
    assert b.x.shape == (5, 784, 1) and b.y.shape == (5,) and b.lengths is None

    # validation is held out of the training images: disjoint, together all 30
    train = task.splits()["train"][0]
    val = task.splits()["val"][0]
    assert (len(train), len(val)) == (20, 10)
    every = {bytes(r) for r in arrays["train-images-idx3-ubyte"].reshape(30, -1)}
    seen_train = {bytes(r.numpy()) for r in train}
    seen_val = {bytes(r.numpy()) for r in val}
    assert not seen_train & seen_val and seen_train | seen_val == every
    # seeded: the same data_seed gives the same split, another seed another one
    assert torch.equal(tasks.create("pixel-mnist", n_val=10).splits()["val"][0], val)
    assert not torch.equal(tasks.create("pixel-mnist", n_val=10, data_seed=1).splits()["val"][0], val)
    sub_task = tasks.create("pixel-mnist", n_val=10, n_train=5, n_test=4)
    sub = sub_task.splits()
    assert [len(sub[s][1]) for s in ("train", "val", "test")] == [5, 10, 4]
    # n_test: the first N test images, as its help says
    assert torch.equal(sub["test"][1], torch.from_numpy(arrays["t10k-labels-idx1-ubyte"][:4]).long())
    assert torch.equal(sub["test"][0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"][:4].reshape(4, -1)))
    # training batches come from the training split only, and reach every image of it
    drawn = sub_task.train_batch(2000, torch.Generator().manual_seed(1), CPU)
    pixels = (drawn.x[:, :, 0] * 255).round().to(torch.uint8)
    index = {bytes(r.numpy()): i for i, r in enumerate(sub["train"][0])}
    held = {bytes(r.numpy()) for s in ("val", "test") for r in sub[s][0]}
    keys = [bytes(r.numpy()) for r in pixels]
    assert all(k in index and k not in held for k in keys)
    assert {index[k] for k in keys} == set(range(5))
    assert all(int(drawn.y[j]) == int(sub["train"][1][index[k]]) for j, k in enumerate(keys))


def test_row_by_row_reads_one_image_row_per_step(data_dir):
    arrays = write_mnist(data_dir / "mnist", gz=True)  # gzipped files in mnist/
    task = tasks.create("pixel-mnist", n_val=10, pixels_per_step=28)
    x, _ = rows(task, "test")
    assert x.shape == (12, 28, 28) and task.seq_len == 28 and task.input_size == 28
    torch.testing.assert_close(x, torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float() / 255)


def test_permutation_is_a_true_permutation_shared_by_splits_and_runs(data_dir):
    write_mnist(data_dir)
    plain = tasks.create("pixel-mnist", n_val=10)
    perm_task = tasks.create("permuted-mnist", n_val=10, perm_seed=3)
    perm = perm_task.permutation
    assert torch.equal(perm.sort().values, torch.arange(784))  # every pixel exactly once
    assert not torch.equal(perm, torch.arange(784))
    assert torch.equal(tasks.create("permuted-mnist", n_val=10, perm_seed=3).permutation, perm)
    assert not torch.equal(tasks.create("permuted-mnist", perm_seed=4).permutation, perm)
    assert perm_task.params()["perm_seed"] == 3  # part of the run's spec
    for split in ("train", "val", "test"):
        xp, yp = perm_task.splits()[split]
        x, y = plain.splits()[split]
        assert torch.equal(xp, x[:, perm]) and torch.equal(yp, y)


def test_permutation_with_replacement_is_cooijmans_draw(data_dir):
    """perm_kind=with_replacement: 784 positions drawn uniformly with replacement (their
    np.random.randint(0, 784, 784)): about 1 - 1/e of the pixels kept, some twice, the
    same for every split; its kind is part of the run's spec."""
    write_mnist(data_dir)
    plain = tasks.create("pixel-mnist", n_val=10)
    task = tasks.create("permuted-mnist", n_val=10, perm_seed=3, perm_kind="with_replacement")
    perm = task.permutation
    assert perm.shape == (784,) and perm.min() >= 0 and perm.max() < 784
    kept = perm.unique().numel() / 784
    assert 0.58 < kept < 0.68  # E = 1 - (1 - 1/784)^784 = 0.632
    assert torch.equal(perm, torch.randint(0, 784, (784,), generator=torch.Generator().manual_seed(3)))
    assert task.params()["perm_kind"] == "with_replacement"
    assert tasks.create("permuted-mnist").params()["perm_kind"] == "randperm"
    for split in ("train", "val", "test"):
        assert torch.equal(task.splits()[split][0], plain.splits()[split][0][:, perm])

def test_mnist_processed_data_is_cached_on_disk(data_dir, monkeypatch, tmp_path):
    write_mnist(data_dir)
    first = tasks.create("pixel-mnist", n_val=10).splits()["test"][0]
    assert list((tmp_path / "cache").glob("pixel-mnist-*.pt"))
    monkeypatch.setattr(data, "_memo", {})  # a new process: only the disk cache remains

    def no_reading(*a, **k):
        raise AssertionError("the IDX files were parsed again")

    with monkeypatch.context() as m:
        m.setattr("tasks.mnist.read_idx", no_reading)
        assert torch.equal(tasks.create("pixel-mnist", n_val=10).splits()["test"][0], first)
    arrays = write_mnist(data_dir, n_test=5, seed=1)  # an edited file changes the key: read again
    again = tasks.create("pixel-mnist", n_val=10).splits()["test"][0]
    assert torch.equal(again, torch.from_numpy(arrays["t10k-images-idx3-ubyte"].reshape(5, 784)))


def test_mnist_from_the_hub_layout(offline):
    """The hub path turns ylecun/mnist's image/label columns into the same tensors."""
    rng = np.random.default_rng(0)
    imgs = {s: rng.integers(0, 256, (n, 28, 28)).astype(np.uint8) for s, n in (("train", 20), ("test", 6))}
    offline.load_dataset = lambda path, name=None, **kw: {
        s: {"image": list(imgs[s]), "label": [i % 10 for i in range(len(imgs[s]))]} for s in imgs}
    task = tasks.create("pixel-mnist", n_val=5)
    x, y = rows(task, "test")
    torch.testing.assert_close(x[..., 0], torch.from_numpy(imgs["test"].reshape(6, 784)).float() / 255)
    assert y.tolist() == [0, 1, 2, 3, 4, 5]


def test_missing_mnist_is_one_line_naming_hub_and_files(offline, monkeypatch, tmp_path):
    task = tasks.create("permuted-mnist")
    with pytest.raises(UserError) as e:
        task.train_batch(2, torch.Generator(), CPU)
    msg = str(e.value)
    assert "\n" not in msg
    for part in ("permuted-mnist", "ylecun/mnist", "train-images-idx3-ubyte", "RNNBENCH_DATA"):
        assert part in msg
    assert offline.calls and offline.calls[0][0] == "ylecun/mnist"
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv(data.ENV_DATA, str(empty))
    with pytest.raises(UserError, match=f"data directory {empty}"):
        tasks.create("pixel-mnist").splits()
    assert len(offline.calls) == 1  # the failed hub is not asked again in this process


def test_broken_idx_file_is_a_user_error(data_dir):
    write_mnist(data_dir)
    (data_dir / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03garbage")
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte"):
        tasks.create("pixel-mnist", n_val=10).splits()


def test_impossible_split_sizes_are_user_errors(data_dir):
    with pytest.raises(UserError, match="n_val \\+ n_train"):
        tasks.create("pixel-mnist", n_val=50_000, n_train=20_000)
    write_mnist(data_dir)  # 30 training images only
    with pytest.raises(UserError, match="30 training images"):
        tasks.create("pixel-mnist", n_val=100).splits()


def test_data_dir_flag_sets_the_environment(monkeypatch, tmp_path):
    from suite.cli import _specs_from_args, build_parser

    args = build_parser().parse_args(["run", "--task", "seq-digits", "--model", "rnn",
                                      "--data-dir", str(tmp_path)])
    _specs_from_args(args)
    assert data.data_dir() == tmp_path.resolve()
    args.data_dir = str(tmp_path / "nowhere")
    with pytest.raises(UserError, match="nowhere does not exist"):
        _specs_from_args(args)


# -- seq-digits --------------------------------------------------------------------


def test_seq_digits_shapes_splits_and_pixel_order():
    from sklearn.datasets import load_digits

    task = tasks.create("seq-digits")
    assert (task.seq_len, task.input_size) == (64, 1)
    sizes = {s: len(task.splits()[s][1]) for s in ("train", "val", "test")}
    assert sizes == {"train": 1197, "val": 300, "test": 300}
    x, y = rows(task, "test")
    assert x.shape == (300, 64, 1) and 0 <= x.min() and x.max() == 1.0
    # each test sequence is one of sklearn's images in scan-line order, / 16
    digits = load_digits()
    lookup = {bytes(img.astype(np.uint8).tobytes()): int(t) for img, t in zip(digits.images, digits.target)}
    for seq, label in zip(x[:20, :, 0], y[:20]):
        key = bytes((seq * 16).round().to(torch.uint8).view(8, 8).numpy().tobytes())
        assert lookup[key] == int(label)
    # the three splits partition the 1797 images
    every = sorted(bytes(img.astype(np.uint8).tobytes()) for img in digits.images)
    parts = sorted(bytes(r.numpy()) for s in ("train", "val", "test") for r in task.splits()[s][0])
    assert parts == every


# -- char-lm -----------------------------------------------------------------------


class Bigram(nn.Module):
    """A state-free model with fixed next-character logits per current character."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table, self.offsets = table, []

    def run(self, x, lengths=None, state=None, offset=0):
        self.offsets.append((offset, x.shape[1]))
        return ModelOutput(self.table[x], x.float(), state)


def test_char_lm_splits_vocab_and_training_windows(data_dir):
    text = "".join(chr(97 + (i * 7) % 26) for i in range(2000))
    (data_dir / "corpus.txt").write_text(text)
    task = tasks.create("char-lm", corpus="local", path="corpus.txt", window=16)
    d = task.data()
    assert [len(d[s]) for s in ("train", "val", "test")] == [1800, 100, 100]
    assert task.vocab == sorted(set(text[:1800])) and task.vocab_size == task.output_size
    decode = lambda ids: "".join(task.vocab[i] for i in ids.tolist())
    assert decode(d["val"]) == text[1800:1900]
    b = task.train_batch(8, torch.Generator().manual_seed(0), CPU)
    assert b.x.shape == b.y.shape == (8, 16)
    assert torch.equal(b.x[:, 1:], b.y[:, :-1])  # targets are the inputs shifted by one
    for row_x, row_y in zip(b.x, b.y):
        assert decode(row_x) + decode(row_y[-1:]) in text[:1800]


ABACAB = "abacabadabacabaeabacab" * 3 + "ad"


def _abacab(data_dir):
    """char-lm on a folder whose three splits are ABACAB each, windows of 4."""
    (data_dir / "t").mkdir()
    for name in ("train.txt", "valid.txt", "test.txt"):
        (data_dir / "t" / name).write_text(ABACAB)
    return tasks.create("char-lm", corpus="local", path="t", window=4)


def test_bpc_matches_a_hand_computed_value(data_dir):
    text = ABACAB
    task = _abacab(data_dir)
    V = task.vocab_size
    table = torch.randn(V, V, generator=torch.Generator().manual_seed(0))
    # by hand: mean over consecutive pairs of -log2 softmax(table[current])[next]
    logp = torch.log_softmax(table.double(), -1) / math.log(2)
    ids = [task.vocab.index(c) for c in text]
    expected = -sum(logp[a, b].item() for a, b in zip(ids, ids[1:])) / (len(ids) - 1)
    for batch_size in (1, 3, 5, 500):  # streams and padding must not change the value
        model = Bigram(table)
        got = task.evaluate(model, "val", CPU, batch_size)
        assert got["bpc"] == pytest.approx(expected, rel=1e-6)
        starts = [sum(t for _, t in model.offsets[:i]) for i in range(len(model.offsets))]
        assert [o for o, _ in model.offsets] == starts  # each window continues the last
        assert got["loss"] == pytest.approx(expected * math.log(2), rel=1e-6)


@pytest.mark.parametrize("name", ["gru", "bn-lstm"])
def test_char_lm_evaluation_carries_state_across_windows(data_dir, name):
    """With one stream, windowed evaluation equals one pass over the whole split: for a
    batch-normalized model too, whose population statistics of a window's steps are
    those of their place in the stream (past the training length, the last step's), not
    those of steps 0.. again."""
    (data_dir / "c.txt").write_text("the cat sat on the mat. " * 60)
    task = tasks.create("char-lm", corpus="local", path="c.txt", window=7)
    model = baselines.create(name, vocab_size=task.vocab_size, output_size=task.output_size,
                             target="every", hidden_size=12)
    with torch.no_grad():  # population statistics of 9 training steps, different per step
        for seed in range(3):
            model(torch.randint(0, task.vocab_size, (8, 9), generator=torch.Generator().manual_seed(seed)))
    model.eval()
    ids = task.data()["val"].long()
    with torch.no_grad():
        logits = model(ids[None, :-1])[0]
    whole = torch.nn.functional.cross_entropy(logits, ids[1:]).item() / math.log(2)
    assert task.evaluate(model, "val", CPU, 1)["bpc"] == pytest.approx(whole, rel=1e-5)
    fresh = tasks.create("char-lm", corpus="local", path="c.txt", window=len(ids))
    assert fresh.evaluate(model, "val", CPU, 1)["bpc"] == pytest.approx(whole, rel=1e-5)


def test_char_lm_test_streams_scores_the_test_split_as_one_stream(data_dir):
    """test_streams=1 scores the test split in one stream whatever the evaluation batch
    size (Cooijmans et al.'s test), equal to one pass over it; validation keeps the
    batch size's streams; the setting is part of the run's spec."""
    (data_dir / "c.txt").write_text("the cat sat on the mat; a dog ran to the log. " * 40)
    one = tasks.create("char-lm", corpus="local", path="c.txt", window=7, test_streams=1)
    many = tasks.create("char-lm", corpus="local", path="c.txt", window=7)
    assert one.params()["test_streams"] == 1 and many.params()["test_streams"] == 0
    assert next(one.eval_batches("test", 50, CPU)).x.shape[0] == 1
    assert next(many.eval_batches("test", 50, CPU)).x.shape[0] > 1
    assert next(one.eval_batches("val", 50, CPU)).x.shape[0] > 1
    torch.manual_seed(0)
    model = baselines.create("lstm", vocab_size=one.vocab_size, output_size=one.output_size,
                             target="every", hidden_size=12).eval()
    ids = one.data()["test"].long()
    with torch.no_grad():
        whole = torch.nn.functional.cross_entropy(model(ids[None, :-1])[0], ids[1:]).item() / math.log(2)
    assert one.evaluate(model, "test", CPU, 50)["bpc"] == pytest.approx(whole, rel=1e-5)
    assert many.evaluate(model, "test", CPU, 50)["bpc"] != pytest.approx(whole, rel=1e-5)

def test_ptb_char_and_word_files_give_the_same_text(data_dir):
    sents = ["aer banknote berlitz", "pierre <unk> N years old"]
    (data_dir / "ptb").mkdir()
    for s in ("train", "valid", "test"):
        (data_dir / "ptb" / f"ptb.{s}.txt").write_text("".join(f" {x} \n" for x in sents))
    words = tasks.create("char-lm", window=5).data()
    for s in ("train", "valid", "test"):
        chars = "\n".join(" ".join(x.replace(" ", "_")) for x in sents) + "\n"
        (data_dir / "ptb" / f"ptb.char.{s}.txt").write_text(chars)
    data._memo.clear()
    chars = tasks.create("char-lm", window=5).data()
    assert chars["vocab"] == words["vocab"] and torch.equal(chars["train"], words["train"])
    text = "".join(chars["vocab"][i] for i in chars["train"].tolist())
    assert text == "aer banknote berlitz\npierre <unk> N years old\n"


def test_char_lm_unseen_characters_map_to_unk(data_dir):
    (data_dir / "u").mkdir()
    for name, t in (("train.txt", "aabbab"), ("val.txt", "abz"), ("test.txt", "ab")):
        (data_dir / "u" / name).write_text(t)
    task = tasks.create("char-lm", corpus="local", path="u", window=2)
    assert task.vocab == ["a", "b", "<unk>"]
    assert task.data()["val"].tolist() == [0, 1, 2]


def test_char_lm_hub_layout_and_missing_corpus(offline):
    with pytest.raises(UserError) as e:
        tasks.create("char-lm", corpus="text8").data()
    assert "afmck/text8" in str(e.value) and "text8.zip" in str(e.value) and "\n" not in str(e.value)
    parts = {"train": "to be or not to be that is the question " * 5, "validation": "that is", "test": "the question"}
    offline.load_dataset = lambda path, name=None, **kw: (offline.calls.append((path, kw)) or
                                                          {s: {"text": [t]} for s, t in parts.items()})
    task = tasks.create("char-lm", corpus="shakespeare", window=10)
    assert "".join(task.vocab[i] for i in task.data()["test"].tolist()) == "the question"
    assert offline.calls[-1] == ("karpathy/tiny_shakespeare",
                                 {"revision": "refs/convert/parquet", "data_dir": "default"})


# -- sentiment ---------------------------------------------------------------------

WORDS = ["good", "great", "bad", "awful", "movie", "plot", "acting", "the"]


def reviews(n, seed):
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, rng.integers(1, 15))) for _ in range(n)]
    labels = [int(sum(w in ("good", "great") for w in t.split()) > sum(w in ("bad", "awful") for w in t.split()))
              for t in texts]
    return pd.DataFrame({"text": texts, "label": labels})


def test_sentiment_local_tables_splits_and_vocab(data_dir):
    folder = data_dir / "imdb"
    folder.mkdir()
    train = reviews(60, 0)
    test = reviews(20, 1)
    test.loc[0, "text"] = "zebra good"  # a word never seen in training
    train[:35].to_parquet(folder / "train-00000-of-00002.parquet")  # shards, as on the hub
    train[35:].to_parquet(folder / "train-00001-of-00002.parquet")
    test.to_csv(folder / "test.csv", index=False)
    task = tasks.create("sentiment", n_val=15, max_len=10)
    s = task.token_splits()
    assert [len(s[k][2]) for k in ("train", "val", "test")] == [45, 15, 20]
    vocab = task.data()["vocab"]
    assert vocab[:2] == ["<pad>", "<unk>"] and "zebra" not in vocab and task.vocab_size == len(vocab)
    ids, lengths, labels = s["test"]
    assert ids[0, :2].tolist() == [1, vocab.index("good")] and lengths[0] == 2
    assert lengths.max() <= 10 and (ids[0, 2:] == 0).all()
    assert labels.tolist() == test["label"].tolist()
    b = task.train_batch(6, torch.Generator().manual_seed(0), CPU)
    assert b.x.shape == (6, int(b.lengths.max())) and b.y.shape == (6,)


def test_sentiment_padding_does_not_change_results(data_dir):
    folder = data_dir / "imdb"
    folder.mkdir()
    reviews(40, 0).to_json(folder / "train.jsonl", orient="records", lines=True)
    reviews(25, 1).to_parquet(folder / "test.parquet")
    task = tasks.create("sentiment", n_val=5, tokens="char", max_len=60)
    torch.manual_seed(0)
    model = baselines.create("lstm", vocab_size=task.vocab_size, output_size=2, hidden_size=8).eval()
    one_by_one = task.evaluate(model, "test", CPU, batch_size=1)  # no padding at all
    padded = task.evaluate(model, "test", CPU, batch_size=25)
    assert padded["loss"] == pytest.approx(one_by_one["loss"], rel=1e-5)
    assert padded["acc"] == one_by_one["acc"]
    batch = next(task.eval_batches("test", 25, CPU))
    assert (batch.lengths < batch.x.shape[1]).any()  # the comparison did involve padding
    with torch.no_grad():
        out = model(batch.x, batch.lengths)
        for i in range(25):
            n = int(batch.lengths[i])
            torch.testing.assert_close(out[i], model(batch.x[i:i + 1, :n])[0], rtol=1e-5, atol=1e-6)


def test_sst2_hidden_test_labels_use_validation_as_test(data_dir):
    folder = data_dir / "sst2"
    folder.mkdir()
    train, val, test = reviews(50, 0), reviews(12, 1), reviews(9, 2)
    test["label"] = -1
    for df, name in ((train, "train"), (val, "validation"), (test, "test")):
        df.rename(columns={"text": "sentence"}).to_parquet(folder / f"{name}.parquet")
    s = tasks.create("sentiment", dataset="sst2", n_val=10).token_splits()
    assert [len(s[k][2]) for k in ("train", "val", "test")] == [40, 10, 12]
    assert s["test"][2].tolist() == val["label"].tolist()


def test_sentiment_bad_tables_and_missing_data(data_dir):
    with pytest.raises(UserError, match="stanfordnlp/imdb.*imdb/train"):
        tasks.create("sentiment").data()
    folder = data_dir / "mine"
    folder.mkdir()
    pd.DataFrame({"body": ["x"], "label": [1]}).to_csv(folder / "train.csv", index=False)
    pd.DataFrame({"body": ["x"], "label": [1]}).to_csv(folder / "test.csv", index=False)
    with pytest.raises(UserError, match="text column"):
        tasks.create("sentiment", dataset="local", path="mine").data()
    pd.DataFrame({"text": ["x", "y"], "label": [1, 7]}).to_csv(folder / "train.csv", index=False)
    with pytest.raises(UserError, match="labels must be 0/1"):
        tasks.create("sentiment", dataset="local", path=str(folder)).data()
    with pytest.raises(UserError, match="path=... exactly when"):
        tasks.create("sentiment", dataset="local")


# -- ListOps -----------------------------------------------------------------------


def parse(tokens: list[str], i: int = 0) -> tuple[int, int, int]:
    """Recursive descent: (value, next index, depth) of the expression at ``tokens[i]``.

    Independent of the generator's stack evaluator; MED is ``int(statistics.median)``
    (LRA's ``int(np.median)``), SM the sum mod 10.
    """
    op = tokens[i]
    assert op in ("[MIN", "[MAX", "[MED", "[SM"), op
    args, depth, i = [], 1, i + 1
    while tokens[i] != "]":
        if tokens[i].isdigit():
            args.append(int(tokens[i]))
            i += 1
        else:
            v, i, d = parse(tokens, i)
            args.append(v)
            depth = max(depth, d + 1)
    fn = {"[MIN": min, "[MAX": max, "[MED": lambda a: int(statistics.median(a)),
          "[SM": lambda a: sum(a) % 10}[op]
    return fn(args), i + 1, depth


def test_listops_labels_match_an_independent_parser():
    task = tasks.create("listops", max_length=60, min_length=8, max_depth=4, max_args=5,
                        n_train=300, n_val=50, n_test=50)
    ids, lengths, labels = task.token_splits()["train"]
    assert task.vocab_size == 16 and task.output_size == 10
    depths = []
    for row, n, label in zip(ids, lengths, labels):
        toks = [lo.TOKENS[i] for i in row[:n].tolist()]
        assert (row[n:] == lo.PAD).all() and 8 <= n <= 60
        value, end, depth = parse(toks)
        assert end == n and value == label and depth <= 3  # max_depth - 1, as LRA's generator
        depths.append(depth)
    assert max(depths) == 3 and len(set(labels.tolist())) == 10  # nested that deep, all classes occur
    b = task.train_batch(16, torch.Generator().manual_seed(0), CPU)
    assert b.lengths is not None and b.x.shape == (16, int(b.lengths.max()))


def _operators(tokens):
    """(depth, [is each argument an operator]) of every operator of an expression, in order."""
    out, stack = [], []
    for tok in tokens:
        if tok in lo.OPS:
            if stack:
                stack[-1][1].append(True)
            stack.append((len(stack) + 1, []))
        elif tok == lo.END:
            out.append(stack.pop())
        else:
            stack[-1][1].append(False)
    return out


def test_listops_trees_are_lras():
    """Every operator takes 2..max_args arguments (both ends occur); an argument is itself
    an operator with probability 0.25 where depth allows (LRA's generator); expressions
    never pass max_length."""
    rng = random.Random(0)
    ops = []
    for _ in range(3000):
        out = []
        lo._tree(rng, 1, 30, 5, out, 10 ** 9)
        ops += _operators(out)
    arity = [len(args) for _, args in ops]
    assert min(arity) == 2 and max(arity) == 5
    nested = [a for depth, args in ops if depth + 1 < 30 for a in args]
    assert sum(nested) / len(nested) == pytest.approx(0.25, abs=0.01)  # ~30k arguments
    for _ in range(2000):
        n = len(lo.generate(rng, min_length=4, max_length=6, max_depth=4, max_args=5))
        assert 4 <= n <= 6


def test_listops_median_and_sum_mod_by_hand():
    assert lo.evaluate_tokens("[MED 1 2 ]".split()) == 1  # int(median([1, 2])) = int(1.5)
    assert lo.evaluate_tokens("[MED 3 9 4 ]".split()) == 4
    assert lo.evaluate_tokens("[SM 9 8 [MAX 1 7 ] ]".split()) == 4
    assert lo.evaluate_tokens("[MIN 5 [MED 2 8 6 9 ] 6 ]".split()) == 5


def test_listops_is_seeded_and_cached(tmp_path):
    kw = dict(max_length=30, min_length=5, max_depth=3, max_args=4, n_train=40, n_val=20, n_test=20)
    a = tasks.create("listops", **kw).token_splits()
    data._memo.clear()
    b = tasks.create("listops", **kw).token_splits()  # from the disk cache
    assert all(torch.equal(x, y) for s in a for x, y in zip(a[s], b[s]))
    assert len(list((tmp_path / "cache").glob("listops-*.pt"))) == 3
    c = tasks.create("listops", **kw, data_seed=1).token_splits()
    assert not torch.equal(a["val"][0], c["val"][0])
    assert not torch.equal(a["val"][2], a["test"][2])
    with pytest.raises(UserError, match="widen the length range"):
        tasks.create("listops", max_length=6, min_length=6, max_depth=2, max_args=2).token_splits()
    with pytest.raises(UserError, match="min_length"):
        tasks.create("listops", max_length=10, min_length=20)


# -- profiles ----------------------------------------------------------------------


def test_profiles_hold_the_real_data_tasks():
    from suite.profiles import build_specs

    smoke = build_specs(profile="smoke", device="cpu")
    for task in ("seq-digits", "listops"):
        runs = [s for s in smoke if s.task == task]
        assert sorted({s.model for s in runs}) == ["gru", "lstm", "rnn"] and len(runs) == 9
    mnist = build_specs(profile="mnist", device="cpu")
    assert {s.task for s in mnist} == {"pixel-mnist", "permuted-mnist"}
    assert {"rnn", "gru", "lstm"} <= {s.model for s in mnist}
    s = next(s for s in mnist if s.task == "permuted-mnist")
    assert s.task_args["perm_seed"] == 0 and s.train["optimizer"] == "rmsprop"
    assert s.model_args["hidden_size"] == 100 and s.train["batch_size"] == 100


@pytest.mark.slow
def test_seq_digits_lstm_learns():
    from suite.runner import train_one
    from suite.spec import make_spec

    spec = make_spec("seq-digits", {}, "lstm", {"hidden_size": 64},
                     {"lr": 1e-2, "max_steps": 600, "eval_every": 100}, 0, "cpu")
    assert train_one(spec).summary["test_acc"] > 0.6


def _corpus(data_dir, n=2000, seed=0):
    rng = random.Random(seed)
    text = "".join(rng.choice("abcdefghij") for _ in range(n))
    (data_dir / "corpus.txt").write_text(text)
    return text


def test_char_lm_chance_is_add_one_unigram_bpc(data_dir):
    (data_dir / "u").mkdir()
    for name, t in (("train.txt", "aab"), ("val.txt", "ab"), ("test.txt", "abba")):
        (data_dir / "u" / name).write_text(t)
    task = tasks.create("char-lm", corpus="local", path="u", window=1)
    p_a, p_b = 3 / 5, 2 / 5  # train counts a=2, b=1, plus one each
    assert task.chance == pytest.approx(-(2 * math.log2(p_a) + 2 * math.log2(p_b)) / 4)


def test_char_lm_eval_streams_are_at_least_a_window_long(data_dir):
    _corpus(data_dir)
    task = tasks.create("char-lm", corpus="local", path="corpus.txt", window=16)
    n = len(task.data()["val"]) - 1  # 99 targets: at most 99 // 16 = 6 streams
    first = next(task.eval_batches("val", 500, CPU))
    assert first.x.shape == (n // 16, 16)


def test_char_lm_max_chars_cuts_every_split(data_dir):
    _corpus(data_dir)
    task = tasks.create("char-lm", corpus="local", path="corpus.txt", window=5, max_chars=30)
    assert [len(task.data()[s]) for s in ("train", "val", "test")] == [30, 30, 30]


def test_char_lm_window_as_long_as_train_is_a_user_error(data_dir):
    _corpus(data_dir)
    with pytest.raises(UserError, match="must be shorter"):
        tasks.create("char-lm", corpus="local", path="corpus.txt", window=1800).data()


def test_char_lm_accuracy_is_argmax_hits_over_targets(data_dir):
    text = ABACAB
    task = _abacab(data_dir)
    table = torch.randn(task.vocab_size, task.vocab_size, generator=torch.Generator().manual_seed(0))
    ids = [task.vocab.index(c) for c in text]
    hits = sum(int(table[a].argmax()) == b for a, b in zip(ids, ids[1:]))
    for bs in (1, 3, 500):
        assert task.evaluate(Bigram(table), "val", CPU, bs)["acc"] == pytest.approx(hits / (len(ids) - 1))


def test_char_lm_training_windows_start_anywhere_in_train(data_dir):
    text = _corpus(data_dir)[:1800]
    task = tasks.create("char-lm", corpus="local", path="corpus.txt", window=16)
    b = task.train_batch(30000, torch.Generator().manual_seed(0), CPU)
    decode = lambda ids: "".join(task.vocab[i] for i in ids.tolist())  # noqa: E731
    starts = {text.index(decode(torch.cat([r[:1], y]))) for r, y in zip(b.x, b.y)}
    assert min(starts) == 0 and max(starts) == 1800 - 16 - 1


def _tables(folder, train, val, test):
    folder.mkdir()
    for name, texts in (("train", train), ("validation", val), ("test", test)):
        pd.DataFrame({"text": texts, "label": [i % 2 for i in range(len(texts))]}).to_csv(
            folder / f"{name}.csv", index=False)


def test_sentiment_vocab_is_the_most_frequent_train_tokens(data_dir):
    _tables(data_dir / "v", ["a a a b b c", "b c d"], ["e a"], ["d z"])
    task = tasks.create("sentiment", dataset="local", path="v", max_vocab=4)
    assert task.data()["vocab"] == ["<pad>", "<unk>", "a", "b"]


def test_sentiment_tokens_lowercase_and_drop_html_breaks(data_dir):
    assert tokenize("Great<br />movie!", "word", True) == ["great", "movie", "!"]
    assert tokenize("Great<br>Movie", "word", False) == ["Great", "Movie"]


def test_sentiment_keeps_the_first_max_len_tokens(data_dir):
    words = [f"w{i}" for i in range(20)]
    _tables(data_dir / "m", [" ".join(words)] * 2, ["w1"], [" ".join(words)])
    task = tasks.create("sentiment", dataset="local", path="m", max_len=10)
    vocab = task.data()["vocab"]
    ids, lengths, _ = task.token_splits()["test"]
    assert [vocab[i] for i in ids[0, :10].tolist()] == words[:10] and lengths[0] == 10


def test_sentiment_n_train_is_a_seeded_random_subset(data_dir):
    _tables(data_dir / "s", [f"t{i} x" for i in range(60)], ["x"], ["x"])
    subs = [tasks.create("sentiment", dataset="local", path="s", n_train=10, data_seed=s).token_splits()["train"]
            for s in (0, 1)]
    full = tasks.create("sentiment", dataset="local", path="s").token_splits()["train"]
    assert all(len(sub[2]) == 10 for sub in subs)
    assert not torch.equal(subs[0][0], full[0][:10]) and not torch.equal(subs[0][0], subs[1][0])


def test_cache_key_holds_the_processing_options(data_dir):
    _tables(data_dir / "o", ["one two three four five six seven"] * 4, ["x"], ["one two three four five"])
    short = tasks.create("sentiment", dataset="local", path="o", max_len=2).data()
    long = tasks.create("sentiment", dataset="local", path="o", max_len=6).data()
    assert short["test"][1].tolist() == [2] and long["test"][1].tolist() == [5]


def test_cache_notices_an_edit_that_keeps_the_size(data_dir):
    path = data_dir / "corpus.txt"
    path.write_text("ab" * 1000)
    first = tasks.create("char-lm", corpus="local", path="corpus.txt", window=5).data()
    path.write_text("ba" * 1000)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    data._memo.clear()
    second = tasks.create("char-lm", corpus="local", path="corpus.txt", window=5).data()
    assert not torch.equal(first["train"], second["train"])


def test_split_indices_chunks_are_sorted_and_partition():
    chunks = data.split_indices(50, [10, 5], 3)
    assert [len(c) for c in chunks] == [10, 5, 35]
    assert torch.equal(torch.cat(chunks).sort().values, torch.arange(50))
    assert all(torch.equal(c, c.sort().values) for c in chunks)
