"""CPU precision and contention: bf16 autocast against fp32 for every step-trained model, and one
training run alone against two side by side.

    python benchmarks/cpu_contention.py               # about 15 minutes on 2 cores
    python benchmarks/cpu_contention.py --only contention
    python benchmarks/cpu_contention.py --repeats 1 --no-write

Everything is `recscale benchmark` on the embedded data (ml-latest-small), as a user runs it: one
untimed epoch, then one timed; the training rate of the timed epoch (validation excluded). Each
measurement is a fresh process.

1. Precision: each model at its default batch (NeuMF also at 65,536 with dense and with sparse
   embedding gradients), fp32 and bf16 alternating, the median of `--repeats`. bf16 is only fast
   where the CPU computes it natively (AVX512-BF16 or AMX); the machine line names what this CPU has,
   and `recscale train` warns when it has neither.
2. Contention: NeuMF (batch 65,536, fp32) alone, then two identical runs started together, each
   reporting its own rate. recscale sizes its thread pools from the CPUs it may use (affinity and
   cgroup quota, resources.py); the goal is that each of the two keeps at least 0.4x the lone rate.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arguments, machine, publish, table  # noqa: E402

MODELS = [("neumf", {}, "batch 4,096 (default), sparse"), ("neumf", {"batch_size": 65536, "p": "embedding_gradients=dense"},
                                                             "batch 65,536, dense"),
          ("neumf", {"batch_size": 65536, "p": "embedding_gradients=sparse"}, "batch 65,536, sparse"),
          ("gmf", {}, "default"), ("embedding-mlp", {}, "default"), ("multvae", {}, "default"),
          ("multdae", {}, "default"), ("autoencoder", {}, "default")]


def prepare(work: Path) -> dict[str, Path]:
    out = {}
    for protocol in ("ncf", "vae"):
        out[protocol] = work / protocol
        subprocess.run([sys.executable, "-m", "recscale", "prepare", "--dataset", "ml-latest-small", "--protocol",
                        protocol, "--out", str(out[protocol])], check=True, capture_output=True)
    return out


def command(data: Path, model: str, settings: dict, precision: str, out: Path) -> list[str]:
    args = [sys.executable, "-m", "recscale", "benchmark", "--data", str(data), "--model", model, "--epochs", "2",
            "--untimed-epochs", "1", "--device", "cpu", "--precision", precision, "--json", str(out)]
    if "batch_size" in settings:
        args += ["--batch-size", str(settings["batch_size"])]
    if "p" in settings:
        args += ["-p", settings["p"]]
    return args


def rate(path: Path) -> float:
    result = json.loads(path.read_text())
    return result[f"{result['unit']}_per_second"]


def run_one(args: list[str], out: Path) -> float:
    subprocess.run(args, check=True, capture_output=True)
    return rate(out)


def main() -> None:
    parser = arguments(__doc__, repeats=3)
    parser.add_argument("--only", choices=("precision", "contention"), help="run one part (the other keeps its section)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="recscale-cpu-"))
    data = prepare(work)
    protocol = {"multvae": "vae", "multdae": "vae", "autoencoder": "vae"}
    if args.only in (None, "precision"):
        precision_rows = []
        for model, settings, label in MODELS:
            rates = {"fp32": [], "bf16": []}
            for _ in range(args.repeats):
                for precision in ("fp32", "bf16"):
                    out = work / "result.json"
                    rates[precision].append(run_one(command(data[protocol.get(model, "ncf")], model, settings,
                                                            precision, out), out))
            fp32, bf16 = statistics.median(rates["fp32"]), statistics.median(rates["bf16"])
            unit = "users/s" if model in protocol else "samples/s"
            precision_rows.append([model, label, f"{fp32:,.0f} {unit}", f"{bf16:,.0f} {unit}", f"{bf16 / fp32:.2f}x"])
            print(precision_rows[-1], flush=True)
        publish(args, "cpu-precision", f"""## CPU precision (`benchmarks/cpu_contention.py --only precision`)

{machine()}. `recscale benchmark` on the embedded data, the timed
second epoch's training rate, each a fresh process; medians of {args.repeats}, fp32 and bf16 alternating.
This CPU computes bf16 natively only if the machine line names AVX512-BF16 or AMX; on AVX2-only CPUs
bf16 is emulated (issue 18 measured NeuMF 14.6x slower there) and `recscale train` warns.

{table(["model", "setting", "fp32", "bf16", "bf16 / fp32"], precision_rows)}
""")
    if args.only in (None, "contention"):
        neumf = command(data["ncf"], "neumf", {"batch_size": 65536}, "fp32", work / "alone.json")
        # What `recscale tune --jobs` sets for its workers, against OpenMP's own default.
        policies = {"OpenMP's default (spin, then sleep)": None, "PASSIVE (tune --jobs > 1)": "PASSIVE"}
        rows = []
        for label, policy in policies.items():
            env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
            if policy is not None:
                env["OMP_WAIT_POLICY"] = policy
            alone, pairs = [], []
            for _ in range(args.repeats):
                subprocess.run(neumf, check=True, capture_output=True, env=env)
                alone.append(rate(work / "alone.json"))
                outs = [work / f"side{i}.json" for i in (0, 1)]
                procs = [subprocess.Popen(command(data["ncf"], "neumf", {"batch_size": 65536}, "fp32", o),
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
                         for o in outs]
                for p in procs:
                    _, err = p.communicate()
                    if p.returncode != 0:
                        raise SystemExit("a side-by-side run failed:\n" + err[-3000:])
                pairs.append([rate(o) for o in outs])
            small = []
            for _ in range(args.repeats):  # a small step alone: the cost of sleeping threads
                subprocess.run(command(data["ncf"], "gmf", {}, "fp32", work / "gmf.json"), check=True,
                               capture_output=True, env=env)
                small.append(rate(work / "gmf.json"))
            lone = statistics.median(alone)
            each = statistics.median(r for pair in pairs for r in pair)
            rows += [[label, "alone", f"{lone:,.0f}", "1.00x", ", ".join(f"{r:,.0f}" for r in alone)],
                     [label, "2 side by side (each)", f"{each:,.0f}", f"{each / lone:.2f}x",
                      "; ".join(" + ".join(f"{r:,.0f}" for r in pair) for pair in pairs)],
                     [label, "GMF alone (default batch)", f"{statistics.median(small):,.0f}", "",
                      ", ".join(f"{r:,.0f}" for r in small)]]
        print(rows, flush=True)
        publish(args, "cpu-contention", f"""## CPU contention (`benchmarks/cpu_contention.py --only contention`)

{machine()}. One NeuMF run (`recscale benchmark`, embedded data,
batch 65,536, fp32) alone against two started together on the same cores, medians of {args.repeats}; goal:
each of the two at least 0.4x the lone rate. recscale sizes its thread pool from the CPUs it may use
(affinity, cgroup quota; `tune --jobs J` gives each worker 1/J) and, for `tune --jobs` > 1 only, sets
`OMP_WAIT_POLICY=PASSIVE` so that idle OpenMP threads sleep rather than spin on cores another worker
needs; a lone run keeps OpenMP's default, since sleeping threads slow small steps (the GMF row).

{table(["OpenMP wait policy", "runs", "samples/s", "ratio", "all runs"], rows)}
""")


if __name__ == "__main__":
    main()
