"""`recscale evaluate`, `compare`, `recommend`, `export` and `serve`: what is done with trained runs."""

from __future__ import annotations

import json
from pathlib import Path

from recscale import api
from recscale.cli.parsing import add_format_argument, say
from recscale.config.arguments import add_arguments, from_namespace
from recscale.config.layers import Layer, build, flags
from recscale.config.run import MAX_K, EvalConfig
from recscale.errors import RecscaleError
from recscale.evaluation.report import format_rows, format_table
from recscale.recommend import read_histories_file, read_user_file


def _add_run_choice(p) -> None:
    p.add_argument("--run", required=True, help="run directory from `recscale train`")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N [default: auto]")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="best (validation) or last [default: best]")


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="score a trained run on a split")
    _add_run_choice(p)
    p.add_argument("--split", choices=["valid", "test"], default="test")
    p.add_argument("--k", help="cut-offs, comma-separated [default: the run's, 10,20,50,100 less those at or "
                   "above an ncf split's sampled negatives]")
    p.add_argument("--test-history", choices=("train+valid", "train"), default=None,
                   help="ncf/random: score test users from train+valid or from train only "
                   "[default: the run's setting, train+valid]")
    add_format_argument(p)


def add_recommend(sub) -> None:
    p = sub.add_parser("recommend", help="write top-k unseen items per user")
    _add_run_choice(p)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--users", help="file with one original user id per line")
    p.add_argument("--all", action="store_true", help="every user of the dataset")
    p.add_argument("--histories", help="file of `user<TAB or ,>item` lines (original ids): each user scored from "
                   "these items alone, as a new user (history models read them, pairwise models fold them in)")
    p.add_argument("--out", required=True, help="recs.tsv or recs.parquet")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it is recommendations "
                   "recscale wrote")
    p.add_argument("--columns", help="item features written beside each item, comma-separated: title, genres "
                   "('' for none) [default: every one the dataset has]")


def add_export(sub) -> None:
    p = sub.add_parser("export", help="a trained run -> a bundle for serving (ONNX / torch.export graphs, id maps, "
                       "seen items, popularity)")
    p.add_argument("--run", required=True, help="run directory from `recscale train`")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--format", default="onnx,torch", help="onnx, torch or both, comma-separated [default: onnx,torch]")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def add_serve(sub) -> None:
    from recscale.serving.settings import ServerConfig
    p = sub.add_parser("serve", help="serve a bundle over HTTP (FastAPI + uvicorn)")
    p.add_argument("--bundle", required=True, help="bundle directory from `recscale export`")
    add_arguments(p, ServerConfig)


def _parse_ks(text: str) -> tuple[int, ...]:
    """--k 10,20: checked like the ks setting of a run (one place for its rules)."""
    try:
        ks = tuple(sorted({int(k) for k in text.split(",") if k.strip()}))
    except ValueError:
        raise RecscaleError(f"--k: expected comma-separated integers, got {text!r}") from None
    if not ks:
        raise RecscaleError(f"--k: expected comma-separated integers, got {text!r}")
    return build(EvalConfig, Layer({"ks": ks}, "flags", "flag", aliases={"ks": "--k"})).ks


def cmd_evaluate(args) -> int:
    ks = _parse_ks(args.k) if args.k is not None else None
    result = api.load_run(args.run, args.device, args.checkpoint).evaluate(args.split, ks, args.test_history)
    shown = sorted({int(key.split("@")[1]) for key in result if key.startswith("hr@")})
    print(format_table({f"{result['model']} ({args.split})": result}, shown, result["protocol"], args.report_format))
    if result.get("unscored_users"):
        say(args, f"not scored: {result['unscored_users']:,} {args.split} users this model has nothing to go on for "
                  f"(no history before the split, or no training interactions for a model that cannot fold in)")
    say(args, f"wrote {Path(args.run) / f'eval-{args.split}.json'}")
    return 0


def cmd_recommend(args) -> int:
    if not 1 <= args.k <= MAX_K:
        raise RecscaleError(f"--k: must lie in [1, {MAX_K}], got {args.k}")
    if sum(map(bool, (args.users, args.all, args.histories))) != 1:
        raise RecscaleError("recommend: give exactly one of --users FILE, --all or --histories FILE")
    run = api.load_run(args.run, args.device, args.checkpoint)
    users = read_user_file(args.users, run.data) if args.users else None
    histories = read_histories_file(args.histories, run.data) if args.histories else None
    columns = None if args.columns is None else tuple(c.strip() for c in args.columns.split(",") if c.strip())
    given = [f for f in (args.users, args.histories) if f]
    rows = run.write_recommendations(args.out, users, args.k, args.overwrite, given, columns, histories)
    print(f"wrote {rows} recommendations -> {args.out}")
    return 0


def cmd_export(args) -> int:
    from recscale.export import export_run
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    manifest = export_run(args.run, args.out, formats, args.checkpoint, overwrite=args.overwrite)
    graphs = ", ".join(f for g in manifest["graphs"].values() for f in g["files"]) or "none (popularity needs none)"
    print(f"exported {manifest['model']} ({manifest['kind'] or 'no graph'}; {manifest['n_users']:,} users, "
          f"{manifest['n_items']:,} items) -> {args.out}\n  graphs: {graphs}; fold-in for new users: "
          f"{'yes' if manifest['fold_in'] else 'no'}; retrieval index: {'yes' if manifest['retrieval'] else 'no'}")
    return 0


def cmd_serve(args) -> int:
    from recscale.serving.server import serve
    from recscale.serving.settings import ServerConfig
    serve(args.bundle, build(ServerConfig, flags(from_namespace(ServerConfig, args))))
    return 0




def add_compare(sub) -> None:
    p = sub.add_parser("compare", help="paired tests between runs on the same dataset: is one really better?")
    p.add_argument("runs", nargs="+", metavar="RUN", help="two or more run directories")
    p.add_argument("--split", choices=["valid", "test"], default="test")
    p.add_argument("--metrics", help="comma-separated, e.g. hr@10,ndcg@10 [default: the protocol's selection "
                   "metric and mrr]")
    p.add_argument("--seed", type=int, default=0, help="of the bootstrap resamples [default: 0]")
    add_format_argument(p)


def cmd_compare(args) -> int:
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    rows = api.compare(args.runs, args.split, metrics, args.seed)
    if args.report_format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    header = ["a", "b", "metric", "users", "mean a", "mean b", "b - a", "95% interval", "t-test p (Holm)",
              "Wilcoxon p (Holm)"]
    body = [[r["a"], r["b"], r["metric"], r["users"], f"{r['mean_a']:.4f}", f"{r['mean_b']:.4f}",
             f"{r['difference']:+.4f}", f"[{r['ci95_low']:+.4f}, {r['ci95_high']:+.4f}]",
             f"{r['t_test_p']:.3g} ({r['t_test_p_holm']:.3g})", f"{r['wilcoxon_p']:.3g} ({r['wilcoxon_p_holm']:.3g})"]
            for r in rows]
    print(format_rows(header, body, args.report_format))
    return 0
