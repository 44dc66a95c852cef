from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from plankdiff.choices import NOISE_CEILING
from plankdiff.data.splits import Split
from plankdiff.evaluation.label_efficiency import nested_fraction
from plankdiff.study.config import SHIPPED, load_experiment

MINIMAL = """
name: mini
datasets:
  ndsb: {source: a.zip}
  zoolake: {source: b.zip}
  pwssc: {source: c.zip}
pretrain:
  ndsb: {dataset: ndsb, split: long-tailed}
  zoolake-2018+2019: {dataset: zoolake, split: "temporal:2018+2019-2020"}
  zoolake-2018: {dataset: zoolake, split: "temporal:2018-2019"}
diffusion: {preset: tiny, max_minutes: 0.1}
baselines: {methods: [simclr], max_minutes: 0.1}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(text)
    return path


def test_every_shipped_experiment_file_is_listed_and_loads():
    folder = resources.files("plankdiff") / "configs" / "experiments"
    files = sorted(Path(str(entry)).stem for entry in folder.iterdir() if entry.name.endswith(".yaml"))
    assert files == sorted(SHIPPED)
    assert sorted(SHIPPED) == [
        "best",
        "compare",
        "compare-64px",
        "cpu",
        "ddpm-64px",
        "ddpm-bf16",
        "ddpm-ema-warmup",
        "ddpm-lownoise",
        "ddpm-warmup10",
        "ddpm-wide8",
        "gpu",
        "markers",
        "normalisation",
        "quick",
        "scaling-high",
        "scaling-low",
    ]
    for name in SHIPPED:
        config = load_experiment(name)
        assert config.name == name
        needed = {"ndsb": {"ndsb"}, "zoolake": {"zoolake"}, "ndsb-pwssc": {"ndsb", "pwssc"}}
        assert set(config.datasets) >= set().union(*(needed[f] for f in config.experiments))


# The five registered baselines (tests/baselines checks the registry holds exactly these); named
# here so that this module does not import torch.
METHODS = ("byol", "dino", "mae", "simclr", "supervised")
# Budget per backbone as the README states them (the shipped studies table): (minutes, TFLOP).
BUDGETS = {
    "cpu": (None, 25),
    "compare": (20, None),
    "gpu": (60, None),
    "best": (60, None),
    "normalisation": (None, 25),
}


@pytest.mark.parametrize("name", sorted(BUDGETS))
def test_comparison_studies_give_the_ddpm_and_every_baseline_the_same_budget(name):
    config = load_experiment(name)
    # One `baselines` budget covers every method, so an equal budget for all is this equality.
    diffusion = (config.diffusion.max_minutes, config.diffusion.max_tflops)
    assert diffusion == (config.baselines.max_minutes, config.baselines.max_tflops) == BUDGETS[name]
    assert set(config.baselines.methods) == set(METHODS)
    assert config.baselines.include_raw_pixels


def test_quick_is_the_one_study_with_unequal_minutes():
    # A pipeline check, not a comparison: the DDPM gets 1.5 minutes and each baseline 0.4 (README,
    # shipped studies table), so its numbers say nothing about which method is better.
    config = load_experiment("quick")
    assert (config.diffusion.max_minutes, config.baselines.max_minutes) == (1.5, 0.4)
    assert set(config.baselines.methods) == set(METHODS)


def test_best_is_the_readme_recipe_for_every_method():
    # README: 8-orientation averaging, the log object size and top-3 fusion, as one protocol block
    # that the study applies to every method's features.
    config = load_experiment("best")
    protocol = config.protocol
    assert (protocol.orientations, protocol.object_size, protocol.fuse_top) == (8, True, 3)
    assert config.diffusion.preset == "cpu" and config.experiments == ("ndsb",)
    assert len(config.seeds) >= 3, "headline comparisons need at least 3 pre-training seeds"


def test_a_misspelt_key_names_the_key_and_the_file(tmp_path):
    path = write(tmp_path, MINIMAL.replace("preset: tiny", "presett: tiny"))
    with pytest.raises(ValueError) as error:
        load_experiment(path)
    assert str(path) in str(error.value) and "diffusion.presett" in str(error.value)


def test_a_wrong_type_names_the_key(tmp_path):
    path = write(tmp_path, MINIMAL.replace("max_minutes: 0.1}\nbaselines", "max_minutes: soon}\nbaselines"))
    with pytest.raises(ValueError, match=r"diffusion\.max_minutes"):
        load_experiment(path)


def test_the_minimal_study_validates_and_runs_every_experiment_family(tmp_path):
    assert load_experiment(write(tmp_path, MINIMAL)).experiments == ("ndsb", "zoolake", "ndsb-pwssc")


def test_a_subset_of_experiments_needs_only_its_datasets_and_backbones(tmp_path):
    text = MINIMAL.replace("  zoolake: {source: b.zip}\n  pwssc: {source: c.zip}\n", "")
    text = text.replace('  zoolake-2018+2019: {dataset: zoolake, split: "temporal:2018+2019-2020"}\n', "")
    text = text.replace('  zoolake-2018: {dataset: zoolake, split: "temporal:2018-2019"}\n', "")
    assert load_experiment(write(tmp_path, "experiments: [ndsb]\n" + text)).experiments == ("ndsb",)
    with pytest.raises(ValueError, match="datasets.zoolake is required by the zoolake experiments"):
        load_experiment(write(tmp_path, text))


def test_a_missing_temporal_backbone_is_named(tmp_path):
    text = MINIMAL.replace('  zoolake-2018: {dataset: zoolake, split: "temporal:2018-2019"}\n', "")
    with pytest.raises(ValueError, match="zoolake experiments need a pretrain entry .* 'temporal:2018-2019'"):
        load_experiment(write(tmp_path, text))


def test_an_unknown_experiment_family_is_named(tmp_path):
    with pytest.raises(ValueError, match="experiments"):
        load_experiment(write(tmp_path, "experiments: [ndsb, plankton]\n" + MINIMAL))


def test_pretraining_on_an_unknown_dataset_is_refused(tmp_path):
    path = write(tmp_path, MINIMAL.replace("ndsb: {dataset: ndsb", "ndsb: {dataset: ndbs"))
    with pytest.raises(ValueError, match="unknown dataset 'ndbs'"):
        load_experiment(path)


def test_label_fractions_nest_and_keep_every_class():
    targets = np.repeat(np.arange(3), [50, 10, 2])
    rows = np.arange(len(targets))
    split = Split("s", {"train": rows, "val": rows[:0], "test": rows[:0]}, targets, ["a", "b", "c"])
    small, large = nested_fraction(split, 0.1, seed=0), nested_fraction(split, 0.5, seed=0)
    assert set(small) <= set(large)
    assert set(targets[small]) == {0, 1, 2}  # at least one image per class
    assert len(small) == 5 + 1 + 1


# What a real run would only fail on later (after preparing data, or hours into training), refused
# by `load_experiment` and so by `plankdiff run --dry-run`: (case, edits of MINIMAL, message fragment).
A_ZIP = "{source: a.zip}"
REFUSED = [
    (
        "timestep above T",
        {"name: mini": "name: mini\nfeatures: {timesteps: [5, 1200]}"},
        r"features\.timesteps: \[1200\] outside 0\.\.999",
    ),
    (
        "negative timestep",
        {"name: mini": "name: mini\nfeatures: {timesteps: [-1]}"},
        r"features\.timesteps: \[-1\] outside 0\.\.999",
    ),
    (
        "no timesteps",
        {"name: mini": "name: mini\nfeatures: {timesteps: []}"},
        r"features\.timesteps: .*at least 1 item",
    ),
    (
        "unknown preset",
        {"preset: tiny": "preset: huge"},
        r"diffusion\.preset: unknown preset 'huge': one of tiny, cpu, cpu-wide8, cpu-64, paper or a YAML file",
    ),
    (
        "unknown method",
        {"methods: [simclr]": "methods: [simclr, swav]"},
        r"baselines\.methods: unknown baseline method 'swav'; choose one of: byol",
    ),
    (
        "two channels",
        {A_ZIP: "{source: a.zip, channels: 2}"},
        r"datasets\.ndsb\.channels: Input should be 1 or 3",
    ),
    (
        "size below 8",
        {A_ZIP: "{source: a.zip, size: 4}"},
        r"datasets\.ndsb\.size: Input should be greater than or equal to 8",
    ),
    (
        "odd size for tiny",
        {A_ZIP: "{source: a.zip, size: 31}"},
        r"datasets\.ndsb\.size 31 does not fit preset tiny: 2 levels need a size that is a multiple of 2 px",
    ),
    (
        "size 30 for cpu",
        {A_ZIP: "{source: a.zip, size: 30}", "preset: tiny": "preset: cpu"},
        r"datasets\.ndsb\.size 30 does not fit preset cpu: 3 levels need a size that is a multiple of 4 px",
    ),
    (
        "size MAE cannot patch",
        {A_ZIP: "{source: a.zip, size: 34}", "methods: [simclr]": "methods: [mae]"},
        r"datasets\.ndsb\.size 34 does not fit baseline mae: 34 px images do not split into 4 px patches",
    ),
    (
        "zero baseline width",
        {"methods: [simclr]": "methods: [simclr], width: 0"},
        r"baselines\.width: Input should be greater than or equal to 1",
    ),
    (
        "width MAE's heads cannot split",
        {"methods: [simclr]": "methods: [simclr, mae], width: 8"},
        r"baselines: width 8 does not fit baseline mae: the ViT's width must be a multiple of its 3 heads",
    ),
    (
        "width MAE's decoder heads cannot split",
        {"methods: [simclr]": "methods: [mae], width: 9"},
        r"baselines: width 9 does not fit baseline mae: its decoder width 6 \(2/3 of it\) must split into 4",
    ),
    (
        "label fraction 0",
        {"name: mini": "name: mini\nlabel_fractions: [0, 0.5]"},
        r"label_fractions: \[0\.0\] outside \(0, 1\]",
    ),
    (
        "no validation images per class",
        {"name: mini": "name: mini\nfeatures: {per_class_val: 0}"},
        r"features\.per_class_val: Input should be greater than or equal to 1",
    ),
    (
        "zero diffusion batch",
        {"max_minutes: 0.1}\nbaselines": "max_minutes: 0.1, batch_size: 0}\nbaselines"},
        r"diffusion\.batch_size: Input should be greater than or equal to 1",
    ),
]


@pytest.mark.parametrize(("case", "edits", "message"), REFUSED, ids=[c[0] for c in REFUSED])
def test_what_a_run_would_fail_on_is_refused_up_front(tmp_path, case, edits, message):
    text = MINIMAL
    for old, new in edits.items():
        assert old in text, f"{case}: the edit does not apply"
        text = text.replace(old, new, 1)
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match=message) as caught:
        load_experiment(path)
    assert str(caught.value).startswith(f"{path}: invalid experiment: ")
    assert "\n" not in str(caught.value)


OWN = """
name: mine
datasets: {mine: {source: my-images}}
pretrain: {mine: {dataset: mine, split: long-tailed}}
experiments: [{pretrain: mine, split: long-tailed}, {pretrain: mine, split: balanced}]
diffusion: {preset: tiny, max_tflops: 1}
baselines: {methods: [simclr], max_tflops: 1}
"""


def test_an_experiment_on_ones_own_data_needs_no_shipped_dataset(tmp_path):
    config = load_experiment(write(tmp_path, OWN))
    assert config.families == () and [config.own_name(e) for e in config.own] == [
        "mine/long-tailed",
        "mine/balanced",
    ]
    assert config.splits.fractions == (0.7, 0.1, 0.2)  # the shipped studies' partition, exactly
    assert config.splits.temporal_val_fraction == 0.125  # their temporal validation share, exactly


OWN_REFUSED = [
    ("nothing selected", {"experiments: [": "experiments: []\n#"}, r"experiments: selects no experiment"),
    (
        "unknown family",
        {"[{pretrain: mine, split: long-tailed}, ": "[mine, "},
        r"experiments\.0\.family: Input should be 'ndsb', 'zoolake' or 'ndsb-pwssc'",
    ),
    (
        "unknown split",
        {"split: balanced}]": "split: balance}]"},
        r"experiments\.1\.own\.split: Input should be 'long-tailed' or 'balanced'$",
    ),
    (
        "unknown pretrain",
        {"{pretrain: mine, split: balanced}": "{pretrain: mne, split: balanced}"},
        r"experiments\.1\.pretrain names unknown pretrain entry 'mne' \(known: mine\)",
    ),
    (
        "temporal pretrain",
        {"split: long-tailed}}": 'split: "temporal:2018-2019"}}'},
        r"experiments\.0\.pretrain: pretrain\.mine has split 'temporal:2018-2019'.*must be 'long-tailed'",
    ),
    (
        "twice",
        {"split: balanced}]": "split: long-tailed}]"},
        r"experiments\.1\.pretrain: experiment 'mine/long-tailed' is selected twice",
    ),
    (
        "no training share",
        {"name: mine": "name: mine\nsplits: {val_fraction: 0.3, test_fraction: 0.7}"},
        r"splits: val_fraction 0\.3 \+ test_fraction 0\.7 leave no training images",
    ),
    (
        "misspelt split option",
        {"name: mine": "name: mine\nsplits: {val_share: 0.3}"},
        r"splits\.val_share: Extra inputs are not permitted",
    ),
]


@pytest.mark.parametrize(("case", "edits", "message"), OWN_REFUSED, ids=[c[0] for c in OWN_REFUSED])
def test_a_wrong_experiment_on_ones_own_data_is_refused_naming_the_file_and_key(
    tmp_path, case, edits, message
):
    text = OWN
    for old, new in edits.items():
        assert old in text, f"{case}: the edit does not apply"
        text = text.replace(old, new, 1)
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match=message) as caught:
        load_experiment(path)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


def test_overrides_set_nested_keys_of_a_shipped_file_with_their_types():
    config = load_experiment(
        "gpu",
        overrides=[
            "diffusion.max_minutes=0.5",
            "diffusion.batch_size=2",
            "baselines.max_tflops=1.5",
            "seeds=[0]",
            "caps={train: 4, val: 2, test: 2}",
            "datasets.ndsb.source=/elsewhere/ndsb.zip",
        ],
    )
    assert config.diffusion.max_minutes == 0.5 and config.diffusion.batch_size == 2
    assert config.diffusion.preset == "paper"  # what was not overridden is the file's
    assert config.baselines.max_tflops == 1.5 and config.baselines.max_minutes == 60
    assert config.seeds == (0,) and (config.caps.train, config.caps.val, config.caps.test) == (4, 2, 2)
    assert config.datasets["ndsb"].source == "/elsewhere/ndsb.zip" and config.datasets["ndsb"].size == 64
    assert load_experiment("gpu").diffusion.max_minutes == 60  # the shipped file is untouched


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "diffusion.max_minuts=1",
            r"with --set diffusion.max_minuts=1: invalid experiment: diffusion.max_minuts",
        ),
        ("diffusion.max_minutes=-1", r"diffusion.max_minutes: Input should be greater than 0"),
        ("seeds=many", r"seeds: Input should be a valid tuple"),
        ("diffusion", r"--set 'diffusion': not KEY=VALUE"),
        ("diffusion..preset=paper", r"not KEY=VALUE with a dotted KEY"),
        ("name.first=x", r"--set 'name.first=x': name is 'gpu', not a mapping"),
        ("seeds=[0", r"--set 'seeds=\[0': the value is not YAML"),
    ],
)
def test_a_bad_override_is_one_line_naming_it(override: str, message: str):
    with pytest.raises(ValueError, match=message) as error:
        load_experiment("gpu", overrides=[override])
    assert "\n" not in str(error.value)


def test_the_diffusion_sample_grid_leaves_a_trained_backbone_key_unchanged_by_default():
    config = load_experiment("cpu")
    assert "samples" not in config.diffusion.identity()  # backbones trained before keep their key
    fewer = load_experiment("cpu", overrides=["diffusion.samples=0"]).diffusion
    assert fewer.identity()["samples"] == 0


def test_training_precision_enters_the_pretraining_key_only_when_it_is_not_fp32():
    """Backbones trained before bf16 training existed were fp32: their cached stages stay valid."""
    from plankdiff.study.runner import pretrain_inputs

    config = load_experiment("cpu")
    assert config.training_precision == "fp32"  # the 3-seed re-run began in fp32
    fp32 = pretrain_inputs(config, "ndsb-key", [3, 1, 2], 0, "fp32")
    bf16 = pretrain_inputs(config, "ndsb-key", [3, 1, 2], 0, "bf16")
    assert "precision" not in fp32 and bf16 == fp32 | {"precision": "bf16"}
    assert pretrain_inputs(config, "ndsb-key", [3, 1, 2], 1, "fp32") != fp32  # the seed is in it too


@pytest.mark.parametrize(
    ("experiments", "pretrain", "datasets"),
    [
        ("[ndsb]", ("ndsb",), ("ndsb",)),
        ("[zoolake]", ("zoolake-2018+2019", "zoolake-2018"), ("zoolake",)),
        ("[ndsb-pwssc]", ("ndsb",), ("ndsb", "pwssc", "ndsb-nopol", "pwssc-nopol")),
        ("[ndsb, zoolake, ndsb-pwssc]", ("ndsb", "zoolake-2018+2019", "zoolake-2018"), None),
    ],
)
def test_a_study_prepares_and_pretrains_only_what_its_experiments_read(
    tmp_path, experiments, pretrain, datasets
):
    text = MINIMAL.replace(
        "  pwssc: {source: c.zip}\n",
        "  pwssc: {source: c.zip}\n  ndsb-nopol: {source: a.zip, polarity: false}\n  pwssc-nopol: {source: c.zip, polarity: false}\n",
    )
    config = load_experiment(write(tmp_path, f"experiments: {experiments}\n" + text))
    assert config.used_pretrain == pretrain
    assert config.used_datasets == (datasets or tuple(config.datasets))


# -- issue #15 §3: the DDPM option studies ----------------------------------------------------------

DDPM_OPTIONS = {
    "ddpm-lownoise": {"timestep_sampling": {"kind": "low-noise", "power": 2.0}},
    "ddpm-ema-warmup": {"ema_warmup": {"inv_gamma": 1.0, "power": 0.6667}},
    "ddpm-wide8": {"preset": "cpu-wide8"},
    "ddpm-64px": {"preset": "cpu-64"},
    "ddpm-warmup10": {"warmup_steps": 10},
    "ddpm-bf16": {},  # the same backbone options: only training_precision differs
}


@pytest.mark.parametrize("name", sorted(DDPM_OPTIONS))
def test_each_ddpm_option_study_differs_from_the_cpu_study_only_in_its_option(name):
    """Measured against the cpu study's seed-0 NDSB DDPM rows: same budget, precision, caps, feature
    search and probe protocol; NDSB only, DDPM only (raw pixels as the floor), one seed."""
    cpu, study = load_experiment("cpu"), load_experiment(name)
    assert study.diffusion.identity() == cpu.diffusion.identity() | DDPM_OPTIONS[name]
    same = ("features", "protocol", "caps", "splits", "training_precision", "label_fractions", "pretrain")
    assert {k: getattr(study, k) for k in same} == {k: getattr(cpu, k) for k in same} | {
        "pretrain": {"ndsb": cpu.pretrain["ndsb"]}
    } | ({"training_precision": "bf16"} if name == "ddpm-bf16" else {})
    assert (study.experiments, study.seeds) == (("ndsb",), (0,))
    assert study.baselines.methods == () and study.baselines.include_raw_pixels
    size = 64 if name == "ddpm-64px" else 32
    assert study.datasets["ndsb"] == cpu.datasets["ndsb"].model_copy(update={"size": size})


def test_the_64px_comparison_is_the_cpu_studys_ndsb_family_at_64px_with_ddpm_64pxs_ddpm():
    """Issue #15 follow-up: every method at 64 px under the cpu study's budget and protocol; its
    DDPM and NDSB preparation are ddpm-64px's, so that study's seed-0 DDPM is copied, not retrained."""
    cpu, study, option = (load_experiment(n) for n in ("cpu", "compare-64px", "ddpm-64px"))
    assert study.datasets == {"ndsb": cpu.datasets["ndsb"].model_copy(update={"size": 64})}
    assert study.datasets["ndsb"].identity() == option.datasets["ndsb"].identity()
    assert study.diffusion.identity() == option.diffusion.identity()
    same = ("baselines", "features", "protocol", "caps", "splits", "training_precision", "label_fractions")
    assert {k: getattr(study, k) for k in same} == {k: getattr(cpu, k) for k in same}
    assert study.pretrain == {"ndsb": cpu.pretrain["ndsb"]}
    assert (study.experiments, study.seeds) == (("ndsb",), cpu.seeds)


def test_the_marker_study_differs_from_the_cpu_study_only_in_its_ndsb_preparation():
    """Issue #19: its seed-0 NDSB rows are compared with the cpu study's, so everything but the
    marker removal (and what it leaves out: ZooLake, PWSSC, label efficiency, k-means) is the same."""
    cpu, study = load_experiment("cpu"), load_experiment("markers")
    assert study.datasets == {"ndsb": cpu.datasets["ndsb"].model_copy(update={"markers": "remove"})}
    same = ("diffusion", "baselines", "features", "protocol", "caps", "splits", "training_precision")
    assert {k: getattr(study, k) for k in same} == {k: getattr(cpu, k) for k in same}
    assert study.pretrain == {"ndsb": cpu.pretrain["ndsb"]}
    assert (study.experiments, study.seeds) == (("ndsb",), (0,))
    assert study.evaluations.processing_shift is not None and study.evaluations.experiments == (
        "ndsb/long-tailed",
    )


def test_new_diffusion_options_enter_the_backbone_key_only_when_set():
    """Backbones cached before the options existed keep their key; a set option changes it, and
    reaches the trained config (`train_overrides`, what the study passes to `load_config`)."""
    from plankdiff.diffusion.config import load_config

    spec = load_experiment("cpu").diffusion
    assert spec.identity() == {"preset": "cpu", "max_minutes": None, "max_tflops": 25.0, "batch_size": None}
    low = load_experiment("ddpm-lownoise").diffusion
    config = load_config(low.preset, **low.train_overrides())
    assert (config.train.timestep_sampling.kind, config.train.timestep_sampling.power) == ("low-noise", 2.0)
    assert config.train.max_tflops == 25 and config.train.ema_warmup is None
    short = load_experiment("ddpm-warmup10").diffusion
    assert load_config(short.preset, **short.train_overrides()).train.warmup_steps == 10
    assert load_config(spec.preset, **spec.train_overrides()).train.warmup_steps == 100  # the preset's
    warm = load_experiment("cpu", overrides=["diffusion.ema_warmup={power: 0.75}"]).diffusion
    assert warm.identity()["ema_warmup"] == {"inv_gamma": 1.0, "power": 0.75}
    assert load_config(warm.preset, **warm.train_overrides()).train.ema_warmup.power == 0.75
    assert load_config(spec.preset, **spec.train_overrides()) == load_config("cpu", max_tflops=25)


def test_a_ddpm_only_study_needs_no_baseline_budget(tmp_path):
    text = MINIMAL.replace("baselines: {methods: [simclr], max_minutes: 0.1}", "baselines: {methods: []}")
    assert load_experiment(write(tmp_path, text)).baselines.methods == ()
    text = MINIMAL.replace(
        "baselines: {methods: [simclr], max_minutes: 0.1}", "baselines: {methods: [simclr]}"
    )
    with pytest.raises(ValueError, match=r"baselines: give max_minutes, max_tflops or both"):
        load_experiment(write(tmp_path, text))


def test_a_bad_diffusion_option_names_the_key():
    with pytest.raises(
        ValueError, match=r"diffusion.timestep_sampling.low-noise.power: Input should be greater than 1"
    ):
        load_experiment("cpu", overrides=["diffusion.timestep_sampling={kind: low-noise, power: 0.5}"])


# -- issue #19: the background normalisation ablation ------------------------------------------------


@pytest.mark.parametrize(
    ("experiments", "ablated", "datasets"),
    [
        ("[ndsb-pwssc]", {"ndsb": "ndsb-nobg"}, ("ndsb", "pwssc", "ndsb-nobg", "pwssc-nobg")),
        ("[zoolake]", {"zoolake-2018+2019": "zoolake-2018+2019-nobg"}, ("zoolake", "zoolake-nobg")),
        (
            "[ndsb, zoolake, ndsb-pwssc]",
            {"ndsb": "ndsb-nobg", "zoolake-2018+2019": "zoolake-2018+2019-nobg"},
            ("ndsb", "zoolake", "pwssc", "ndsb-nobg", "zoolake-nobg", "pwssc-nobg"),
        ),
    ],
)
def test_the_background_ablation_adds_unnormalised_preparations_of_the_same_sources(
    tmp_path, experiments, ablated, datasets
):
    text = f"experiments: {experiments}\nablations: {{background: true}}\n" + MINIMAL.replace(
        "{source: a.zip}", "{source: a.zip, size: 16, mode: keep-scale}"
    )
    config = load_experiment(write(tmp_path, text))
    assert config.background_ablated == ablated
    assert config.used_datasets == datasets
    for name, spec in config.background_datasets.items():
        original = config.datasets[name.removesuffix("-nobg")]
        assert original.resolved_background == "normalise" and spec.resolved_background == "none"
        # Nothing else differs but the markers, whose removal needs the normalised background.
        assert original.resolved_markers == "remove" and spec.resolved_markers == "keep"
        assert spec == original.model_copy(update={"background": "none", "markers": "keep"})
    assert config.dataset_specs == config.datasets | config.background_datasets


def test_without_the_switch_no_shipped_study_changes():
    """The ablation is opt-in: every shipped study but `normalisation` prepares and pretrains what it
    did before the switch existed."""
    for name in SHIPPED:
        config = load_experiment(name)
        if name == "normalisation":
            continue
        assert not config.ablations.background and config.background_ablated == {}
        assert config.dataset_specs == config.datasets
        assert set(config.used_datasets) <= set(config.datasets)


ABLATION_REFUSED = [
    (
        "no family it repeats",
        "[ndsb]",
        "",
        r"ablations\.background needs the ndsb-pwssc or zoolake experiments",
    ),
    (
        "nothing to ablate",
        "[ndsb-pwssc]",
        "  pwssc: {source: c.zip, background: none}\n",
        r"ablations\.background: datasets\.pwssc is not background-normalised",
    ),
    (
        "polarity kept",
        "[zoolake]",
        "  zoolake: {source: b.zip, polarity: false}\n",
        r"ablations\.background: datasets\.zoolake is not background-normalised",
    ),
    (
        "its name taken",
        "[ndsb-pwssc]",
        "  pwssc: {source: c.zip}\n  ndsb-nobg: {source: a.zip}\n",
        r"ablations\.background: datasets\.ndsb-nobg is the ablation's own name; rename it",
    ),
]


@pytest.mark.parametrize(
    ("case", "experiments", "datasets", "message"), ABLATION_REFUSED, ids=[c[0] for c in ABLATION_REFUSED]
)
def test_a_background_ablation_with_nothing_to_ablate_is_refused(
    tmp_path, case, experiments, datasets, message
):
    text = MINIMAL
    if datasets:
        line = datasets.splitlines()[0].split(":")[0] + ":"
        text = "\n".join(datasets.rstrip("\n") if ln.startswith(line) else ln for ln in text.splitlines())
    path = write(tmp_path, f"experiments: {experiments}\nablations: {{background: true}}\n" + text)
    with pytest.raises(ValueError, match=message) as caught:
        load_experiment(path)
    assert str(caught.value).startswith(f"{path}: invalid experiment: ") and "\n" not in str(caught.value)


def test_the_normalisation_study_is_the_cpu_study_with_the_ablation_and_one_seed():
    """Its "with" rows must compare with the cpu study's seed-0 rows: same preparations, budgets,
    methods, precision, caps, feature search and probe protocol."""
    cpu, study = load_experiment("cpu"), load_experiment("normalisation")
    same = (
        "diffusion",
        "baselines",
        "features",
        "protocol",
        "caps",
        "splits",
        "training_precision",
        "pretrain",
    )
    assert {k: getattr(study, k) for k in same} == {k: getattr(cpu, k) for k in same}
    assert {k: cpu.datasets[k] for k in study.datasets} == study.datasets
    assert (
        study.ablations.background
        and study.seeds == (0,)
        and set(study.families) == {"ndsb-pwssc", "zoolake"}
    )
    assert study.background_ablated == {"ndsb": "ndsb-nobg", "zoolake-2018+2019": "zoolake-2018+2019-nobg"}


def test_a_misspelt_evaluated_experiment_is_refused_naming_the_file_key_name_and_valid_names(tmp_path):
    path = write(tmp_path, MINIMAL + "evaluations: {experiments: [ndsb/longtailed], open_set: {}}\n")
    with pytest.raises(ValueError) as refused:
        load_experiment(path)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: evaluations.experiments.0 names no experiment of this file: ")
    assert "'ndsb/longtailed'" in message
    assert "(valid: ndsb/long-tailed, ndsb/balanced, zoolake/2018+2019→2020, zoolake/2018→2019, " in message


def test_an_evaluated_experiment_of_a_family_left_out_by_set_loads(tmp_path):
    """`--set experiments=[zoolake]` on a file that evaluates NDSB: the evaluation is skipped with a
    warning when planned (tests/study/test_invariants.py), not refused."""
    path = write(tmp_path, MINIMAL + "evaluations: {experiments: [ndsb/long-tailed], open_set: {}}\n")
    config = load_experiment(path, overrides=["experiments=[zoolake]"])
    assert config.experiment_names() == ("zoolake/2018+2019→2020", "zoolake/2018→2019")


def test_evaluated_experiments_without_an_evaluation_are_refused(tmp_path):
    path = write(tmp_path, MINIMAL + "evaluations: {experiments: [ndsb/long-tailed]}\n")
    with pytest.raises(
        ValueError, match=r"evaluations.*no evaluation is on: add processing_shift or open_set"
    ):
        load_experiment(path)


@pytest.mark.parametrize(
    ("datasets", "refusal"),
    [
        (
            "  pwssc-nopl: {source: c.zip}\n",
            "datasets.pwssc-nopl is read by no pretrain entry and no experiment family",
        ),
        ("  ndsb-nopol: {source: a.zip}\n", "datasets.ndsb-nopol is read only beside datasets.pwssc-nopol"),
    ],
)
def test_a_dataset_nothing_reads_is_refused(tmp_path, datasets: str, refusal: str):
    path = write(
        tmp_path, MINIMAL.replace("  pwssc: {source: c.zip}\n", "  pwssc: {source: c.zip}\n" + datasets)
    )
    with pytest.raises(ValueError, match=f"^{path}: {refusal}"):
        load_experiment(path)


# -- the ceiling on the border's noise spread (docs/results/data.md) -------------------------------

# A prepare stage's identity as every study's stage recorded it before `noise_ceiling` existed.
BEFORE_THE_CEILING = {
    "source": "a.zip",
    "size": 32,
    "mode": "fit",
    "channels": 1,
    "polarity": True,
    "background": "normalise",
}


def test_the_noise_ceiling_joins_the_prepare_key_only_when_set(tmp_path):
    text = MINIMAL.replace("{source: b.zip}", "{source: a.zip, noise_ceiling: null, markers: keep}").replace(
        "{source: c.zip}", "{source: a.zip, polarity: false}"
    )
    config = load_experiment(write(tmp_path, text))
    new, pinned, plain = (config.datasets[k] for k in ("ndsb", "zoolake", "pwssc"))
    assert new.noise_ceiling == NOISE_CEILING  # new preparations get the ceiling
    assert new.identity() == BEFORE_THE_CEILING | {"noise_ceiling": NOISE_CEILING, "markers": "remove"}
    assert pinned.identity() == BEFORE_THE_CEILING  # `null`: the cached stages keep their key
    # Without background normalisation the ceiling does nothing, and the key stays as it was.
    assert plain.resolved_noise_ceiling is None
    assert plain.identity() == BEFORE_THE_CEILING | {"polarity": False, "background": "none"}
    bad = MINIMAL.replace("{source: a.zip}", "{source: a.zip, noise_ceiling: 0}")
    with pytest.raises(ValueError, match=r"datasets\.ndsb\.noise_ceiling"):
        load_experiment(write(tmp_path, bad))


PINNED = ("cpu", "scaling-low", "scaling-high", "normalisation", "markers", "compare-64px") + tuple(
    s for s in SHIPPED if s.startswith("ddpm-")
)


def test_corner_markers_are_removed_by_default_where_the_background_is_normalised(tmp_path):
    text = MINIMAL.replace("{source: b.zip}", "{source: a.zip, markers: keep}").replace(
        "{source: c.zip}", "{source: a.zip, polarity: false}"
    )
    config = load_experiment(write(tmp_path, text))
    new, pinned, plain = (config.datasets[k] for k in ("ndsb", "zoolake", "pwssc"))
    assert new.markers is None and new.resolved_markers == "remove"
    assert new.identity()["markers"] == "remove"  # a new preparation: a new key
    # `keep`, and no background normalisation (removal needs its object mask): keys as before.
    assert pinned.resolved_markers == "keep" and "markers" not in pinned.identity()
    assert plain.resolved_markers == "keep" and "markers" not in plain.identity()
    assert new.identity() | {"markers": "keep"} == pinned.identity() | {"markers": "keep"}
    explicit = MINIMAL.replace("{source: a.zip}", "{source: a.zip, markers: remove}")
    assert load_experiment(write(tmp_path, explicit)).datasets["ndsb"].identity() == new.identity()


def test_studies_under_way_keep_the_preparation_they_cached():
    """Their results are compared with each other on one preparation: every dataset stays uncapped
    (and its prepare key as it was); the others get the ceiling."""
    for name in SHIPPED:
        specs = load_experiment(name).dataset_specs.values()
        expected = None if name in PINNED else NOISE_CEILING
        assert {spec.noise_ceiling for spec in specs} == {expected}, name
        # Markers: kept as they ran (removed only in `markers`, which measures removal); the others
        # remove them wherever the background is normalised.
        for spec in specs:
            if name == "markers":
                assert spec.resolved_markers == "remove", name
            elif name in PINNED or spec.resolved_background == "none":
                assert spec.resolved_markers == "keep", name
            else:
                assert spec.resolved_markers == "remove", name
