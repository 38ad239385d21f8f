"""A user's own network as a victim: loading SPECs, the adapter to the book's convention, bad input."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from xrlib.core.errors import InputError
from xrlib.nets.external import (ExternalModel, ModelDescription, check_network, load_description, load_network,
                                 probe_gradients)

BOOK_SIZE = 64  # the smoke profile's image size


class TwoClassSoftmax(torch.nn.Module):
    """Background/clavicle probabilities from a 3-channel input (channel 1 is the clavicle)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x):
        return torch.softmax(self.conv(x), dim=1)


class OneLogit(torch.nn.Module):
    def __init__(self, in_channels: int = 1):
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv2d(in_channels, 1, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


class Quantised(torch.nn.Module):
    """Masks its gradients: the input is rounded to 8 levels before the convolution."""

    def __init__(self):
        super().__init__()
        self.inner = OneLogit()

    def forward(self, x):
        return self.inner(torch.round(x * 8).detach() / 8)


def test_exported_program_with_static_batch_runs_image_by_image(tmp_path):
    net = OneLogit()
    program = torch.export.export(net, (torch.rand(1, 1, 48, 48),))
    path = tmp_path / "net.pt2"
    torch.export.save(program, str(path))
    model = ExternalModel(load_network(str(path)), ModelDescription(input_size=(48, 48)), BOOK_SIZE)
    check_network(model, str(path))
    assert model.description.static_batch  # a batch of two failed, so images run one by one
    x = torch.rand(3, 1, BOOK_SIZE, BOOK_SIZE)
    out = model(x)
    assert out.shape == (3, 1, BOOK_SIZE, BOOK_SIZE)
    # image by image equals the eager network through the same resizes
    ref = ExternalModel(net, ModelDescription(input_size=(48, 48)), BOOK_SIZE)(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert probe_gradients(model, BOOK_SIZE)[0]


def test_torchscript_probabilities_become_logits_of_the_clavicle_channel(tmp_path):
    net = TwoClassSoftmax()
    path = tmp_path / "net.ts"
    torch.jit.script(net).save(str(path))
    desc = ModelDescription(input_size=(40, 40), in_channels=3, normalisation="imagenet", output="probabilities",
                            clavicle_channels=(1,))
    model = ExternalModel(load_network(str(path)), desc, BOOK_SIZE)
    check_network(model, str(path))
    x = torch.rand(2, 1, BOOK_SIZE, BOOK_SIZE)
    inp = model.to_model_input(x)
    assert inp.shape == (2, 3, 40, 40)
    prob = net(inp)[:, 1:2]
    # sigmoid of the adapter's logits (before the resize back) is the network's clavicle probability
    torch.testing.assert_close(torch.sigmoid(model.clavicle_logits(net(inp))), prob, rtol=1e-4, atol=1e-5)
    assert model(x).shape == (2, 1, BOOK_SIZE, BOOK_SIZE)


def test_entry_point_module_function(tmp_path, monkeypatch):
    (tmp_path / "my_seg.py").write_text(textwrap.dedent("""
        import torch
        def build():
            torch.manual_seed(2)
            return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    net = load_network("my_seg:build")
    desc = load_description(None, input_size=80, clavicle_channels=[0, 1], normalisation="symmetric")
    model = ExternalModel(net, desc, BOOK_SIZE)
    check_network(model, "my_seg:build")
    x = torch.rand(2, 1, BOOK_SIZE, BOOK_SIZE)
    inp = model.to_model_input(x)
    assert float(inp.min()) >= -1.0 and float(inp.max()) <= 1.0 and float(inp.min()) < -0.5
    raw = net(inp)
    torch.testing.assert_close(model.clavicle_logits(raw), raw.amax(dim=1, keepdim=True))  # union of L and R
    sys.modules.pop("my_seg", None)


def test_identity_network_at_the_book_size_is_the_identity():
    class Identity(torch.nn.Module):
        def forward(self, x):
            return x

    model = ExternalModel(Identity(), ModelDescription(), BOOK_SIZE)
    x = torch.rand(2, 1, BOOK_SIZE, BOOK_SIZE)
    assert torch.equal(model(x), x)


def test_gradient_probe_flags_a_quantised_input_and_passes_a_normal_one():
    ok, _ = probe_gradients(ExternalModel(OneLogit(), ModelDescription(input_size=(32, 32)), BOOK_SIZE), BOOK_SIZE)
    masked, why = probe_gradients(ExternalModel(Quantised(), ModelDescription(), BOOK_SIZE), BOOK_SIZE)
    assert ok and not masked
    assert "no input gradient" in why or "zero" in why


@pytest.mark.parametrize("spec, message", [
    ("missing.pt2", "--model: missing.pt2: file not found"),
    ("no_such_module_xyz:build", "--model: no_such_module_xyz:build: cannot import module 'no_such_module_xyz'"),
    ("json:nothing_here", "--model: json:nothing_here: json has no callable 'nothing_here'"),
    ("json:dumps", None),  # callable but needs arguments: a TypeError is the user's code, not ours
    ("plainword", "--model: plainword: not a file and not a module:function entry point"),
])
def test_bad_specs_name_the_flag_and_the_problem(spec, message):
    if message is None:
        with pytest.raises(TypeError):
            load_network(spec)
        return
    with pytest.raises(InputError) as err:
        load_network(spec)
    assert str(err.value).startswith(message)


def test_a_file_that_is_no_model(tmp_path):
    bad = tmp_path / "weights.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(InputError, match=r"^--model: .*weights\.pt: not a loadable TorchScript file"):
        load_network(str(bad))


def test_entry_point_that_returns_no_module(tmp_path, monkeypatch):
    (tmp_path / "not_a_net.py").write_text("def build():\n    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(InputError, match="returned int, not a torch.nn.Module"):
        load_network("not_a_net:build")
    sys.modules.pop("not_a_net", None)


@pytest.mark.parametrize("net, desc, message", [
    (torch.nn.Flatten(), ModelDescription(), r"output must be \(batch, channels, height, width\), got \(2, 4096\)"),
    (OneLogit(), ModelDescription(clavicle_channels=(1,)), r"output has 1 channel\(s\) but clavicle_channels asks for \[1\]"),
    (OneLogit(), ModelDescription(output="probabilities"), "declared probabilities but spans"),
])
def test_outputs_of_the_wrong_shape_channels_or_range(net, desc, message):
    with pytest.raises(InputError, match=message):
        check_network(ExternalModel(net, desc, BOOK_SIZE), "net.pt")


def test_description_file_and_its_errors(tmp_path):
    good = tmp_path / "model.yml"
    good.write_text("input_size: [96, 112]\nin_channels: 3\nnormalisation: imagenet\noutput: probabilities\nclavicle_channels: [1, 2]\n")
    d = load_description(good, output="logits")  # a flag overrides the file
    assert d.input_size == (96, 112) and d.clavicle_channels == (1, 2) and d.output == "logits"
    bad = tmp_path / "bad.yml"
    bad.write_text("input_sise: 96\n")
    with pytest.raises(InputError, match=r"bad\.yml: unknown key\(s\) input_sise"):
        load_description(bad)
    with pytest.raises(InputError, match="normalisation imagenet needs in_channels 3, got 1"):
        load_description(None, normalisation="imagenet")
    with pytest.raises(InputError, match="model description not found"):
        load_description(tmp_path / "nope.yml")
