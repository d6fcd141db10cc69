"""The text tower's transformer as an onnxruntime session: what tower.py runs once an engine
has answered its first text query.

For a short query each matrix product has only a few rows (its tokens); onnxruntime's kernels work
on weights packed once when the session is built, where numpy's BLAS packs them again on every
product. That makes a query about twice as fast, for about 0.3 s of setup. The graph is built here from
the exported tensors' names and shapes; the weights go in straight from the memory-mapped export.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

LN_EPS = 1e-5  # torch's LayerNorm default, which CLIP uses


class OnnxTransformer:
    """(x (n, L, w) embedded tokens, mask (L, L)) -> (n, L, w) hidden states after ln_final, as
    text_tower.TextTower's numpy transformer computes them."""

    def __init__(self, tensors: Mapping[str, np.ndarray], layers: int, heads: int, quick_gelu: bool) -> None:
        import onnxruntime as ort

        self._heads = heads
        graph = _Graph(tensors)
        model = graph.model(layers, heads, quick_gelu)
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: a failure here means numpy carries on
        # Idle threads sleep instead of spinning: with queries 0.2 s apart, spinning burnt 40 ms of
        # CPU after each query, in the app embedding searchlite, to save 2 ms of latency.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        names = sorted(graph.weights)
        options.add_external_initializers(names, [ort.OrtValue.ortvalue_from_numpy(np.asarray(tensors[n])) for n in names])
        self._session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        n, length, width = x.shape
        feeds = {
            "x": np.ascontiguousarray(x, dtype=np.float32).reshape(n * length, width),
            "mask": mask,
            "heads_shape": np.array([n, length, self._heads, width // self._heads], dtype=np.int64),
            "rows_shape": np.array([n * length, width], dtype=np.int64),
        }
        return self._session.run(None, feeds)[0].reshape(n, length, width)


class _Graph:
    """Builds the ONNX model (bytes); weights are declared by name and shape only and supplied to
    the session by OnnxTransformer."""

    def __init__(self, tensors: Mapping[str, np.ndarray]) -> None:
        self._tensors = tensors
        self.nodes: list = []
        self.initializers: list = []
        self.weights: set[str] = set()

    def model(self, layers: int, heads: int, quick_gelu: bool) -> bytes:
        from onnx import TensorProto, helper

        width = len(self._tensors["ln_final.weight"])
        x = "x"  # (n*L, w): the token rows of all texts
        for i in range(layers):
            p = f"transformer.resblocks.{i}."
            h = self._layer_norm(x, p + "ln_1")
            x = self._op("Add", x, self._attention(h, p, heads, width))
            h = self._layer_norm(x, p + "ln_2")
            h = self._act(self._linear(h, p + "mlp.c_fc.weight", p + "mlp.c_fc.bias"), quick_gelu)
            x = self._op("Add", x, self._linear(h, p + "mlp.c_proj.weight", p + "mlp.c_proj.bias"))
        out = self._layer_norm(x, "ln_final")
        rows = ["rows", width]
        inputs = [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, rows),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["L", "L"]),
            helper.make_tensor_value_info("heads_shape", TensorProto.INT64, [4]),  # (n, L, heads, head width)
            helper.make_tensor_value_info("rows_shape", TensorProto.INT64, [2]),  # (n*L, w)
        ]
        outputs = [helper.make_tensor_value_info(out, TensorProto.FLOAT, rows)]
        graph = helper.make_graph(self.nodes, "text_tower", inputs, outputs, self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8  # the oldest that opset 17 allows: readable by older onnxruntimes too
        return model.SerializeToString()

    def _attention(self, h: str, p: str, heads: int, width: int) -> str:
        qkv = self._linear(h, p + "attn.in_proj_weight", p + "attn.in_proj_bias")  # (n*L, 3w)
        q, k, v = (f"{p}{part}" for part in "qkv")
        self._node("Split", [qkv, self._const(f"{p}split", np.array([width] * 3, dtype=np.int64))], [q, k, v], axis=1)
        q, k, v = (self._op("Reshape", t, "heads_shape") for t in (q, k, v))  # (n, L, H, hw)
        q = self._op("Transpose", q, perm=[0, 2, 1, 3])  # (n, H, L, hw)
        k = self._op("Transpose", k, perm=[0, 2, 3, 1])  # (n, H, hw, L)
        v = self._op("Transpose", v, perm=[0, 2, 1, 3])
        scale = self._const(f"{p}scale", np.float32(1 / math.sqrt(width // heads)))
        scores = self._op("Add", self._op("Mul", self._op("MatMul", q, k), scale), "mask")  # (n, H, L, L)
        out = self._op("MatMul", self._op("Softmax", scores, axis=-1), v)  # (n, H, L, hw)
        out = self._op("Reshape", self._op("Transpose", out, perm=[0, 2, 1, 3]), "rows_shape")
        return self._linear(out, p + "attn.out_proj.weight", p + "attn.out_proj.bias")

    def _linear(self, x: str, weight: str, bias: str) -> str:
        """torch's Linear: x @ weight(out, in).T + bias."""
        return self._op("Gemm", x, self._weight(weight), self._weight(bias), transB=1)

    def _layer_norm(self, x: str, prefix: str) -> str:
        weight, bias = self._weight(prefix + ".weight"), self._weight(prefix + ".bias")
        return self._op("LayerNormalization", x, weight, bias, axis=-1, epsilon=LN_EPS)

    def _act(self, x: str, quick_gelu: bool) -> str:
        if quick_gelu:  # x * sigmoid(1.702 x)
            return self._op("Mul", x, self._op("Sigmoid", self._op("Mul", x, self._const(f"{x}k", np.float32(1.702)))))
        # exact GELU, 0.5 x (1 + erf(x / sqrt 2)); onnxruntime fuses it into one kernel
        erf = self._op("Erf", self._op("Mul", x, self._const(f"{x}k", np.float32(1 / math.sqrt(2)))))
        return self._op("Mul", self._op("Mul", x, self._const(f"{x}h", np.float32(0.5))), self._op("Add", erf, self._const(f"{x}o", np.float32(1))))

    def _weight(self, name: str) -> str:
        """A tensor of the export, declared as external data: the session is given the array itself."""
        from onnx import TensorProto

        if name not in self.weights:
            array = self._tensors[name]
            tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=array.shape, data_location=TensorProto.EXTERNAL)
            for key, value in (("location", "text_tower.safetensors"), ("offset", "0"), ("length", str(array.nbytes))):
                tensor.external_data.add(key=key, value=value)
            self.initializers.append(tensor)
            self.weights.add(name)
        return name

    def _const(self, name: str, value: np.ndarray | np.generic) -> str:
        from onnx import numpy_helper

        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def _op(self, op: str, *inputs: str, **attrs: object) -> str:
        out = f"t{len(self.nodes)}"
        self._node(op, list(inputs), [out], **attrs)
        return out

    def _node(self, op: str, inputs: list[str], outputs: list[str], **attrs: object) -> None:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, outputs, **attrs))
