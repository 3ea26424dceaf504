"""The registry: ids -> specs that round-trip, build, and name their weights."""

import hashlib
import json
import pickle
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from torch import nn

from transfer_pipe.backbones import (
    PENULTIMATE,
    BackboneEntry,
    get_backbone,
    list_backbones,
    register,
)
from transfer_pipe.backbones import registry as registry_module
from transfer_pipe.backbones.taps import LayerTap
from transfer_pipe.errors import TransferPipeError

OWN_IDS = [i for i in list_backbones() if not i.startswith("torchvision/")]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_list_backbones() -> None:
    ids = list_backbones()
    assert {"efficientnet_lite0.in1k", "tiny_test", "torchvision/resnet18"} <= set(ids)
    assert len(ids) == len(set(ids))
    assert not any(":" in i for i in ids)  # enum variants are not listed


@pytest.mark.parametrize("backbone_id", OWN_IDS)
def test_every_registered_backbone_builds_and_round_trips(backbone_id: str) -> None:
    spec = get_backbone(backbone_id)
    assert str(spec) == spec.id == backbone_id
    assert get_backbone(spec.id) == spec
    assert pickle.loads(pickle.dumps(spec)) == spec  # specs travel to Dask workers
    assert hash(spec) == hash(get_backbone(spec.id))
    json.dumps(dict(spec.metadata))  # JSON-able
    model = spec.build()
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert spec.metadata["num_params"] == sum(p.numel() for p in model.parameters())
    modules = dict(model.named_modules())
    assert spec.stage_layers() and all(name in modules for name in spec.stage_layers())
    size = spec.preprocessing.image_size
    with LayerTap(model, [PENULTIMATE]) as tap, torch.inference_mode():
        feats = tap(torch.zeros(1, 3, size, size))[PENULTIMATE]
    assert feats.shape == (1, spec.metadata["feature_dim"])
    assert spec.weights_digest() == get_backbone(backbone_id).weights_digest()


def test_tiny_test_is_deterministic_and_leaves_global_rng_alone() -> None:
    spec = get_backbone("tiny_test")
    state = torch.random.get_rng_state()
    a, b = spec.build(), spec.build()
    assert torch.equal(torch.random.get_rng_state(), state)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert spec.weights_digest().startswith("random-init:seed=0:torch=")


def test_random_init_digests_differ_between_architectures() -> None:
    # The digest goes into the feature-store key; equal digests would share a key.
    assert get_backbone("tiny_test").weights_digest() != (
        get_backbone("torchvision/resnet18").weights_digest()
    )


def test_unknown_id_suggests_close_matches() -> None:
    with pytest.raises(TransferPipeError) as err:
        get_backbone("efficientnet_lite0")
    assert "efficientnet_lite0.in1k" in str(err.value)
    assert "transfer-pipe backbones" in str(err.value)
    with pytest.raises(TransferPipeError, match="torchvision/resnet18"):
        get_backbone("resnet18")


def test_duplicate_registration_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "_ENTRIES", dict(registry_module._ENTRIES))
    tiny = registry_module.lookup("tiny_test")
    with pytest.raises(TransferPipeError, match="already registered"):
        register(tiny)
    clash = BackboneEntry(**{**tiny.__dict__, "id": "torchvision/mine"})
    with pytest.raises(TransferPipeError, match="already registered"):
        register(clash)
    register(BackboneEntry(**{**tiny.__dict__, "id": "tiny_copy"}))
    assert get_backbone("tiny_copy").id == "tiny_copy"


