#!/usr/bin/env python
"""A demo page for a trained distilled DeiT: drop an image, see the top-5 of its averaged, class and distillation
heads (and of the teacher), and where its class and distillation tokens look.

    python scripts/demo.py outputs/deit                                  # http://127.0.0.1:7860
    python scripts/demo.py outputs/deit --teacher outputs/teacher --port 8000
    python scripts/demo.py me/deit-small-distilled                       # a model on the Hub
    python scripts/demo.py outputs/deit --write_space spaces/deit-demo   # a Hugging Face Space folder; nothing served

Needs the demo extra: pip install 'hf-deit[demo]'. The page is hf_deit.demo; a Space written here runs it unchanged.
"""

import argparse
import importlib.util
import sys

from hf_deit_inputs import InputError, exit_on_input_error
from hf_deit_inputs.checks import check_saved_model, install_hint


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="Folder (or Hub id) of a trained distilled DeiT, with its image processor.")
    parser.add_argument("--teacher", default=None, help="Its teacher (folder, weights file or Hub id): top-5 too.")
    parser.add_argument("--host", default="127.0.0.1", help="Address to serve on (0.0.0.0: every interface).")
    parser.add_argument("--port", type=int, default=7860, help="Port to serve on.")
    parser.add_argument("--write_space", default=None, metavar="DIR",
                        help="Write a Hugging Face Space folder serving this page to DIR instead of serving it.")
    parser.add_argument("--trust_remote_code", action="store_true", help="Allow remote code for the model/teacher.")
    return parser.parse_args(argv)


def check(argv) -> None:
    """The names given and gradio, before torch loads (the model folder's files: `hf_deit.demo.check_demo_inputs`)."""
    args = parse_args(argv)
    problems = check_saved_model("model", args.model)
    problems += check_saved_model("--teacher", args.teacher, role="teacher") if args.teacher else []
    if importlib.util.find_spec("gradio") is None:
        problems.append(f"The demo page needs gradio: {install_hint('demo')}.")
    if problems:
        raise InputError(problems)


if __name__ == "__main__":  # the command line answered first (--help, every input checked), before torch loads
    exit_on_input_error(check, sys.argv[1:], "demo.py")

from hf_deit.demo import serve, write_space  # noqa: E402


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.write_space:
        folder = write_space(args.write_space, args.model, teacher=args.teacher)
        print(f"Wrote the Space to {folder}. Try it with `python {folder}/app.py`; put it on the Hub with "
              f"`hf upload <user>/<space> {folder} . --repo-type space`.")  # fmt: skip
        return
    serve(args.model, teacher=args.teacher, host=args.host, port=args.port, trust_remote_code=args.trust_remote_code)


if __name__ == "__main__":
    exit_on_input_error(main, sys.argv[1:], "demo.py")
