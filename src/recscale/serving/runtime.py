"""The runtimes that run a bundle's graphs: ONNX Runtime (the default) and, only for a bundle the
user trusts, torch.export's program (its loader unpickles, so it could run code from the file)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recscale.errors import RecscaleError

RUNTIMES = ("auto", "onnx", "torch")


def onnx_session(path: Path, threads: int = 0):
    import onnxruntime as ort
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle intra-op threads otherwise spin for a while after every run: on a small machine that
    # takes the CPU from the event loop and the other requests (measured: 10x fewer requests/s)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_external_data(path: Path, listed: dict) -> None:
    """An ONNX graph may keep its weights in other files, named inside the graph: ONNX Runtime
    would read whatever file a crafted graph names. Only files the manifest lists (and so were
    verified) are allowed."""
    try:
        import onnx
    except ImportError:  # onnxruntime without onnx: it refuses paths outside the model's folder itself
        return
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx's own parse errors: a file that is not a graph
        raise RecscaleError(f"--bundle: {path}: not an ONNX graph: {str(exc).splitlines()[0]}") from None
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            if location not in listed:
                raise RecscaleError(f"--bundle: {path}: names external data {location!r}, which the manifest "
                                    f"does not list")


class Graph:
    """One exported graph, run by ONNX Runtime (model.onnx) or torch.export's program (model.pt2)."""

    def __init__(self, root: Path, spec: dict, listed: dict, runtime: str, threads: int, trust: bool):
        files = spec["files"]
        self.inputs = list(spec["inputs"])
        self.output = next(iter(spec["outputs"]))
        onnx = next((f for f in files if f.endswith(".onnx")), None)
        pt2 = next((f for f in files if f.endswith(".pt2")), None)
        if runtime == "auto":
            runtime = "onnx" if onnx else "torch"
        if runtime == "onnx":
            if not onnx:
                raise RecscaleError(f"--runtime onnx: {root} has no ONNX graph (export it with --format onnx)")
            check_external_data(root / onnx, listed)
            try:
                self.session, self.runtime = onnx_session(root / onnx, threads), "onnx"
            except ImportError:
                raise RecscaleError("--runtime onnx: needs onnxruntime (pip install 'recscale[export]')") from None
            except Exception as exc:  # ONNX Runtime's own load errors: a graph it cannot run
                raise RecscaleError(f"--bundle: {root / onnx}: ONNX Runtime cannot load it: "
                                    f"{str(exc).splitlines()[0]}") from None
            return
        if not pt2:
            raise RecscaleError(f"--runtime torch: {root} has no torch.export graph (export it with --format torch)")
        if not trust:
            raise RecscaleError(f"--runtime torch: {root / pt2}: loading a torch.export program unpickles it, which "
                                f"can run code from the file; serve the ONNX graph, or pass --trust-bundle for a "
                                f"bundle you made yourself")
        import torch
        self.program, self.runtime = torch.export.load(root / pt2).module(), "torch"

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        if self.runtime == "onnx":
            return self.session.run([self.output], dict(zip(self.inputs, arrays)))[0]
        import torch
        with torch.no_grad():
            return self.program(*(torch.from_numpy(a) for a in arrays)).numpy()
