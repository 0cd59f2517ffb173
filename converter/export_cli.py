"""`vmae-export`: a Keras .weights.h5 back to an official .pth or a transformers folder.

Same failure contract as `vmae-convert` (one `error:` line, exit 2 bad input, 3 parity failed).
"""
from __future__ import annotations

import click

from .cli import OneLineUsageErrors, guarded


@click.command(cls=OneLineUsageErrors, context_settings={"help_option_names": ["-h", "--help"],
                                                         "max_content_width": 100})
@click.option("--weights", type=click.Path(dir_okay=False), required=True,
              help="<name>.weights.h5 written by vmae-convert, or the same model's weights after fine-tuning.")
@click.option("--to", "to", type=click.Choice(["official", "hf"]), required=True,
              help="official: a .pth as the MCG-NJU scripts save it; hf: a transformers folder.")
@click.option("--output", type=click.Path(), required=True, help="The .pth file or the folder to write.")
@click.option("--report", type=click.Path(dir_okay=False), default=None,
              help="The conversion's <name>.parity.json (the architecture); default: beside --weights.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the parity clip.")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def main(weights, to, output, report, seed, debug):
    """Write Keras weights out in a PyTorch family's format and prove the files compute what the
    Keras model computes (pt_reference for official, transformers for hf).

    \b
      vmae-export --weights out/TFVideoMAE_B_K400_16x224_FT.weights.h5 --to official --output b.pth
      vmae-export --weights out/TFVideoMAE_hf_videomae-base.weights.h5 --to hf --output videomae-base/
    """

    def run() -> int:
        from .reexport import export_weights

        check = export_weights(weights, to, output, report, seed=seed)
        click.echo(f"wrote {check['output']}: max abs {check['max_abs']:.2e} against {check['reference']} (PASS)")
        return 0

    guarded(run, debug)


if __name__ == "__main__":
    main()
