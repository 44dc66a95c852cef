import pytest
import torch

from plankdiff.devices import default_device, torch_device


def test_auto_is_cuda_exactly_when_torch_sees_a_gpu():
    assert default_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert torch_device("auto") == default_device()


@pytest.mark.parametrize("given", ["cpu", "cuda", "cuda:1", torch.device("cpu")])
def test_a_named_device_is_taken_as_given(given):
    assert torch_device(given) == torch.device(given)


def test_the_default_follows_whether_torch_sees_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device() == torch.device("cuda")
