"""Real architectures, built and saved by their own frameworks at test time (random weights).

Each :class:`RealModel` is one file (or sharded checkpoint) written by the framework, plus two
ways to run it:

- ``run(path)`` loads a model file *in its own framework* (transformers ``from_pretrained``,
  ``torch.load`` + ``load_state_dict``, onnxruntime, ``keras.models.load_model``) and runs a
  forward pass on a fixed input;
- ``run_tensors(tensors)`` runs the same architecture with the given dense weights loaded by
  the test itself (``load_state_dict``, ``onnx.numpy_helper`` into the original graph, h5py
  into a copy of the original Keras file), independent of weightpress' writers.

Sizes are tiny (a few hundred kB) so the whole corpus builds in seconds on two cores.
No torchvision: on this machine PyPI's torchvision needs a CUDA build of torch (about 5 GB)
and fails to import beside the CPU build; the ResNet- and MobileNetV3-style networks below are
the same building blocks (conv, BN, depthwise and grouped conv, squeeze-excite, hardswish) in
plain ``torch.nn``.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "torch")


@dataclass
class RealModel:
    name: str                 # architecture
    fmt: str                  # file format label for the table
    path: str                 # what `weightpress compress` reads
    out_name: str             # file name to decompress into (its extension gives the format)
    run: Callable[[str], np.ndarray]
    run_tensors: Callable[[Mapping[str, np.ndarray]], np.ndarray]
    extra: dict[str, Any] = field(default_factory=dict)


def _torch():
    import torch
    torch.manual_seed(0)
    return torch


# -- transformers --------------------------------------------------------------------------

def _hf_configs() -> dict[str, Any]:
    from transformers import BertConfig, GPT2Config, T5Config, ViTConfig
    return {
        "bert": BertConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=128,
                           max_position_embeddings=64),
        "gpt2": GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=512, n_positions=64,
                           bos_token_id=0, eos_token_id=0),
        "vit": ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                         num_attention_heads=4, intermediate_size=128, num_channels=3),
        "t5": T5Config(vocab_size=512, d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=2,
                       num_decoder_layers=2),
    }


def _hf_class(name: str) -> Any:
    import transformers as tr
    return {"bert": tr.BertModel, "gpt2": tr.GPT2LMHeadModel, "vit": tr.ViTModel,
            "t5": tr.T5ForConditionalGeneration}[name]


def _hf_inputs(name: str) -> dict[str, Any]:
    torch = _torch()
    g = torch.Generator().manual_seed(1)
    if name == "vit":
        return {"pixel_values": torch.randn(2, 3, 32, 32, generator=g)}
    ids = torch.randint(0, 512, (2, 12), generator=g)
    if name == "t5":
        return {"input_ids": ids, "decoder_input_ids": torch.randint(0, 512, (2, 7), generator=g)}
    return {"input_ids": ids}


def _hf_out(out: Any) -> np.ndarray:
    t = out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state
    return t.detach().double().numpy()


def _hf_model(name: str, cfg: Any, files: str) -> RealModel:
    torch = _torch()
    cls = _hf_class(name)
    model = cls(cfg).eval()
    fmt = "safetensors"
    if name == "bert":
        # older BERT checkpoints carry the int64 position_ids buffer; keep it in the file
        model.save_pretrained(files)
        from safetensors.torch import load_file, save_file
        sd = load_file(os.path.join(files, "model.safetensors"))
        sd["embeddings.position_ids"] = torch.arange(cfg.max_position_embeddings)[None]
        save_file(sd, os.path.join(files, "model.safetensors"), metadata={"format": "pt"})
    else:
        model.save_pretrained(files)
    inputs = _hf_inputs(name)

    def run(path: str) -> np.ndarray:
        d = os.path.dirname(path)
        with torch.no_grad():
            m = cls.from_pretrained(d).eval()
            return _hf_out(m(**inputs))

    def run_tensors(tensors: Mapping[str, np.ndarray]) -> np.ndarray:
        # the weights written by the safetensors package itself, loaded by from_pretrained
        # (transformers maps checkpoint names to module names, e.g. for ViT)
        import tempfile
        from safetensors.numpy import save_file
        d = tempfile.mkdtemp(dir=files)
        try:
            shutil.copy(os.path.join(files, "config.json"), d)
            save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                      os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
            return run(os.path.join(d, "model.safetensors"))
        finally:
            shutil.rmtree(d)

    return RealModel(name, fmt, os.path.join(files, "model.safetensors"), "model.safetensors",
                     run, run_tensors, {"config_dir": files})


def _hf_bin(name: str, cfg: Any, files: str, legacy: bool) -> RealModel:
    """A transformers checkpoint as ``pytorch_model.bin`` (torch.save of the state dict)."""
    torch = _torch()
    cls = _hf_class(name)
    model = cls(cfg).eval()
    model.save_pretrained(files)  # config.json (+ model.safetensors, removed below)
    os.remove(os.path.join(files, "model.safetensors"))
    sd = model.state_dict()  # GPT-2: lm_head.weight and transformer.wte.weight share storage
    torch.save(sd, os.path.join(files, "pytorch_model.bin"),
               _use_new_zipfile_serialization=not legacy)
    inputs = _hf_inputs(name)

    def run(path: str) -> np.ndarray:
        with torch.no_grad():
            m = cls.from_pretrained(os.path.dirname(path), use_safetensors=False).eval()
            return _hf_out(m(**inputs))

    def run_tensors(tensors: Mapping[str, np.ndarray]) -> np.ndarray:
        m = cls(cfg).eval()
        m.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()},
                          strict=True)
        with torch.no_grad():
            return _hf_out(m(**inputs))

    label = "bin (legacy pickle)" if legacy else "bin (zip)"
    return RealModel(name, label, os.path.join(files, "pytorch_model.bin"), "pytorch_model.bin",
                     run, run_tensors, {"config_dir": files, "tied": name == "gpt2"})


# -- CNNs in plain torch.nn ----------------------------------------------------------------

def _cnn_classes() -> dict[str, Any]:
    torch = _torch()
    nn = torch.nn

    class Basic(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

        def forward(self, x: Any) -> Any:
            y = torch.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return torch.relu(y + (x if self.down is None else self.down(x)))

    class ResNetS(nn.Module):
        """resnet18's structure (7x7 stem, max-pool, 4 stages of 2 basic blocks), narrow."""

        def __init__(self, width: int = 16, classes: int = 10):
            super().__init__()
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            layers, cin = [], width
            for i, w in enumerate((width, 2 * width, 4 * width, 8 * width)):
                layers.append(nn.Sequential(Basic(cin, w, 1 if i == 0 else 2), Basic(w, w, 1)))
                cin = w
            self.layer1, self.layer2, self.layer3, self.layer4 = layers
            self.fc = nn.Linear(cin, classes)

        def forward(self, x: Any) -> Any:
            x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    class SE(nn.Module):
        def __init__(self, c: int, squeeze: int):
            super().__init__()
            self.fc1 = nn.Conv2d(c, squeeze, 1)
            self.fc2 = nn.Conv2d(squeeze, c, 1)

        def forward(self, x: Any) -> Any:
            s = nn.functional.adaptive_avg_pool2d(x, 1)
            return x * nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(s))))

    class InvRes(nn.Module):
        def __init__(self, cin: int, exp: int, cout: int, k: int, stride: int, se: bool,
                     groups: int = 1):
            super().__init__()
            self.expand = nn.Sequential(nn.Conv2d(cin, exp, 1, bias=False, groups=groups),
                                        nn.BatchNorm2d(exp), nn.Hardswish())
            self.dw = nn.Sequential(nn.Conv2d(exp, exp, k, stride, k // 2, groups=exp, bias=False),
                                    nn.BatchNorm2d(exp), nn.Hardswish())
            self.se = SE(exp, max(8, exp // 4)) if se else nn.Identity()
            self.project = nn.Sequential(nn.Conv2d(exp, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.res = stride == 1 and cin == cout

        def forward(self, x: Any) -> Any:
            y = self.project(self.se(self.dw(self.expand(x))))
            return x + y if self.res else y

    class MobileNetV3S(nn.Module):
        """mobilenet_v3_small's blocks (inverted residuals, depthwise 3x3/5x5, SE, hardswish),
        one grouped 1x1 expansion, narrow."""

        def __init__(self, classes: int = 10):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16),
                                      nn.Hardswish())
            self.blocks = nn.Sequential(
                InvRes(16, 16, 16, 3, 2, True), InvRes(16, 72, 24, 3, 2, False),
                InvRes(24, 88, 24, 3, 1, False), InvRes(24, 96, 40, 5, 2, True),
                InvRes(40, 240, 40, 5, 1, True, groups=4), InvRes(40, 120, 48, 5, 1, True))
            self.last = nn.Sequential(nn.Conv2d(48, 288, 1, bias=False), nn.BatchNorm2d(288),
                                      nn.Hardswish())
            self.classifier = nn.Sequential(nn.Linear(288, 256), nn.Hardswish(),
                                            nn.Linear(256, classes))

        def forward(self, x: Any) -> Any:
            x = self.last(self.blocks(self.stem(x)))
            return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    class ConvZoo(nn.Module):
        """Every convolution kind once: Conv1d, Conv3d, ConvTranspose2d, grouped, depthwise."""

        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv1d(4, 32, 5, padding=2)
            self.c3 = nn.Conv3d(2, 16, 3, padding=1)
            self.ct = nn.ConvTranspose2d(16, 24, 4, stride=2, padding=1)
            self.grouped = nn.Conv2d(24, 48, 3, padding=1, groups=4)
            self.dw = nn.Conv2d(48, 48, 3, padding=1, groups=48)
            self.head = nn.Linear(48 + 32, 8)

        def forward(self, x1: Any, x3: Any) -> Any:
            a = self.c1(x1).mean(-1)
            b = self.c3(x3).mean(2)           # (n, 16, h, w)
            b = self.dw(self.grouped(torch.relu(self.ct(b))))
            return self.head(torch.cat([a, b.mean((2, 3))], 1))

    class Recurrent(nn.Module):
        """LSTM (2 layers, bidirectional) then GRU then a linear head."""

        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(16, 48, num_layers=2, batch_first=True, bidirectional=True)
            self.gru = nn.GRU(96, 48, batch_first=True)
            self.head = nn.Linear(48, 6)

        def forward(self, x: Any) -> Any:
            y, _ = self.lstm(x)
            y, _ = self.gru(y)
            return self.head(y)

    return {"resnet": ResNetS, "mobilenet_v3": MobileNetV3S, "convzoo": ConvZoo,
            "lstm": Recurrent}


def _torch_inputs(name: str) -> tuple[Any, ...]:
    torch = _torch()
    g = torch.Generator().manual_seed(2)
    if name == "convzoo":
        return (torch.randn(2, 4, 20, generator=g), torch.randn(2, 2, 6, 8, 8, generator=g))
    if name == "lstm":
        return (torch.randn(2, 9, 16, generator=g),)
    return (torch.randn(2, 3, 64, 64, generator=g),)


def _randomize_bn(model: Any) -> None:
    """Non-trivial BN statistics, as a trained network has."""
    torch = _torch()
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.num_batches_tracked.fill_(7)


def _torch_model(name: str, files: str, fmt: str) -> RealModel:
    torch = _torch()
    cls = _cnn_classes()[name]
    torch.manual_seed(0)
    model = cls().eval()
    _randomize_bn(model)
    inputs = _torch_inputs(name)
    os.makedirs(files, exist_ok=True)
    if fmt == "onnx":
        path = os.path.join(files, f"{name}.onnx")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            names = ["x1", "x3"] if name == "convzoo" else ["x"]
            torch.onnx.export(model, inputs, path, dynamo=False, input_names=names)
        feed = {n: t.numpy() for n, t in zip(names, inputs)}
        return RealModel(name, "onnx", path, f"{name}.onnx", lambda p: _ort(p, feed),
                         lambda t: _ort_with(path, t, feed))
    legacy = fmt == "pt-legacy"
    path = os.path.join(files, f"{name}{'-legacy' if legacy else ''}.pt")
    torch.save(model.state_dict(), path, _use_new_zipfile_serialization=not legacy)

    def run(p: str) -> np.ndarray:
        m = cls().eval()
        m.load_state_dict(torch.load(p, weights_only=True))
        with torch.no_grad():
            return m(*inputs).double().numpy()

    def run_tensors(tensors: Mapping[str, np.ndarray]) -> np.ndarray:
        m = cls().eval()
        m.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()})
        with torch.no_grad():
            return m(*inputs).double().numpy()

    return RealModel(name, "pt (legacy pickle)" if legacy else "pt (zip)", path,
                     os.path.basename(path), run, run_tensors)


def _ort(path: str, feed: Mapping[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return np.asarray(s.run(None, dict(feed))[0], np.float64)


def _ort_with(path: str, tensors: Mapping[str, np.ndarray], feed: Mapping[str, np.ndarray]) -> np.ndarray:
    """Run the original ONNX graph with its initializers replaced (by onnx itself) by `tensors`."""
    import onnx
    from onnx import numpy_helper
    m = onnx.load(path)
    for init in m.graph.initializer:
        if init.name in tensors:
            a = np.asarray(tensors[init.name]).astype(numpy_helper.to_array(init).dtype)
            init.CopyFrom(numpy_helper.from_array(a, init.name))
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return np.asarray(s.run(None, dict(feed))[0], np.float64)


# -- Keras ---------------------------------------------------------------------------------

def _keras_model(files: str, fmt: str) -> RealModel:
    import keras
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), alpha=0.35,
                                           classes=10)
    # non-trivial BN statistics
    rng = np.random.default_rng(4)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(0.1 * rng.standard_normal(layer.moving_mean.shape).astype("f4"))
            layer.moving_variance.assign((0.5 + rng.random(layer.moving_variance.shape)).astype("f4"))
    os.makedirs(files, exist_ok=True)
    path = os.path.join(files, f"mobilenet_v2.{fmt}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(path)
    x = np.random.default_rng(5).standard_normal((2, 32, 32, 3)).astype(np.float32)

    def run(p: str) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = keras.models.load_model(p, compile=False)
        y = m(x, training=False)  # a torch tensor (torch backend); keras' own convert warns
        return np.asarray(y.detach().cpu().numpy() if hasattr(y, "detach") else y, np.float64)

    def run_tensors(tensors: Mapping[str, np.ndarray]) -> np.ndarray:
        # a copy of the original file with every dataset overwritten by h5py, then Keras loads it
        import h5py
        tmp = os.path.join(files, f"ref-{os.getpid()}.{fmt}")
        if fmt == "h5":
            shutil.copy(path, tmp)
            with h5py.File(tmp, "r+") as h5:
                for k, v in tensors.items():
                    h5[k][...] = np.asarray(v)
        else:
            h5tmp = tmp + ".weights.h5"
            with zipfile.ZipFile(path) as zin:
                with open(h5tmp, "wb") as f:
                    f.write(zin.read("model.weights.h5"))
                with h5py.File(h5tmp, "r+") as h5:
                    for k, v in tensors.items():
                        h5[k][...] = np.asarray(v)
                with zipfile.ZipFile(tmp, "w") as zout:
                    for zi in zin.infolist():
                        if zi.filename == "model.weights.h5":
                            zout.write(h5tmp, zi.filename)
                        else:
                            zout.writestr(zi, zin.read(zi))
            os.remove(h5tmp)
        try:
            return run(tmp)
        finally:
            os.remove(tmp)

    return RealModel("mobilenet_v2", "keras" if fmt == "keras" else "h5 (legacy)", path,
                     os.path.basename(path), run, run_tensors)


# -- sharded checkpoints ---------------------------------------------------------------------

def _sharded(files: str, kind: str) -> RealModel:
    """BERT saved in shards: transformers' own ``model.safetensors.index.json``, or a
    ``pytorch_model.bin.index.json`` written as transformers 4 did (torch.save per shard)."""
    torch = _torch()
    cfg = _hf_configs()["bert"]
    cls = _hf_class("bert")
    model = cls(cfg).eval()
    model.save_pretrained(files, max_shard_size="100KB")
    inputs = _hf_inputs("bert")
    if kind == "bin":
        sd = model.state_dict()
        for f in os.listdir(files):
            if f.startswith("model") and (f.endswith(".safetensors") or f.endswith(".json")):
                os.remove(os.path.join(files, f))
        names = list(sd)
        half = len(names) // 2
        wmap = {}
        for i, chunk in enumerate((names[:half], names[half:])):
            fn = f"pytorch_model-{i + 1:05d}-of-00002.bin"
            torch.save({k: sd[k] for k in chunk}, os.path.join(files, fn))
            wmap.update({k: fn for k in chunk})
        index = os.path.join(files, "pytorch_model.bin.index.json")
        with open(index, "w") as f:
            json.dump({"metadata": {"total_size": sum(v.nbytes for v in sd.values())},
                       "weight_map": wmap}, f)
    else:
        index = os.path.join(files, "model.safetensors.index.json")
    assert os.path.exists(index), os.listdir(files)

    def run(p: str) -> np.ndarray:
        with torch.no_grad():
            m = cls.from_pretrained(os.path.dirname(p), use_safetensors=kind != "bin").eval()
            return _hf_out(m(**inputs))

    def run_tensors(tensors: Mapping[str, np.ndarray]) -> np.ndarray:
        m = cls(cfg).eval()
        m.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()})
        with torch.no_grad():
            return _hf_out(m(**inputs))

    return RealModel("bert", f"{kind} shards", index, os.path.basename(index), run, run_tensors,
                     {"config_dir": files})


