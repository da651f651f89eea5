"""Write the small seed corpus in fuzz/corpus/<target>/ (committed; re-run to refresh).

Seeds are real files of each format, a few KB each, written by the frameworks where they are
installed (torch, onnx, h5py) and by weightpress itself.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tempfile
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    from weightpress.cli import main as cli
    from weightpress.io.npz import write_npz
    from weightpress.io.safetensors import write_safetensors

    rng = np.random.default_rng(0)
    t = {"fc.weight": rng.standard_normal((16, 8)).astype(np.float32),
         "fc.bias": rng.standard_normal(16).astype(np.float32),
         "steps": np.array(3, np.int64), "empty": np.zeros((0, 4), np.float32)}
    root = os.path.join(HERE, "corpus")
    shutil.rmtree(root, ignore_errors=True)
    tmp = tempfile.mkdtemp()

    def put(target: str, name: str, data: bytes) -> None:
        os.makedirs(os.path.join(root, target), exist_ok=True)
        with open(os.path.join(root, target, name), "wb") as f:
            f.write(data)

    def read(p: str) -> bytes:
        with open(p, "rb") as f:
            return f.read()

    p = os.path.join(tmp, "m.safetensors")
    write_safetensors(p, t, metadata={"k": "v"})
    put("safetensors", "basic.safetensors", read(p))
    write_safetensors(p, {"h": t["fc.weight"]}, dtypes={"h": "BF16"})
    put("safetensors", "bf16.safetensors", read(p))
    q = os.path.join(tmp, "m.npz")
    write_npz(q, t)
    put("npz", "stored.npz", read(q))
    buf = io.BytesIO()
    np.savez_compressed(buf, w=t["fc.weight"].astype(">f4"), i=np.arange(3))
    put("npz", "compressed_be.npz", buf.getvalue())
    # container (and the CLI's inputs)
    c = os.path.join(tmp, "m.wpz")
    big = {**t, "fc.weight": rng.standard_normal((64, 64)).astype(np.float32)}
    write_safetensors(p, big)
    cli(["compress", p, "-o", c, "--ratio", "2", "-q", "--min-size", "16"])
    put("container", "ratio2.wpz", read(c))
    cli(["compress", p, "-o", c, "--method", "lowrank", "--rank", "2", "-q", "--min-size", "16"])
    put("container", "lowrank.wpz", read(c))
    put("cli", "safetensors", b"\x00" + read(p))
    put("cli", "container", b"\x05" + read(c))
    put("cli", "npz", b"\x01" + read(q))
    try:
        import torch
        tp = os.path.join(tmp, "m.pt")
        torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in t.items()}, tp)
        put("pytorch", "state_dict.pt", read(tp))
        torch.save({"model": {"w": torch.randn(4, 4).t(), "e": torch.randn(1, 4).expand(3, 4)},
                    "epoch": 3}, tp)
        put("pytorch", "nested_views.pt", read(tp))
        put("cli", "pytorch", b"\x02" + read(tp))
    except ImportError:
        print("torch missing: no PyTorch seeds", file=sys.stderr)
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
        W = numpy_helper.from_array(t["fc.weight"].T.copy(), "W")
        B = numpy_helper.from_array(t["fc.bias"], "B")
        g = helper.make_graph([helper.make_node("Gemm", ["x", "W", "B"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
                              [W, B])
        m = helper.make_model(g)
        put("onnx", "gemm.onnx", m.SerializeToString())
        put("cli", "onnx", b"\x03" + m.SerializeToString())
    except ImportError:
        print("onnx missing: no ONNX seeds", file=sys.stderr)
    try:
        import h5py
        h = os.path.join(tmp, "m.h5")
        with h5py.File(h, "w") as f:
            f.create_dataset("layers/dense/vars/0", data=t["fc.weight"])
            f.create_dataset("layers/dense/vars/1", data=t["fc.bias"])
        put("keras", "weights.h5", read(h))
        put("cli", "h5", b"\x04" + read(h))
        k = os.path.join(tmp, "m.keras")
        with zipfile.ZipFile(k, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("config.json", '{"class_name": "Sequential"}')
            zf.write(h, "model.weights.h5")
        put("keras", "deflated.keras", read(k))
    except ImportError:
        print("h5py missing: no Keras seeds", file=sys.stderr)
    shutil.rmtree(tmp, ignore_errors=True)
    for d in sorted(os.listdir(root)):
        files = os.listdir(os.path.join(root, d))
        print(d, len(files), sum(os.path.getsize(os.path.join(root, d, f)) for f in files), "bytes")


if __name__ == "__main__":
    main()