def test_weights_file_round_trips(tmp_path: Path) -> None:
    model = get_backbone("tiny_test").build()
    state = {k: v + 1.0 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    path = tmp_path / "tiny.pt"
    torch.save(state, path)
    spec = get_backbone("tiny_test", weights_file=str(path))
    assert spec.weights_file == str(path)
    assert spec.weights_digest() == sha256(path) == spec.metadata["weights_sha256"]
    assert get_backbone(spec.id, weights_file=spec.weights_file) == spec
    assert pickle.loads(pickle.dumps(spec)).weights_digest() == sha256(path)
    loaded = spec.build()
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert not any(p.requires_grad for p in loaded.parameters())


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_wrapped_state_dicts_load(tmp_path: Path, wrapper: str) -> None:
    state = get_backbone("tiny_test").build().state_dict()
    path = tmp_path / "wrapped.pt"
    torch.save({wrapper: state, "epoch": 3}, path)
    built = get_backbone("tiny_test", weights_file=str(path)).build()
    assert torch.equal(built.classifier.weight, state["classifier.weight"])


def test_weights_digest_follows_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    state = get_backbone("tiny_test").build().state_dict()
    torch.save(state, path)
    first = get_backbone("tiny_test", weights_file=str(path)).weights_digest()
    torch.save({k: v * 2 for k, v in state.items()}, path)
    second = get_backbone("tiny_test", weights_file=str(path)).weights_digest()
    assert first != second == sha256(path)


def test_mismatched_weights_file_raises(tmp_path: Path, lite0_file: str) -> None:
    spec = get_backbone("tiny_test", weights_file=lite0_file)
    with pytest.raises(TransferPipeError) as err:
        spec.build()
    message = str(err.value)
    assert "does not match backbone tiny_test" in message
    assert lite0_file in message and "missing keys" in message and "unexpected keys" in message


def test_wrong_shapes_raise(tmp_path: Path) -> None:
    state = get_backbone("tiny_test").build().state_dict()
    state["classifier.weight"] = torch.zeros(3, 32)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(
        TransferPipeError, match=r"1 tensors of the wrong shape.*classifier\.weight"
    ):
        get_backbone("tiny_test", weights_file=str(path)).build()


def test_unreadable_weights_files_raise(tmp_path: Path) -> None:
    with pytest.raises(TransferPipeError, match="check the path"):
        get_backbone("tiny_test", weights_file=str(tmp_path / "missing.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(TransferPipeError, match="state dict"):
        get_backbone("tiny_test", weights_file=str(junk)).build()
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(TransferPipeError, match="not a state dict"):
        get_backbone("tiny_test", weights_file=str(tmp_path / "list.pt")).build()


def test_efficientnet_accepts_its_own_state_dict_format(tmp_path: Path, lite0: nn.Module) -> None:
    # Fine-tuned checkpoints are saved from our module, not the reference's key format.
    path = tmp_path / "finetuned.pt"
    torch.save(lite0.state_dict(), path)
    rebuilt = get_backbone("efficientnet_lite0.in1k", weights_file=str(path)).build()
    assert torch.equal(rebuilt.head.bn.running_var, lite0.head.bn.running_var)


def test_torchvision_enum_offline_names_weights_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache

    def offline(*args: object, **kwargs: object) -> None:
        # Simulate no network, so the test is the same with or without internet.
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    spec = get_backbone("torchvision/resnet18:IMAGENET1K_V1")
    for action in (spec.build, spec.weights_digest):
        with pytest.raises(TransferPipeError, match="--weights-file PATH") as err:
            action()
        assert "could not be downloaded" in str(err.value)


def test_torchvision_enum_with_local_weights_file(tmp_path: Path) -> None:
    # The offline path the error message recommends: same id, plus --weights-file.
    path = tmp_path / "resnet18.pth"
    torch.save(get_backbone("torchvision/resnet18").build().state_dict(), path)
    spec = get_backbone("torchvision/resnet18:IMAGENET1K_V1", weights_file=str(path))
    assert spec.weights_digest() == sha256(path)
    assert spec.preprocessing.image_size == 224 and spec.preprocessing.resize == "center-crop"
    assert "imagenet_top1" not in spec.metadata  # the score belongs to other weights
    assert spec.build().fc.in_features == 512


def test_torchvision_enum_ids_are_canonical() -> None:
    spec = get_backbone("torchvision/resnet18:DEFAULT")
    assert spec.id == "torchvision/resnet18:IMAGENET1K_V1"
    assert get_backbone(spec.id) == spec
    assert spec.metadata["imagenet_top1"] == pytest.approx(69.758)
    assert spec.preprocessing.mean == (0.485, 0.456, 0.406)
    with pytest.raises(TransferPipeError, match="IMAGENET1K_V1"):
        get_backbone("torchvision/resnet18:IMAGENET1K_V9")