# -- the factory ---------------------------------------------------------------------------

CORPUS = (
    ("bert", "safetensors"), ("bert", "bin"), ("gpt2", "safetensors"), ("gpt2", "bin-legacy"),
    ("vit", "safetensors"), ("t5", "safetensors"),
    ("resnet", "pt"), ("resnet", "pt-legacy"), ("resnet", "onnx"),
    ("mobilenet_v3", "pt"), ("mobilenet_v3", "pt-legacy"), ("mobilenet_v3", "onnx"),
    ("convzoo", "pt"), ("convzoo", "onnx"), ("lstm", "onnx"), ("lstm", "pt"),
    ("mobilenet_v2", "keras"), ("mobilenet_v2", "h5"),
    ("bert", "safetensors-shards"), ("bert", "bin-shards"),
)


def build(name: str, fmt: str, root: str) -> RealModel:
    """Write model `name` in format `fmt` under `root`/<name>-<fmt>/ and describe it."""
    files = os.path.join(root, f"{name}-{fmt}")
    os.makedirs(files, exist_ok=True)
    if name in ("bert", "gpt2", "vit", "t5"):
        cfg = _hf_configs()[name]
        if fmt == "safetensors":
            return _hf_model(name, cfg, files)
        if fmt in ("bin", "bin-legacy"):
            return _hf_bin(name, cfg, files, legacy=fmt == "bin-legacy")
        return _sharded(files, "bin" if fmt == "bin-shards" else "safetensors")
    if name == "mobilenet_v2":
        return _keras_model(files, fmt)
    return _torch_model(name, files, fmt)

# (model, format, target ratio, file ratio, relative output difference vs the original),
# appended by tests/test_real_models.py and printed by tests/conftest.py's terminal summary
RESULTS: list[tuple[str, str, float, float, float]] = []


def table() -> str:
    rows = [("model", "format", "target", "file ratio", "output diff vs original")]
    rows += [(n, f, f"{t:g}x", f"{r:.3f}x", f"{d:.3e}") for n, f, t, r, d in sorted(RESULTS)]
    w = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows]
    lines.insert(1, "  ".join("-" * x for x in w))
    return "\n".join(lines)
