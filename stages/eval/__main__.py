"""``python -m stages.eval --config CONFIG [--model models:/NAME@ALIAS | PATH] [--allow-regression]``:
evaluate one model against the champion alone, reusing the cached outputs of the stages before it."""

from pipeline.cli import stage_main


def _extra_args(parser):
    parser.add_argument("--model", metavar="URI_OR_PATH",
                        help="the candidate: models:/NAME@ALIAS, models:/NAME/VERSION or a local HF folder "
                             "(default: models:/<pipeline name>@candidate)")
    parser.add_argument("--allow-regression", action="store_true",
                        help="regressions against the champion do not block promotion, and a failed gate "
                             "does not fail the stage (eval.allow_regression)")

    def to_overrides(args) -> list[str]:
        out = []
        if args.model:
            out.append(f"eval.candidate={args.model}")
        if args.allow_regression:
            out.append("eval.allow_regression=true")
        return out

    return to_overrides


if __name__ == "__main__":
    stage_main("eval", extra_args=_extra_args)
