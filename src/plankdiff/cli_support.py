"""What every `plankdiff` verb shares: switches, one-line errors, datasets and splits opened with a
useful message, and the device line.

Nothing heavy is imported at module level (torch, pandas, …): the CLI modules import this to build
`--help`, which must stay instant; the library is imported inside the functions that need it.
"""

from __future__ import annotations

import difflib
import re
from typing import TYPE_CHECKING, Any, NoReturn, get_args

import typer
from rich.console import Console
from rich.markup import escape

from plankdiff.choices import Device

if TYPE_CHECKING:
    from plankdiff.data.prepare import PreparedDataset
    from plankdiff.data.splits import Split


def switch(default: bool, *flags: str, help: str) -> Any:
    """A boolean option shown as a bare switch: typer otherwise prints `<bool>` after it, which
    reads as if it took a value (`--score true`)."""
    return typer.Option(default, *flags, metavar="", help=help)


def max_tflops_option() -> Any:
    """`--max-tflops`, the same for every trainer: a compute budget that a busy machine cannot move."""
    return typer.Option(
        None,
        "--max-tflops",
        min=0.0,
        help="training budget in TFLOP (1e12 FLOPs, forward and backward), the same on a busy or idle "
        "machine; whichever of the budgets runs out first ends the run (default: none)",
    )


def training_precision_option() -> Any:
    """`--precision`, the same for every trainer (the config's value when not given)."""
    return typer.Option(
        None,
        "--precision",
        help="auto: bf16 autocast where the CPU has bf16 units (AVX512-BF16, AMX) or on a bf16 GPU, "
        "else fp32; fp32; bf16 (weights and optimiser state stay fp32) (default: the config's)",
    )


def int_list(option: str, text: str) -> tuple[int, ...]:
    """`1,5,10` → (1, 5, 10); anything else is refused naming the option."""
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not a comma-separated list of integers", param_hint=option
        ) from None


def fail(console: Console, message: object, code: int = 1) -> NoReturn:
    """One line naming the cause, a non-zero exit code, no traceback."""
    console.print(f"[red]error:[/red] {escape(str(message))}", soft_wrap=True)
    raise typer.Exit(code)


def open_dataset(console: Console, name: str) -> PreparedDataset:
    from plankdiff.data.prepare import PreparedDataset
    from plankdiff.data.sources import SourceError

    try:
        return PreparedDataset.open(name)
    except SourceError as error:
        fail(console, error)


def split_names(dataset: PreparedDataset) -> list[str]:
    return sorted(path.stem for path in (dataset.root / "splits").glob("*.csv"))


def check_split(console: Console, dataset: PreparedDataset, name: str) -> None:
    """Refuse a split that does not exist on `dataset`, listing those that do; a name given without
    its seed suffix (`long-tailed` for `long-tailed-s0`) or misspelt gets the likely ones first."""
    names = split_names(dataset)
    if name in names:
        return
    likely = [n for n in names if n.startswith(f"{name}-")] or difflib.get_close_matches(name, names, n=3)
    hint = f"did you mean {' or '.join(likely)}? " if likely else ""
    existing = ", ".join(names) if names else "none yet (make one with `plankdiff data split`)"
    fail(console, f"--split {name!r}: no such split on {dataset.name}; {hint}existing splits: {existing}")


def load_split(console: Console, dataset: PreparedDataset, name: str) -> Split:
    from plankdiff.data.splits import Split

    check_split(console, dataset, name)
    return Split.load(dataset, name)


CUDA_INDEX = re.compile(r"cuda:(\d+)")


def parse_device(text: str) -> str:
    """A `Device` value or `cuda:N`; anything else is refused while the command line is parsed
    (exit 2, before anything runs), like every Literal option. Whether GPU N exists is checked by
    `resolve_device`, which needs torch."""
    if text in get_args(Device) or CUDA_INDEX.fullmatch(text):
        return text
    choices = ", ".join(repr(c) for c in (*get_args(Device), "cuda:N"))
    raise typer.BadParameter(f"{text!r} is not one of {choices} (N: a GPU index)")


def device_option(help: str) -> Any:
    """`--device`, the same for every verb: auto | cpu | cuda | cuda:N."""
    return typer.Option("auto", "--device", parser=parse_device, metavar="<auto|cpu|cuda|cuda:N>", help=help)


def resolve_device(console: Console, choice: str) -> str:
    """`auto`: CUDA when there is a device, else the CPU; `cuda` or `cuda:N` without CUDA, or with
    N not a GPU torch sees, is refused in one line."""
    import torch

    from plankdiff.devices import default_device

    if choice == "auto":
        return default_device().type
    if choice.startswith("cuda") and not torch.cuda.is_available():
        fail(console, f"--device {choice}: no CUDA device is visible to torch")
    index = CUDA_INDEX.fullmatch(choice)
    if index and int(index.group(1)) >= (count := torch.cuda.device_count()):
        visible = f"cuda:0 to cuda:{count - 1}" if count > 1 else "cuda:0"
        fail(console, f"--device {choice}: no such GPU; torch sees {count} ({visible})")
    return choice


def say_device(console: Console, device: object, *, precision: str | None = None) -> None:
    """The one line at the start of a training, extraction or prediction: where it runs (and, for a
    training, in which precision)."""
    import torch

    device = torch.device(str(device))
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        where = f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    else:
        where = f"cpu ({torch.get_num_threads()} threads)"
    console.print(f"device: {where}" + (f", {precision}" if precision else ""), highlight=False)
