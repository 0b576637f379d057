"""``python -m stages.serve --config CONFIG [--model models:/NAME@ALIAS] [--port N] [--host H]``:
deploy and keep serving until interrupted."""

from pipeline.cli import stage_main


def _extra_args(parser):
    parser.add_argument("--model", metavar="URI_OR_PATH",
                        help="what to serve: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/..., or a local HF "
                             "folder (default: models:/<pipeline name>@<serve.alias>)")
    parser.add_argument("--port", type=int, help="HTTP port of Serve's proxy (serve.http.port)")
    parser.add_argument("--host", help="bind address of Serve's proxy (serve.http.host; 0.0.0.0 on clusters)")

    def to_overrides(args) -> list[str]:
        out = []
        if args.model:
            out.append(f"serve.model={args.model}")
        if args.port is not None:
            out.append(f"serve.http.port={args.port}")
        if args.host:
            out.append(f"serve.http.host={args.host}")
        return out

    return to_overrides


if __name__ == "__main__":
    stage_main("serve", extra_args=_extra_args)
