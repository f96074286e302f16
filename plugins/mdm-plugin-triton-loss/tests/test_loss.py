"""The component: registration, status, backend choice, the PyTorch fallback and bad input."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch
from mdm_plugin_triton_loss import backend
from mdm_plugin_triton_loss import loss as loss_module
from mdm_plugin_triton_loss.loss import FusedMDLMLoss
from pydantic import ValidationError

from mdm_core.builtin.losses import mdlm_reference
from mdm_core.errors import MdmError
from mdm_core.interfaces import TrainingExample, Vocab
from mdm_core.plugins import get_registry
from mdm_core.testing import check_loss

VOCAB = Vocab(size=20, pad_id=18, mask_id=19)


def _example(device: torch.device | str = "cpu") -> tuple[torch.Tensor, TrainingExample]:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 5, VOCAB.size, generator=gen).to(device)
    targets = torch.randint(0, VOCAB.num_regular, (2, 5), generator=gen).to(device)
    example = TrainingExample(
        input_ids=targets,
        targets=targets,
        loss_mask=(torch.rand(2, 5, generator=gen) < 0.6).to(device),
        weights=torch.full((2, 5), 2.0, device=device),
        normaliser=torch.tensor(10.0, device=device),
        t=torch.full((2,), 0.5, device=device),
    )
    return logits, example


def test_conformance_kit() -> None:
    # "auto" runs the kernels under the interpreter (CPU tensors) and falls back on a GPU machine.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        check_loss(lambda: FusedMDLMLoss(FusedMDLMLoss.Params(block_v=16)), max_examples=15)


def test_registered_under_its_name_with_status() -> None:
    registry = get_registry()
    assert registry.load("loss", "mdlm_triton") is FusedMDLMLoss
    assert registry.provider("loss", "mdlm_triton").distribution == "mdm-plugin-triton-loss"
    status: dict[str, str] = {}
    for lines in registry.pm.hook.mdm_status():
        status.update(lines or {})
    assert status["mdlm_triton"] == backend.active_path() == backend.path_for(FusedMDLMLoss().params.backend)
    assert not hasattr(FusedMDLMLoss(), "describe"), "Loss.describe left the contract (issue #8 §5)"


def test_registration_module_is_import_light() -> None:
    code = (
        "import sys, mdm_plugin_triton_loss as m; m.mdm_components(); "
        "heavy = {'torch', 'triton'} & set(sys.modules); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_active_path_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert backend.active_path() == backend.TRITON_INTERPRETER
    monkeypatch.delenv("TRITON_INTERPRET")
    expected = backend.TRITON_GPU if torch.cuda.is_available() else backend.TORCH_FALLBACK
    assert backend.active_path() == expected
    assert backend.path_for(FusedMDLMLoss(FusedMDLMLoss.Params(backend="torch")).params.backend) == (
        backend.TORCH_FORCED
    )


def test_fallback_uses_the_reference_and_says_so_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(loss_module, "_fallback_announced", False)
    logits, example = _example("cpu")  # CPU tensors: no compiled kernels run there
    loss = FusedMDLMLoss()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = loss(logits, example, VOCAB)
        loss(logits, example, VOCAB)
    notices = [w for w in caught if "PyTorch reference" in str(w.message)]
    assert len(notices) == 1 and "TRITON_INTERPRET" in str(notices[0].message)
    assert torch.equal(first.loss, mdlm_reference(logits, example, VOCAB).loss)


def test_forced_triton_backend_refuses_clearly_where_it_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    logits, example = _example("cpu")
    with pytest.raises(MdmError, match="backend: triton cannot run here"):
        FusedMDLMLoss(FusedMDLMLoss.Params(backend="triton"))(logits, example, VOCAB)


def test_forced_torch_backend_is_the_reference() -> None:
    logits, example = _example("cpu")
    out = FusedMDLMLoss(FusedMDLMLoss.Params(backend="torch"))(logits, example, VOCAB)
    assert torch.equal(out.loss, mdlm_reference(logits, example, VOCAB).loss)


@pytest.mark.parametrize("block_v", [8, 48, 2**17])
def test_block_size_must_be_a_power_of_two(block_v: int) -> None:
    with pytest.raises(ValidationError, match="power of two"):
        FusedMDLMLoss.Params(block_v=block_v)


def test_bad_input_is_refused_with_a_clear_message(device: torch.device) -> None:
    logits, example = _example(device)
    loss = FusedMDLMLoss(FusedMDLMLoss.Params(backend="triton"))
    with pytest.raises(MdmError, match=r"expected \[B, L, 20\]"):
        loss(logits[..., :-1], example, VOCAB)
    bad = TrainingExample(**{**example.__dict__, "targets": torch.full_like(example.targets, VOCAB.size)})
    with pytest.raises(MdmError, match=r"ids in \[0, 20\)"):
        loss(logits, bad, VOCAB)
    fuzzy = TrainingExample(**{**example.__dict__, "loss_mask": example.loss_mask.float()})
    with pytest.raises(MdmError, match="bool loss_mask"):
        loss(logits, fuzzy, VOCAB)
